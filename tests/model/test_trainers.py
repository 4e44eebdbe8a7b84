"""The trainers end to end on tiny Qwen3 models: each writes a checkpoint the engine serves, records
its evaluation, and `sentiment eval` reproduces that evaluation exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch
from safetensors.torch import load_file

from models.bases.tiny import build_tiny_embedding_base
from models.demo.model import DEMO_VERSION, train_demo
from models.demo.scratch import CompactVocab, ScratchShape, compact_model, export_model
from models.demo.splits import LABELS, demo_splits, write_tsv
from models.engine.classifier import load_classifier
from models.manifest import load_manifest
from models.tokenizer import qwen_tokenizer
from models.training.checkpoint_eval import evaluate_checkpoint
from models.training.data import prepare_splits
from models.training.head_training import train_head
from models.training.loop import LoopConfig
from models.training.lora import LoraSettings, train_lora


def sentiment(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small TSV splits of the shipped reviews (and a CSV/JSONL copy of dev)."""
    root = tmp_path_factory.mktemp("data")
    splits = demo_splits()
    files = {}
    for name, part in (("train", splits.train[:240]), ("dev", splits.dev[:80]), ("test", splits.test[:80])):
        files[name] = root / f"{name}.tsv"
        write_tsv(files[name], part)
    return files


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return build_tiny_embedding_base(
        tmp_path_factory.mktemp("base") / "qwen3-tiny", cache_dir=cache_dir, seed=4
    )


def assert_eval_reproduces(checkpoint: Path, data: Path, split: str) -> None:
    recorded = load_manifest(checkpoint).model_dump()["evaluation"][split]
    proc = sentiment("eval", "--checkpoint", str(checkpoint), "--data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    for key in ("accuracy", "macro_f1", "confusion", "per_class"):  # from argmax: exact
        assert report[key] == recorded[key], key
    # ECE averages probabilities; one CI run saw the two processes differ by 2e-7 (not understood)
    assert report["ece"] == pytest.approx(recorded["ece"], abs=1e-6)
    assert f"'{split}' evaluation on this same data" in proc.stderr
    assert "reproduced exactly" in proc.stderr


def test_export_materialises_the_trained_compact_model_exactly(cache_dir: Path, tmp_path: Path) -> None:
    """Scores of the exported full-vocabulary checkpoint (through the engine) equal the compact
    model's, for texts with training tokens and for texts made only of unseen tokens."""
    backend = qwen_tokenizer(cache_dir).backend_tokenizer
    train_texts = ["这个手机很好用", "质量太差了", "服务态度不错", "房间很脏"]
    other_texts = ["好用", "差劲的酒店"]
    enc = lambda ts: [e.ids for e in backend.encode_batch(ts, add_special_tokens=False)]  # noqa: E731
    vocab = CompactVocab(backend, enc(train_texts), enc(other_texts))
    shape = ScratchShape(hidden_size=32, num_hidden_layers=1, head_dim=8, intermediate_size=64)
    model = compact_model(vocab, shape, LABELS, seed=0).eval()
    with torch.no_grad():  # make the character part matter
        model.model.embed_tokens.chars.weight.normal_(0, 1.0)
        model.score.weight.normal_(0, 1.0)
    full = export_model(model, vocab, backend, shape, LABELS)
    out = tmp_path / "ckpt"
    out.mkdir()
    full.save_pretrained(out)
    qwen_tokenizer(cache_dir).save_pretrained(out)
    from models.manifest import Manifest

    Manifest(kind="sequence-classifier", base_model="scratch", labels=list(LABELS), max_length=64).save(out)
    engine = load_classifier(out, device="cpu", dtype="float32")
    texts = train_texts + other_texts
    with torch.no_grad():
        ids = vocab.encode(enc(texts))
        expected = torch.stack([model(input_ids=torch.tensor([s])).logits[0] for s in ids])
    torch.testing.assert_close(engine.infer(texts).logits, expected, rtol=0, atol=1e-5)
    # a multi-character token no split contains: its row is the mean of its characters' rows
    unseen = next(
        t for t in range(1000, 151643)
        if t not in vocab.compact and len(w := backend.decode([t])) >= 2 and all(c in vocab.chars for c in w)
    )  # fmt: skip
    chars = model.model.embed_tokens.chars.weight
    want = torch.stack([chars[vocab.chars[c]] for c in backend.decode([unseen])]).mean(0)
    torch.testing.assert_close(full.model.embed_tokens.weight[unseen], want)


def test_demo_preset_quick_run_is_served_and_reproduced(cache_dir: Path, tmp_path: Path) -> None:
    out = train_demo(tmp_path / "demo", cache_dir=cache_dir, echo=lambda _: None, epochs=1, limit=300)
    manifest = load_manifest(out).model_dump()
    assert manifest["kind"] == "sequence-classifier" and manifest["version"] == f"{DEMO_VERSION}-quick"
    assert manifest["training"]["seed"] == 0 and manifest["training"]["limit"] == 300
    teacher = manifest["training"]["teacher"]  # distilled from out-of-fold n-gram probabilities
    assert (
        teacher["folds"] == 5
        and teacher["distill"] == 0.7
        and 0.5 < teacher["out_of_fold_train_accuracy"] <= 1
    )
    assert set(manifest["evaluation"]) == {"dev", "test"}
    assert (out / "confusion-test.png").stat().st_size > 1000
    assert (out / "learning-curves.png").stat().st_size > 1000
    assert not (tmp_path / ".demo.state").exists()  # the resumable state is cleaned up
    test = tmp_path / "test.tsv"
    write_tsv(test, demo_splits().test[:300])
    assert_eval_reproduces(out, test, "test")


def test_lora_trains_merges_and_is_served(base: Path, data_files: dict[str, Path], tmp_path: Path) -> None:
    data = prepare_splits(data_files["train"], data_files["dev"], data_files["test"], LABELS)
    out = tmp_path / "lora"
    messages: list[str] = []
    loop = LoopConfig(epochs=2, lr=2e-3, batch_size=16, patience=2)
    train_lora(base, data, LABELS, out, lora=LoraSettings(), loop=loop, device="cpu", echo=messages.append)
    assert any(m.startswith("max_length ") for m in messages)  # chosen from the percentiles
    assert any("trainable parameters" in m for m in messages)
    manifest = load_manifest(out).model_dump()
    assert manifest["training"]["lora"] == {"r": 8, "alpha": 16, "dropout": 0.15,
                                            "targets": ["q_proj", "k_proj", "v_proj"]}  # fmt: skip
    assert len(manifest["training"]["fit"]["history"]) == 2
    # merged: plain Qwen3 tensors, adapters folded into q/k/v (which changed), o_proj untouched
    merged = load_file(str(out / "model.safetensors"))
    original = load_file(str(base / "model.safetensors"))
    assert not any("lora" in k for k in merged)
    for proj, changed in (("q_proj", True), ("v_proj", True), ("o_proj", False)):
        key = f"layers.0.self_attn.{proj}.weight"
        assert torch.equal(merged[f"model.{key}"], original[key]) is not changed, proj
    assert "score.weight" in merged
    assert (out / "learning-curves.png").is_file()
    assert_eval_reproduces(out, data_files["test"], "test")


def test_gradient_checkpointing_saves_memory_not_results(
    base: Path, data_files: dict[str, Path], tmp_path: Path
) -> None:
    """Recomputed activations (on by default with CUDA) give the weights a plain run gives:
    same losses, same dropout masks, same merged checkpoint."""
    data = prepare_splits(data_files["train"], data_files["dev"], None, LABELS)
    loop = LoopConfig(epochs=1, lr=2e-3, batch_size=16)
    runs = {}
    for checkpointing in (False, True):
        out = tmp_path / f"gc-{checkpointing}"
        train_lora(base, data, LABELS, out, loop=loop, max_length=40, device="cpu",
                   gradient_checkpointing=checkpointing, echo=lambda _: None)  # fmt: skip
        assert load_manifest(out).model_dump()["training"]["gradient_checkpointing"] is checkpointing
        runs[checkpointing] = load_file(str(out / "model.safetensors"))
    assert runs[True].keys() == runs[False].keys()
    for key, tensor in runs[False].items():
        torch.testing.assert_close(runs[True][key], tensor, rtol=0, atol=1e-6, msg=key)
    assert not torch.equal(runs[True]["score.weight"], torch.zeros_like(runs[True]["score.weight"]))


def test_head_trains_on_cached_embeddings(base: Path, data_files: dict[str, Path], tmp_path: Path) -> None:
    data = prepare_splits(data_files["train"], data_files["dev"], data_files["test"], LABELS)
    cache = tmp_path / "cache"
    out = train_head(base, data, LABELS, tmp_path / "head", cache_dir=cache, dimensions=48,
                     instruction="Classify the sentiment of a product review", device="cpu",
                     echo=lambda _: None)  # fmt: skip
    cached = sorted(cache.glob("*.safetensors"))
    assert len(cached) == 2  # train and dev
    manifest = load_manifest(out)
    assert manifest.kind == "embedding-head" and manifest.dimensions == 48
    assert manifest.model_dump()["training"]["l2_search"]
    analysis = manifest.model_dump()["training"]["embedding_analysis"]
    n_train = len(data.splits.train)
    assert analysis["kmeans_k"] == len(LABELS) and -1 <= analysis["kmeans_ari"] <= 1
    assert analysis["kmeans_points"] == n_train and analysis["tsne_points"] == min(n_train, 2000)
    assert (out / "embeddings-train.png").is_file() and (out / "confusion-test.png").is_file()
    # the cached vectors are the engine's own features for those texts
    engine = load_classifier(out, device="cpu", dtype="float32")
    feats = engine.infer([ex.text for ex in data.splits.dev], keep_features=True).features
    stored = [load_file(str(p))["features"] for p in cached]
    assert any(s.shape == feats.shape and torch.allclose(s, feats, atol=1e-6) for s in stored)
    # a second run with the same base and settings embeds nothing new
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    train_head(
        base,
        data,
        LABELS,
        tmp_path / "head2",
        cache_dir=cache,
        dimensions=48,
        head_type="mlp",
        instruction="Classify the sentiment of a product review",
        device="cpu",
        echo=lambda _: None,
    )
    assert {p: p.stat().st_mtime_ns for p in sorted(cache.glob("*.safetensors"))} == stamps
    assert_eval_reproduces(out, data_files["test"], "test")
    report, _ = evaluate_checkpoint(tmp_path / "head2", data.splits.test)
    assert report.n == len(data.splits.test)


def test_cli_errors_are_one_line_and_exit_2(data_files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("很好\tpositive\n没有标签的行\n", encoding="utf-8")
    proc = sentiment(
        "train", "lora", "--base", str(tmp_path), "--train", str(bad), "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2
    assert f"error: {bad}:2: expected 'text<TAB>label'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = sentiment("train", "head", "--base", str(tmp_path / "nope"), "--train", str(data_files["train"]),
                     "--out", str(tmp_path / "o"))  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == f"error: --base {tmp_path / 'nope'}: no such directory\n"
    proc = sentiment("train")
    assert proc.returncode == 2 and "give a subcommand (head, lora) or --preset demo" in proc.stderr
    proc = sentiment("eval", "--checkpoint", str(tmp_path / "none"), "--data", str(data_files["test"]))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
