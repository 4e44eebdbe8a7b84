"""Checkpoints written by `train lora` and `train head` are served by the real worker process
through the real broker, with the same labels and scores as offline evaluation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from models.bases.hub_like import build_tiny_base
from models.demo.splits import LABELS, demo_splits, write_tsv
from models.engine.classifier import load_classifier
from models.training.data import prepare_splits
from models.training.head_training import train_head
from models.training.loop import LoopConfig
from models.training.lora import train_lora
from tests.integration.conftest import WorkerFactory
from worker.kafka.admin import create_topics
from worker.kafka.clients import consume, produce_values

pytestmark = pytest.mark.integration
N = 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    """`train lora` on bases shaped like Qwen/Qwen3-0.6B and Qwen/Qwen3-4B (sharded), `train head`
    on one shaped like Qwen/Qwen3-Embedding-0.6B: the files users bring, not the test-only tiny one."""
    root = tmp_path_factory.mktemp("trained")
    bases = {
        like: build_tiny_base(like, root / "bases" / like.split("/")[1], cache_dir=cache_dir, seed=5)
        for like in ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B", "Qwen/Qwen3-Embedding-0.6B")
    }
    splits = demo_splits()
    files = {}
    for name, part in (("train", splits.train[:160]), ("dev", splits.dev[:40])):
        files[name] = root / f"{name}.tsv"
        write_tsv(files[name], part)
    data = prepare_splits(files["train"], files["dev"], None, LABELS)
    quiet = lambda _: None  # noqa: E731
    loop = LoopConfig(epochs=1, lr=2e-3)
    return {
        "lora-0.6B": train_lora(bases["Qwen/Qwen3-0.6B"], data, LABELS, root / "lora-0.6B", loop=loop,
                                max_length=128, device="cpu", echo=quiet),
        "lora-4B": train_lora(bases["Qwen/Qwen3-4B"], data, LABELS, root / "lora-4B", loop=loop,
                              max_length=128, device="cpu", echo=quiet),
        "head": train_head(bases["Qwen/Qwen3-Embedding-0.6B"], data, LABELS, root / "head",
                           cache_dir=root / "cache", device="cpu", dimensions=32, echo=quiet),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["lora-0.6B", "lora-4B", "head"])
def test_worker_serves_a_trained_checkpoint_like_offline_eval(
    kind: str, trained: dict[str, Path], broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    checkpoint = trained[kind]
    asyncio.run(create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=2))
    start_worker("--checkpoint", str(checkpoint), "--batch-size", "8")
    texts = [ex.text for ex in demo_splits().test[:N]]
    messages = [(None, orjson.dumps({"id": f"t{i}", "text": t})) for i, t in enumerate(texts)]
    asyncio.run(produce_values(broker, topics["input"], messages))

    async def collect() -> dict[str, dict[str, object]]:
        got: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 90
        while len(got) < N and time.monotonic() < deadline:
            async for _k, value, _h in consume(broker, topics["output"], timeout_s=3):
                obj = orjson.loads(value or b"{}")
                got[obj["id"]] = obj
        return got

    results = asyncio.run(collect())
    assert len(results) == N
    engine = load_classifier(checkpoint, device="cpu", dtype="float32")
    offline = engine.classify(texts)
    name = checkpoint.name
    for i, prediction in enumerate(offline):
        result = results[f"t{i}"]
        assert result["model"] == {"name": name, "version": "1"}
        assert result["label"] == LABELS[prediction.label_id]
        scores = result["scores"]
        assert isinstance(scores, dict)
        assert [scores[label] for label in LABELS] == pytest.approx(list(prediction.probabilities), abs=1e-6)
