"""Evaluate a checkpoint through the serving engine, and record the result inside it.

Trainers evaluate the *exported* checkpoint with the same engine the worker runs, in float32
(batch invariant) unless the checkpoint's head was fitted on features of another dtype (a head
trained on a GPU in bf16 is evaluated in bf16, as the worker serves it). ``sentiment eval`` on
the same data reproduces the recorded metrics, and so does the worker's streamed accuracy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import torch

from models.engine.classifier import load_classifier
from models.manifest import MANIFEST, load_manifest
from models.training.data import LabelledText
from models.training.evaluation import Report, evaluate


def data_digest(examples: Sequence[LabelledText]) -> str:
    """sha256 of the texts and labels, in order: identifies "the same data" across runs."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.text.encode() + b"\t" + ex.label.encode() + b"\n")
    return h.hexdigest()


def evaluation_dtype(directory: Path) -> str:
    """The dtype a checkpoint is evaluated in: the one its head was fitted on (manifest
    ``features.dtype``, e.g. bfloat16 for a head trained on a GPU), else float32."""
    return load_manifest(directory).fitted_dtype or "float32"


def evaluate_checkpoint(
    directory: Path,
    examples: Sequence[LabelledText],
    *,
    device: str = "cpu",
    dtype: str | None = None,
    batch_tokens: int = 16384,
    embedding_api_key: str | None = None,
) -> tuple[Report, torch.Tensor]:
    """The report and the ``[n, labels]`` probabilities of ``directory`` on ``examples``.

    ``dtype`` None: :func:`evaluation_dtype` (float32 unless the checkpoint records otherwise).
    ``embedding_api_key``: for a checkpoint whose manifest names an embeddings server.
    """
    dtype = dtype or evaluation_dtype(directory)
    engine = load_classifier(
        directory,
        device=device,
        dtype=dtype,
        max_batch_tokens=batch_tokens,
        embedding_api_key=embedding_api_key,
    )
    labels = list(engine.manifest.labels)
    unknown = sorted({ex.label for ex in examples} - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the checkpoint's labels {labels}")
    probs = engine.infer([ex.text for ex in examples]).probabilities
    truth = [labels.index(ex.label) for ex in examples]
    return evaluate(labels, truth, probs), probs


def record(directory: Path, **fields: Any) -> None:
    """Add (or replace) top-level fields of ``manifest.json``, e.g. ``evaluation`` and ``training``."""
    load_manifest(directory)  # validate first
    path = directory / MANIFEST
    data = orjson.loads(path.read_bytes())
    data.update(fields)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def evaluation_entry(report: Report, examples: Sequence[LabelledText], source: str) -> dict[str, Any]:
    """What goes under ``manifest.evaluation[split]``."""
    return {"data": source, "data_sha256": data_digest(examples), **report.to_dict()}


def recorded_for(directory: Path, examples: Sequence[LabelledText]) -> tuple[str, dict[str, Any]] | None:
    """The split name and recorded evaluation whose data is exactly ``examples``, if any."""
    digest = data_digest(examples)
    evaluation = load_manifest(directory).model_dump().get("evaluation") or {}
    for name, entry in evaluation.items():
        if isinstance(entry, dict) and entry.get("data_sha256") == digest:
            return name, entry
    return None
