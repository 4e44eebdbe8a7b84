"""Safe, offline loading of the pieces a checkpoint is made of.

safetensors only (``use_safetensors=True``; a directory holding only ``pytorch_model.bin`` is
refused, never unpickled), ``trust_remote_code`` off, no network (``local_files_only``), and a
clear :class:`CheckpointError` naming the file or field for anything missing or inconsistent.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, Qwen3Config
from transformers.utils import logging as hf_logging

from models.engine.attention import PACKED
from models.tokenizer import ENDOFTEXT
from schemas.errors import CheckpointError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=PreTrainedModel)

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
# What a backbone (Qwen3Model) or a classifier built on a causal-LM base leaves out by design: the
# language-model head of an untied base (Qwen3-8B and up; the smaller ones tie it to the input
# embeddings and do not store it).
LM_HEAD = frozenset({"lm_head.weight"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def require_file(directory: Path, *names: str, why: str = "") -> None:
    if not any((directory / n).is_file() for n in names):
        hint = f" ({why})" if why else ""
        if (directory / "pytorch_model.bin").is_file() and names == WEIGHTS:
            hint = " (it has pytorch_model.bin; pickled weights are never loaded: re-save as safetensors)"
        raise CheckpointError(f"{directory} has no {' or '.join(names)}{hint}")


def base_reference(base: Path, checkpoint: Path) -> str:
    """How a checkpoint's manifest names its base so that the pair can be moved or mounted elsewhere.

    A snapshot in the Hugging Face cache is named by its hub id (``Qwen/Qwen3-Embedding-0.6B``);
    any other directory by its path relative to the checkpoint directory (``../qwen3-embedding``),
    never by an absolute path, which only holds on the machine that trained.
    """
    base = base.resolve()
    parts = base.parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return part.removeprefix("models--").replace("--", "/")
    return os.path.relpath(base, checkpoint.resolve())


def resolve_base(reference: str, checkpoint: Path) -> Path:
    """``base_model`` as a directory: relative to the checkpoint, absolute, or a hub id in the local cache."""
    candidate = Path(reference).expanduser()
    if not candidate.is_absolute():
        candidate = checkpoint / candidate
    if candidate.is_dir():
        return candidate.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(reference, local_files_only=True))
    except Exception:  # any failure here means "not available offline"
        raise CheckpointError(
            f"{checkpoint}/manifest.json: base_model {reference!r} is neither a directory (a relative path "
            "counts from the checkpoint directory) nor a model in the local Hugging Face cache; the worker "
            "never downloads: fetch it on a connected machine and set base_model to its directory"
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


@contextmanager
def load_report_held() -> Iterator[list[str]]:
    """Keep transformers' LOAD REPORT out of the output during the ``from_pretrained`` call inside.

    transformers logs every key it did not pair with a parameter as a table (a warning of the
    ``transformers.modeling_utils`` logger, with terminal escape codes even into a file), also for
    keys left out on purpose: the fresh ``score`` head of a classifier built on a base, the
    ``lm_head`` of a causal-LM base under a backbone. Our loaders read ``output_loading_info`` and
    say what matters themselves (:func:`load_model`, :func:`warn_unexpected`); the report is handed
    back, without escape codes, for an error message that refers to it.
    """
    hold = _HoldLoadReport()
    logger = hf_logging.get_logger("transformers.modeling_utils")
    logger.addFilter(hold)
    try:
        yield hold.held
    finally:
        logger.removeFilter(hold)


class _HoldLoadReport(logging.Filter):
    """Takes transformers' LOAD REPORT records out of the logging, keeping their text."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.funcName == "log_state_dict_report" or "LOAD REPORT" in str(record.msg):
            self.held.append(_ANSI.sub("", record.getMessage()))
            return False
        return True


# what ``from_pretrained`` raises on weights it cannot read: a bad config or layout (OSError,
# ValueError, RuntimeError), or a safetensors file that is not one (cut short by an interrupted
# download or copy, overwritten), which safetensors reports as its own SafetensorError
LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)


def load_error(directory: Path, exc: Exception, report: list[str]) -> CheckpointError:
    """``cannot load the weights``, with the held LOAD REPORT that transformers' message points to."""
    message = str(exc).replace("the above report", "the report below") if report else str(exc)
    if isinstance(exc, SafetensorError):
        message += " (a weights file is damaged or incomplete: an interrupted download or copy?)"
    detail = "".join(f"\n{r}" for r in report)
    return CheckpointError(f"{directory}: cannot load the weights: {message}{detail}")


def warn_unexpected(directory: Path, cls: type, info: dict[str, Any], dropped: Collection[str] = ()) -> None:
    """One line for tensors in the files that ``cls`` has no place for (other than ``dropped``)."""
    unexpected = sorted(set(info["unexpected_keys"]) - set(dropped))
    if unexpected:
        log.warning(
            "%s: the weights hold %d tensor(s) that a %s has no place for, not loaded: e.g. %s",
            directory, len(unexpected), cls.__name__, unexpected[:3],
        )  # fmt: skip


def load_model(
    cls: type[M], directory: Path, dtype: torch.dtype, device: torch.device, *, dropped: Collection[str] = ()
) -> M:
    """``cls.from_pretrained`` with the packed attention; every weight must come from the files.

    ``dropped``: tensors the files may hold that ``cls`` leaves out by design (:data:`LM_HEAD` for
    the backbone of a causal-LM base); any other tensor ``cls`` has no place for is warned about.
    """
    require_file(directory, *WEIGHTS)
    hf_logging.disable_progress_bar()
    with load_report_held() as report:
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
        except LOAD_ERRORS as exc:
            raise load_error(directory, exc, report) from None
    model, info = loaded
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"{directory}: the weights lack {len(missing)} tensor(s) that a {cls.__name__} needs, "
            f"e.g. {missing[:3]}"
        )
    warn_unexpected(directory, cls, info, dropped)
    return model.to(device).eval()


def load_tokenizer(directory: Path, max_length: int, *, append_eos: bool) -> tuple[Tokenizer, int | None]:
    """The Rust tokenizer, truncating to ``max_length`` tokens, special tokens included.

    ``append_eos`` (the embedding kind): every text must end in ``<|endoftext|>``, the pooled
    token. Qwen3-Embedding's tokenizer appends it itself; for one that does not, the id is
    returned and the engine appends it, so truncation leaves one token for it.

    Without ``append_eos`` (the sequence-classifier kind) the texts are exactly the tokenizer's
    own output cut at ``max_length``, as ``tokenizer(text, truncation=True, max_length=…)`` gives
    them to transformers.
    """
    require_file(directory, "tokenizer.json")
    try:
        wrapper = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}/tokenizer.json: {exc}") from None
    tokenizer: Tokenizer = wrapper.backend_tokenizer
    tokenizer.no_padding()
    missing_eos = None
    if append_eos:
        eos = tokenizer.token_to_id(ENDOFTEXT)
        if eos is None:
            raise CheckpointError(f"{directory}/tokenizer.json has no {ENDOFTEXT} token to pool on")
        if tokenizer.encode("a").ids[-1:] != [eos]:
            missing_eos = eos
    tokenizer.enable_truncation(max_length - (1 if missing_eos is not None else 0))
    return tokenizer, missing_eos


def added_tokens(tokenizer: Tokenizer) -> int:
    """How many special tokens the tokenizer's post-processor adds to one text."""
    return len(tokenizer.encode("a").ids) - len(tokenizer.encode("a", add_special_tokens=False).ids)
