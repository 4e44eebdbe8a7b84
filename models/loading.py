"""Safe, offline loading of the pieces a checkpoint is made of.

safetensors only (``use_safetensors=True``; a directory holding only ``pytorch_model.bin`` is
refused, never unpickled), ``trust_remote_code`` off, no network (``local_files_only``), and a
clear :class:`CheckpointError` naming the file or field for anything missing or inconsistent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, Qwen3Config
from transformers.utils import logging as hf_logging

from models.attention import PACKED
from schemas.errors import CheckpointError

M = TypeVar("M", bound=PreTrainedModel)

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def require_file(directory: Path, *names: str, why: str = "") -> None:
    if not any((directory / n).is_file() for n in names):
        hint = f" ({why})" if why else ""
        if (directory / "pytorch_model.bin").is_file() and names == WEIGHTS:
            hint = " (it has pytorch_model.bin; pickled weights are never loaded: re-save as safetensors)"
        raise CheckpointError(f"{directory} has no {' or '.join(names)}{hint}")


def resolve_base(reference: str, checkpoint: Path) -> Path:
    """``base_model`` as a directory: absolute, relative to the checkpoint, or a hub id in the local cache."""
    for candidate in (Path(reference).expanduser(), checkpoint / reference):
        if candidate.is_dir():
            return candidate.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(reference, local_files_only=True))
    except Exception:  # any failure here means "not available offline"
        raise CheckpointError(
            f"{checkpoint}/manifest.json: base_model {reference!r} is neither a directory nor a model in "
            "the local Hugging Face cache; the worker never downloads: fetch it on a connected machine "
            "and set base_model to its directory"
        ) from None


def qwen3_config(directory: Path) -> Qwen3Config:
    require_file(directory, "config.json")
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json: {exc}") from None
    if config.model_type != "qwen3":
        raise CheckpointError(f"{directory}/config.json: model_type is {config.model_type!r}, not 'qwen3'")
    assert isinstance(config, Qwen3Config)
    return config


def load_model(cls: type[M], directory: Path, dtype: torch.dtype, device: torch.device) -> M:
    """``cls.from_pretrained`` with the packed attention; every weight must come from the files."""
    require_file(directory, *WEIGHTS)
    hf_logging.disable_progress_bar()
    try:
        loaded: Any = cls.from_pretrained(
            directory,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
            attn_implementation=PACKED,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{directory}: cannot load the weights: {exc}") from None
    model, info = loaded
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"{directory}: the weights lack {len(missing)} tensor(s) that a {cls.__name__} needs, "
            f"e.g. {missing[:3]}"
        )
    return model.to(device).eval()


def load_tokenizer(directory: Path, max_length: int) -> tuple[Tokenizer, int | None]:
    """The Rust tokenizer, truncating to ``max_length``; plus the EOS id when it does *not* append one.

    Qwen3-Embedding's tokenizer appends ``<|endoftext|>`` itself. For one that does not, the
    engine appends it (and truncates one token shorter), so pooling still lands on the EOS.
    """
    require_file(directory, "tokenizer.json")
    try:
        wrapper = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}/tokenizer.json: {exc}") from None
    tokenizer: Tokenizer = wrapper.backend_tokenizer
    tokenizer.no_padding()
    eos = tokenizer.token_to_id("<|endoftext|>")
    appends = eos is not None and tokenizer.encode("a").ids[-1:] == [eos]
    missing_eos = None if appends or eos is None else eos
    tokenizer.enable_truncation(max_length - (1 if missing_eos is not None else 0))
    return tokenizer, missing_eos
