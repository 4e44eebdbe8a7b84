"""The classifier engine: load a checkpoint directory, classify texts in token-budget batches.

One small protocol (:class:`Classifier`) with one implementation per checkpoint kind, chosen by
the manifest (TEI's ``Backend``: health, limits, predict). Callers hand over plain strings and
get one :class:`Prediction` per string, in input order; tokenising, sorting, batching and
padding are the engine's business.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from transformers import AutoConfig, AutoTokenizer, Qwen3ForSequenceClassification
from transformers.utils import logging as hf_logging

from models.batching import plan_batches
from models.manifest import Manifest, load_manifest
from schemas.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class Prediction:
    """The engine's answer for one text."""

    label_id: int
    probabilities: tuple[float, ...]
    truncated: bool
    n_tokens: int


@dataclass(frozen=True, slots=True)
class EngineInfo:
    name: str
    version: str
    kind: str
    labels: tuple[str, ...]
    max_length: int
    device: str
    dtype: str


@dataclass(frozen=True, slots=True)
class Tokenised:
    ids: list[list[int]]
    truncated: list[bool]


class Classifier(Protocol):
    """What the worker needs from a model: classify texts, report health and limits."""

    info: EngineInfo
    max_batch_tokens: int
    max_batch_size: int

    def classify(self, texts: Sequence[str]) -> list[Prediction]: ...

    def health(self) -> bool: ...


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when a GPU is present, else CPU with fp32; either can be forced."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return dev, DTYPES[dtype]


def _require(directory: Path, *names: str) -> None:
    if not any((directory / n).is_file() for n in names):
        raise CheckpointError(f"{directory} has no {' or '.join(names)}")


class SequenceClassifierEngine:
    """A Qwen3 with LoRA merged in and a classification (``score``) head.

    Scores exactly as transformers' ``Qwen3ForSequenceClassification`` does on the checkpoint's
    own tokenizer output: the pooled position is the rightmost token whose id is not the pad id
    (with the Qwen3-Embedding tokenizer, which appends ``<|endoftext|>`` = pad, that is the last
    text token). Batches are right-padded with explicit positions, so a text's tokens see the
    same positions and keys alone or in any batch; only the base runs over every position and
    the head runs on the pooled row alone.
    """

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_tokens: int = 16384,
        max_batch_size: int = 256,
    ) -> None:
        _require(directory, "config.json")
        _require(directory, "model.safetensors", "model.safetensors.index.json")
        _require(directory, "tokenizer.json")
        config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        if config.model_type != "qwen3":
            raise CheckpointError(
                f"{directory}/config.json: model_type is {config.model_type!r}, not 'qwen3'"
            )
        if config.num_labels != len(manifest.labels):
            raise CheckpointError(
                f"{directory}: manifest.json lists {len(manifest.labels)} labels "
                f"but the score head has {config.num_labels} outputs"
            )
        self.device, self.dtype = resolve_device(device, dtype)
        hf_logging.disable_progress_bar()
        try:
            model = Qwen3ForSequenceClassification.from_pretrained(
                directory,
                dtype=self.dtype,
                use_safetensors=True,
                trust_remote_code=False,
                local_files_only=True,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{directory}: cannot load the weights: {exc}") from exc
        # transformers' decorated .to() confuses mypy about its first argument
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        self.pad_id: int | None = config.pad_token_id
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        self.tokenizer = tokenizer.backend_tokenizer
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(manifest.max_length)
        self.manifest = manifest
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.info = EngineInfo(
            name=manifest.name or directory.name,
            version=manifest.version,
            kind=manifest.kind,
            labels=tuple(manifest.labels),
            max_length=manifest.max_length,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
        )

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        """One batched call into the Rust tokenizer; ``truncated`` from its overflow record."""
        if self.manifest.instruction:
            texts = [f"Instruct: {self.manifest.instruction}\nQuery:{t}" for t in texts]
        encodings = self.tokenizer.encode_batch(list(texts))
        return Tokenised([e.ids for e in encodings], [bool(e.overflowing) for e in encodings])

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        if not texts:
            return []
        tok = self.tokenise(texts)
        lengths = [len(ids) for ids in tok.ids]
        probs: list[tuple[float, ...]] = [()] * len(texts)
        for batch in plan_batches(
            lengths, max_batch_tokens=self.max_batch_tokens, max_batch_size=self.max_batch_size
        ):
            for i, p in zip(batch, self._run(batch, tok.ids), strict=True):
                probs[i] = tuple(p)
        return [
            Prediction(
                label_id=max(range(len(p)), key=p.__getitem__),
                probabilities=p,
                truncated=tok.truncated[i],
                n_tokens=lengths[i],
            )
            for i, p in enumerate(probs)
        ]

    def _run(self, batch: list[int], ids: list[list[int]]) -> list[list[float]]:
        """Forward one batch; on CUDA out-of-memory split it in two and retry each half."""
        try:
            return self.forward([ids[i] for i in batch]).tolist()
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning("CUDA out of memory on a batch of %d; splitting it", len(batch))
            return self._run(batch[:half], ids) + self._run(batch[half:], ids)

    @torch.inference_mode()
    def forward(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Probabilities (float32, ``[len(seqs), num_labels]``) for already tokenised texts."""
        longest = max(len(s) for s in seqs)
        pad = self.pad_id if self.pad_id is not None else 0
        input_ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for r, s in enumerate(seqs):
            input_ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        input_ids = input_ids.to(self.device, non_blocking=True)
        mask = mask.to(self.device, non_blocking=True)
        positions = torch.arange(longest, device=self.device).expand(len(seqs), -1)
        hidden = self.model.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        if self.pad_id is None:
            last = mask.sum(-1) - 1
        else:  # transformers' rule, verbatim: rightmost token that is not the pad id
            non_pad = (input_ids != self.pad_id).to(torch.int32)
            last = (torch.arange(longest, device=self.device, dtype=torch.int32) * non_pad).argmax(-1)
        pooled = hidden[torch.arange(len(seqs), device=self.device), last]
        logits = self.model.score(pooled)
        return torch.softmax(logits.float(), dim=-1).cpu()

    def health(self) -> bool:
        return True


def load_classifier(
    directory: Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_batch_tokens: int = 16384,
    max_batch_size: int = 256,
) -> Classifier:
    """Open a checkpoint directory offline (safetensors only, no remote code) by its manifest."""
    manifest = load_manifest(directory)
    if manifest.kind == "sequence-classifier":
        return SequenceClassifierEngine(
            directory,
            manifest,
            device=device,
            dtype=dtype,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
        )
    raise CheckpointError(f"{directory}: checkpoint kind {manifest.kind!r} is not servable yet")
