"""The quick parts of bench/gpu.py's rehearsal (the full one, with the broker and the worker,
is ``python bench/gpu.py --rehearse``): the budget guard skips instead of overrunning, every
record has DESIGN's fields and is on disk as soon as it is made, the tiny engine section runs,
and the fp8 linear layer computes what the bf16 one does."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from models.tokenizer import qwen_tokenizer

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = (
    "bench",
    "case",
    "model",
    "device",
    "metric",
    "value",
    "unit",
    "baseline",
    "ratio",
    "command",
    "date",
)
TEXTS = ["这个手机很好用，电池也耐用", "质量太差了，退货", "一般般吧", "物流很快，包装完好，很满意！"] * 8


@pytest.fixture(scope="module")
def gpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu", ROOT / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A --data folder: reviews and the converted tokenizer."""
    directory = tmp_path_factory.mktemp("gpu-data")
    (directory / "reviews.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    qwen_tokenizer(cache_dir)
    (directory / "qwen3-tokenizer.json").write_bytes((cache_dir / "qwen3-tokenizer.json").read_bytes())
    return directory


def run(gpu: ModuleType, data: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    gpu.main(["--rehearse", "--data", str(data), "--n", "32", "--repeats", "1", "--out", str(out), *extra])
    records: list[dict[str, Any]] = json.loads(out.read_text())
    for rec in records:
        assert all(field in rec for field in REQUIRED), rec
        assert rec["device"].startswith("cpu") and rec["command"].startswith("python bench/gpu.py")
    return records


def test_no_time_left_skips_every_case_with_its_reason(gpu: ModuleType, data: Path, tmp_path: Path) -> None:
    records = run(gpu, data, tmp_path / "r.json", "--budget-s", "0")
    assert records and all(r["metric"] == "skipped" and r["value"] is None for r in records)
    reasons = {r["case"]: str(r["skipped"]) for r in records}
    assert all(why.startswith(("budget", "needs CUDA", "torchao not importable")) for why in reasons.values())
    for case in (
        "seed-style (batch 16, pad to 160)",
        "engine (packed, 16k-token budget)",
        "check float32",
        "worker: backlog drain",
    ):
        assert reasons[case].startswith("budget: "), (case, reasons[case])
    sections = {(r["bench"], r["case"]) for r in records}
    assert ("e2e", "worker: backlog drain") in sections and ("e2e", "worker: steady rate latency") in sections
    assert any(str(c).startswith("check ") for _, c in sections) and any("fp8" in str(c) for _, c in sections)


def test_tiny_engine_section(gpu: ModuleType, data: Path, tmp_path: Path) -> None:
    records = run(gpu, data, tmp_path / "r.json", "--sections", "engine")
    rates = {r["case"]: r for r in records if r["metric"] == "reviews_per_s"}
    seed = "seed-style (batch 16, pad to 160)"
    assert set(rates) == {seed, "sorted-padded (16k-token batches)", "engine (packed, 16k-token budget)"}
    assert all(r["model"] == "qwen3-tiny" and r["value"] > 0 and r["n_reviews"] == 32 for r in rates.values())
    engine = rates["engine (packed, 16k-token budget)"]
    assert engine["baseline"] == seed and engine["ratio"] == pytest.approx(
        engine["value"] / rates[seed]["value"], rel=1e-3
    )
    mfu = [r for r in records if r["metric"] == "mfu"]
    assert len(mfu) == 3 and all(r["value"] > 0 for r in mfu)
    skipped = [r for r in records if r["metric"] == "skipped"]
    assert {r["case"] for r in skipped} >= {
        "engine (packed, compiled, 64k-token budget)",
        "bf16 matmul 8192x8192x8192",
    }


def test_fp8_linear_is_close_to_the_linear_it_replaces(gpu: ModuleType) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128, bias=False), torch.nn.Linear(128, 32, bias=False))
    x = torch.randn(5, 7, 64)
    x[1:] *= 1000  # tokens far louder than the first sequence's: a shared scale would change its rounding
    with torch.no_grad():
        reference = model(x)
        assert gpu.to_fp8(model) == 2
        out = model(x)
        assert out.shape == reference.shape and out.dtype == reference.dtype
        assert float((out - reference).norm() / reference.norm()) < 0.1  # e4m3: ~3 significant bits
        # per-token activation scales: a row's result does not depend on the others. Not bit for
        # bit on every CPU (the matmul kernel may sum in another order for another row count), but
        # to float32 rounding, a thousand times below what a shared scale would move it.
        alone = model(x[:1])
        torch.testing.assert_close(alone, out[:1], rtol=1e-5, atol=1e-6)
