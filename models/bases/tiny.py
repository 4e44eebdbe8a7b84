"""Tiny Qwen3 checkpoints built from ``Qwen3Config``, for tests and the embedded default.

They are saved with ``save_pretrained`` plus a manifest, exactly as a real checkpoint is, so
everything downstream goes through the same loading code a real Qwen3 uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForSequenceClassification, Qwen3Model
from transformers.utils import logging as hf_logging

from models.manifest import Manifest, atomic_directory
from models.tokenizer import ENDOFTEXT_ID, VOCAB_SIZE, save_tokenizer


def tiny_config(
    *,
    num_labels: int,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
) -> Qwen3Config:
    """A Qwen3 with the real vocabulary and special ids but toy widths (GQA kept: 4 heads, 2 kv)."""
    # rope_theta and num_labels reach PretrainedConfig through **kwargs, which mypy cannot see
    return Qwen3Config(  # type: ignore[call-arg]
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
        pad_token_id=ENDOFTEXT_ID,
        eos_token_id=ENDOFTEXT_ID,
        bos_token_id=None,
        num_labels=num_labels,
    )


def build_tiny_checkpoint(
    directory: Path,
    *,
    cache_dir: Path,
    labels: Sequence[str] = ("negative", "positive"),
    seed: int = 0,
    max_length: int = 256,
    name: str = "tiny-qwen3",
    version: str = "random-0",
    init_std: float = 0.5,
    **config_overrides: int,
) -> Path:
    """Write a random-weight ``sequence-classifier`` checkpoint to ``directory`` (must not exist).

    ``init_std`` widens the score head's initialisation so the random model's probabilities are
    not all ≈ 0.5 (which would hide pooling bugs in tests behind ties).
    """
    config = tiny_config(num_labels=len(labels), **config_overrides)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = Qwen3ForSequenceClassification(config).eval()
    with torch.no_grad():
        model.score.weight.normal_(0.0, init_std)
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(cache_dir, tmp)
        Manifest(
            kind="sequence-classifier",
            base_model=f"Qwen3Config(hidden={config.hidden_size}, layers={config.num_hidden_layers})",
            labels=list(labels),
            max_length=max_length,
            name=name,
            version=version,
        ).save(tmp)
    return directory


def build_tiny_embedding_base(
    directory: Path, *, cache_dir: Path, seed: int = 0, **config_overrides: int
) -> Path:
    """Write a random tiny Qwen3-Embedding-style base: ``Qwen3Model`` weights plus the tokenizer."""
    config = tiny_config(num_labels=2, **config_overrides)
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = Qwen3Model(config).eval()
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(cache_dir, tmp)
    return directory
