"""The project's embedded default checkpoint, created on first use under the data directory."""

from __future__ import annotations

from pathlib import Path

from models.manifest import MANIFEST
from models.tiny import build_tiny_checkpoint

DEFAULT_NAME = "default-tiny-qwen3-v1"


def default_checkpoint(home: Path) -> Path:
    """Path of the default checkpoint under ``home``, building it the first time.

    For now a tiny random-weight Qwen3 (its labels are not meaningful); it exercises exactly the
    loading and scoring code a real checkpoint uses.
    """
    path = home / "checkpoints" / DEFAULT_NAME
    if not (path / MANIFEST).is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            build_tiny_checkpoint(path, cache_dir=home / "cache", name="tiny-qwen3", version="random-1")
        except OSError:
            # another process finished it first (rename onto a non-empty dir fails)
            if not (path / MANIFEST).is_file():
                raise
    return path
