"""Train a small Qwen3 sequence classifier from scratch: the ``--preset demo`` model.

The model is a plain ``Qwen3ForSequenceClassification`` built from ``Qwen3Config`` with the real
Qwen tokenizer; what is special is only how its token embeddings are *trained*:

- **A compact vocabulary.** Only the tokens that occur in the data get a row while training
  (~17k of 151,669), so each step touches a small table.
- **Character-composed embeddings.** Qwen's Chinese tokens are mostly multi-character words, and
  most occur a handful of times. Each token's embedding is trained as the mean of its
  characters' embeddings plus a residual of its own, so "很差" learns from "差" and "差劲".

At export the table is materialised for the full vocabulary: a token seen in training gets its
trained embedding, any other token the mean of its known characters (its residual is zero), so
unseen words still mean something. The result is an ordinary ``sequence-classifier`` checkpoint;
serving never knows how it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import Qwen3Config, Qwen3ForSequenceClassification

from models.bases.tiny import tiny_config
from models.tokenizer import ENDOFTEXT_ID, VOCAB_SIZE

PAD, FIRST = 0, 1  # compact ids: 0 = padding, tokens from 1


@dataclass(frozen=True, slots=True)
class ScratchShape:
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _characters(text: str) -> list[str]:
    return [c for c in text if c.strip() and c != "\ufffd"]


class CompactVocab:
    """Qwen token ids ↔ compact ids, and each compact token's characters."""

    def __init__(
        self, tokenizer: Tokenizer, train_ids: Sequence[Sequence[int]], other_ids: Sequence[Sequence[int]]
    ):
        """``train_ids`` give the trainable tokens and characters; tokens only in ``other_ids``
        (dev, test) get a row with a zero residual, exactly what export gives unseen tokens."""
        seen = sorted({t for seq in train_ids for t in seq})
        extra = sorted({t for seq in other_ids for t in seq} - set(seen))
        self.qwen_ids = seen + extra
        self.trained = len(seen)
        self.compact = {t: FIRST + i for i, t in enumerate(self.qwen_ids)}
        texts = tokenizer.decode_batch([[t] for t in self.qwen_ids], skip_special_tokens=False)
        self.chars: dict[str, int] = {}
        for text in texts[: self.trained]:
            for c in _characters(text):
                self.chars.setdefault(c, len(self.chars))
        self.token_chars: list[list[int]] = [[]] + [
            [self.chars[c] for c in _characters(t) if c in self.chars] for t in texts
        ]

    def __len__(self) -> int:
        return FIRST + len(self.qwen_ids)

    def encode(self, seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        return [[self.compact[t] for t in seq] for seq in seqs]


def _bags(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``EmbeddingBag`` input for ``rows`` of character ids: the ids laid end to end, and offsets."""
    flat: list[int] = []
    offsets: list[int] = []
    for row in rows:
        offsets.append(len(flat))
        flat.extend(row)
    return torch.tensor(flat, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)


class ComposedEmbedding(nn.Module):
    """``E[t] = residual[t] + mean(chars[c] for c in t)``; drop-in for ``nn.Embedding``."""

    def __init__(self, vocab: CompactVocab, hidden: int, std: float = 0.02):
        super().__init__()
        self.char_index = vocab.chars
        self.residual = nn.Parameter(torch.zeros(len(vocab), hidden))
        with torch.no_grad():
            self.residual[FIRST : FIRST + vocab.trained].normal_(0.0, std)
        self.chars = nn.EmbeddingBag(max(1, len(vocab.chars)), hidden, mode="mean")
        nn.init.normal_(self.chars.weight, 0.0, std)
        flat, offsets = _bags(vocab.token_chars)
        self.register_buffer("flat", flat, persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)

    def table(self) -> torch.Tensor:
        # EmbeddingBag gives a zero row to a token with no known characters
        return self.residual + self.chars(self.flat, self.offsets)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.table())

    def characters_only(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean known-character embedding of each text (zeros where none is known)."""
        known = [[self.char_index[c] for c in _characters(t) if c in self.char_index] for t in texts]
        return self.chars(*_bags(known))


def compact_model(
    vocab: CompactVocab, shape: ScratchShape, labels: Sequence[str], seed: int
) -> Qwen3ForSequenceClassification:
    """A ``Qwen3ForSequenceClassification`` over the compact vocabulary, composed embeddings in."""
    config = _config(shape, labels)
    config.vocab_size, config.pad_token_id = len(vocab), PAD
    torch.manual_seed(seed)
    model = Qwen3ForSequenceClassification(config)
    embedding = ComposedEmbedding(vocab, shape.hidden_size)
    model.model.embed_tokens = embedding
    return model


def _config(shape: ScratchShape, labels: Sequence[str]) -> Qwen3Config:
    config = tiny_config(num_labels=len(labels), **shape.to_dict())
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config._attn_implementation = "sdpa"
    return config


@torch.no_grad()
def export_model(
    model: Qwen3ForSequenceClassification,
    vocab: CompactVocab,
    tokenizer: Tokenizer,
    shape: ScratchShape,
    labels: Sequence[str],
) -> Qwen3ForSequenceClassification:
    """The trained compact model as a full-vocabulary ``Qwen3ForSequenceClassification``."""
    embedding = model.model.embed_tokens
    assert isinstance(embedding, ComposedEmbedding)
    full = Qwen3ForSequenceClassification(_config(shape, labels))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.embed_tokens.")}
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert missing == ["model.embed_tokens.weight"] and not unexpected, (missing, unexpected)
    everything = tokenizer.decode_batch([[t] for t in range(VOCAB_SIZE)], skip_special_tokens=False)
    weight = embedding.characters_only(everything)
    weight[torch.tensor(vocab.qwen_ids)] = embedding.table()[FIRST:]
    weight[ENDOFTEXT_ID] = embedding.table()[PAD]
    full.model.embed_tokens.weight.copy_(weight)
    return full.eval()
