"""The trained head of an ``embedding-head`` checkpoint: ``head.safetensors`` beside the manifest.

Two shapes: ``linear`` (logistic regression on the embedding; tensors ``0.weight``/``0.bias``)
and ``mlp`` (Linear → GELU → Linear; ``0.*`` and ``2.*``). The shape is recorded in the file's
safetensors metadata (``head_type``), so loading never guesses and never unpickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.manifest import Manifest
from schemas.errors import CheckpointError

HEAD_FILE = "head.safetensors"
HeadType = Literal["linear", "mlp"]


def build_head(head_type: HeadType, in_dim: int, num_labels: int, hidden: int = 256) -> nn.Sequential:
    if head_type == "linear":
        return nn.Sequential(nn.Linear(in_dim, num_labels))
    if head_type == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_labels))
    raise ValueError(f"unknown head type {head_type!r}")


def head_type_of(head: nn.Sequential) -> HeadType:
    return "linear" if len(head) == 1 else "mlp"


def save_head(head: nn.Sequential, directory: Path) -> Path:
    path = directory / HEAD_FILE
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(path), metadata={"head_type": head_type_of(head)})
    return path


def load_head(directory: Path, *, in_dim: int, num_labels: int) -> nn.Sequential:
    """Read ``head.safetensors``; a wrong shape names the tensor and what the manifest implies."""
    path = directory / HEAD_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: an embedding-head checkpoint keeps its head there")
    try:
        with safe_open(str(path), framework="pt") as f:
            head_type = (f.metadata() or {}).get("head_type", "linear")
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    if head_type not in ("linear", "mlp"):
        raise CheckpointError(f"{path}: metadata head_type is {head_type!r}, not 'linear' or 'mlp'")
    first, last = tensors.get("0.weight"), tensors.get("0.weight" if head_type == "linear" else "2.weight")
    if first is None or last is None:
        names = sorted(build_head(head_type, 1, 2).state_dict())
        raise CheckpointError(f"{path}: a {head_type} head needs the tensors {', '.join(names)}")
    if first.shape[1] != in_dim:
        raise CheckpointError(
            f"{path}: tensor 0.weight takes {first.shape[1]} inputs but the embedding has {in_dim} "
            "(manifest 'dimensions', or the base model's hidden size)"
        )
    if last.shape[0] != num_labels:
        raise CheckpointError(
            f"{path}: the head has {last.shape[0]} outputs but manifest.json lists {num_labels} labels"
        )
    head = build_head(head_type, in_dim, num_labels, hidden=first.shape[0])
    try:
        head.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return head.float().eval()


def save_embedding_head_checkpoint(directory: Path, head: nn.Sequential, manifest: Manifest) -> Path:
    """Write an ``embedding-head`` checkpoint: ``manifest.json`` and ``head.safetensors`` only.

    The base is referenced by ``manifest.base_model`` (a directory or hub id), never copied.
    """
    if manifest.kind != "embedding-head":
        raise ValueError(f"manifest kind is {manifest.kind!r}, not 'embedding-head'")
    directory.mkdir(parents=True, exist_ok=True)
    save_head(head, directory)
    manifest.save(directory)
    return directory
