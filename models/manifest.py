"""``manifest.json``: what a checkpoint directory is and how to serve it (``docs/architecture.md``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import CheckpointError

MANIFEST = "manifest.json"

CheckpointKind = Literal["embedding-head", "sequence-classifier"]


class Manifest(BaseModel):
    """Required fields first; anything else a trainer records (data, metrics, time) is kept as is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: CheckpointKind = Field(
        description="'sequence-classifier' (Qwen3 with LoRA merged and a score head, a transformers "
        "save_pretrained directory) or 'embedding-head' (frozen Qwen3-Embedding base plus a head)."
    )
    base_model: str = Field(
        description="The base model: a path relative to the checkpoint directory (so the two move "
        "together), an absolute path, or a hub id found in the local Hugging Face cache."
    )
    labels: list[str] = Field(min_length=2, description="Label names, in the order of the head's outputs.")
    max_length: int = Field(
        gt=1, description="Tokens per text, special tokens (such as an appended <|endoftext|>) included."
    )
    pooling: Literal["last-token"] = "last-token"
    instruction: str | None = Field(default=None, description="Task for 'Instruct: {task}\\nQuery:{text}'.")
    dimensions: int | None = Field(default=None, gt=0, description="MRL truncation, or null for all.")
    name: str | None = Field(default=None, description="Model name reported in results; dir name if null.")
    version: str = Field(default="0", description="Model version reported in results and metrics.")
    embedding_url: str | None = Field(
        default=None,
        description="embedding-head only: an OpenAI-compatible embeddings endpoint (http://host:8000/v1, or "
        "the full …/embeddings URL) that embeds instead of a locally loaded base_model.",
    )
    embedding_model: str | None = Field(
        default=None, description="The model name sent to embedding_url; base_model if null."
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("label names must be distinct")
        return labels

    @property
    def fitted_dtype(self) -> str | None:
        """The dtype of the features the head was fitted on (``features.dtype``), if recorded."""
        features = (self.model_extra or {}).get("features")
        dtype = features.get("dtype") if isinstance(features, dict) else None
        return dtype if isinstance(dtype, str) else None

    def save(self, directory: Path) -> None:
        data = self.model_dump(mode="json")
        (directory / MANIFEST).write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def load_manifest(directory: Path) -> Manifest:
    """Read and validate ``DIR/manifest.json``; every failure names the file and the field."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: every checkpoint directory needs a manifest.json")
    try:
        data: Any = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise CheckpointError(f"{path}: {problems}") from None


@contextmanager
def atomic_directory(directory: Path) -> Iterator[Path]:
    """Yield a scratch directory beside ``directory`` that becomes it only if the block succeeds."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
    try:
        yield tmp
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
