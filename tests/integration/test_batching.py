"""Micro-batches on the real broker: closed by each of the three limits; backpressure; readiness."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from tokenizers import Tokenizer

from tests.integration.conftest import WorkerFactory, metrics, result_ids, sample, send
from worker.app import LAG_REFRESH_S
from worker.commands.demo import wait_ready
from worker.kafka.admin import create_topics
from worker.ports import free_port

pytestmark = pytest.mark.integration

SHORT = "好评"  # 2 tokens
LONG = (
    "这个手机很好用，电池也很耐用，屏幕清晰，物流很快，包装也很好，客服态度不错，值得购买。" * 4
)  # 64 tokens


def wait_results(broker: str, topic: str, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(set(asyncio.run(result_ids(broker, topic)))) < n:
        assert time.monotonic() < deadline, f"fewer than {n} results"


def test_batches_close_by_count_by_tokens_and_by_wait(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory, tiny_checkpoint: Path
) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    tokenizer.no_truncation()
    max_length = json.loads((tiny_checkpoint / "manifest.json").read_text())["max_length"]
    short, long = (len(tokenizer.encode(t).ids) for t in (SHORT, LONG))
    assert short * 8 < 256 < max_length * 8 < long * 8, "the texts must exercise the limits as described"
    asyncio.run(create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=1))
    # the limits are the model's: with the cache on, a repeat of a text already scored is answered
    # from it and costs the budget no tokens (tests/unit/test_cache.py), which the sums below exclude
    worker = start_worker(
        "--batch-size", "8", "--max-batch-tokens", "256", "--batch-wait-s", "0.2", "--cache-url", "off"
    )  # fmt: skip
    port = worker.web_port  # type: ignore[attr-defined]

    def closed(by: str) -> float:
        return sample(metrics(port), "sentiment_batches_total", closed_by=by)

    send(broker, topics["input"], [SHORT], "w")  # one review, nothing follows: the wait closes it
    wait_results(broker, topics["output"], 1)
    assert (closed("wait"), closed("count"), closed("tokens")) == (1, 0, 0)

    send(broker, topics["input"], [SHORT] * 64, "c")  # 64 x 2 tokens: the count cap closes them
    wait_results(broker, topics["output"], 65)
    assert closed("count") >= 4 and closed("tokens") == 0

    send(broker, topics["input"], [LONG] * 16, "t")  # cut to max_length, and fewer than 8 fit in 256
    wait_results(broker, topics["output"], 81)
    assert closed("tokens") >= 1  # how many depends on how the 16 arrive

    text = metrics(port)
    batches = sum(sample(text, "sentiment_batches_total", closed_by=b) for b in ("count", "tokens", "wait"))
    assert sample(text, "sentiment_batch_size_reviews_count") == batches
    assert sample(text, "sentiment_batch_size_reviews_bucket", le="8.0") == batches, (
        "never over the count cap"
    )
    assert sample(text, "sentiment_batch_size_tokens_bucket", le="256.0") == batches, "never over the budget"
    assert sample(text, "sentiment_batch_size_tokens_sum") == 65 * short + 16 * max_length
    assert sample(text, "sentiment_truncated_total") == 16, (
        "long texts are truncated and flagged, not rejected"
    )
    assert "sentiment_batch_padding_fraction" not in text, "the packed engine computes no padding"
    # the process metrics: SentimentWorkerRestarting counts the changes of its start time
    started = psutil.Process(worker.pid).create_time()
    assert sample(text, "process_start_time_seconds") == pytest.approx(started, abs=1)
    assert sample(text, "sentiment_tokenise_seconds_count") >= 3
    assert sample(text, "sentiment_pending_reviews") == 0 and sample(text, "sentiment_in_flight_batches") == 0


def test_a_slow_model_keeps_memory_bounded_while_lag_grows(
    broker: str, topics: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    batch, in_flight, n = 8, 2, 3000
    asyncio.run(create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=2))
    port = free_port()
    cmd = [
        sys.executable, "-m", "tests.integration.slow_worker", "--brokers", broker,
        "--input-topic", topics["input"], "--output-topic", topics["output"], "--dlq-topic", topics["dlq"],
        "--group-id", topics["group"], "--home", str(tmp_path / "home"), "--checkpoint", str(tiny_checkpoint),
        "--web-port", str(port), "--delay-s", "0.2", "--batch-size", str(batch),
        "--max-in-flight", str(in_flight),
    ]  # fmt: skip
    log = tmp_path / "slow-worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, proc, timeout_s=90)
        # at most 2 x 8 reviews per 0.2 s (80/s) can be classified; 3,000 arrive at once
        # distinct texts: the worker's cache would answer repeats of one text without the model
        send(broker, topics["input"], [f"{SHORT} {i}" for i in range(n)], "b")
        time.sleep(LAG_REFRESH_S)  # the lag gauge reads the partitions' end offsets this often
        pending, lags = [], []
        for _ in range(8):
            time.sleep(1)
            text = metrics(port)
            pending.append(sample(text, "sentiment_pending_reviews"))
            lags.append(
                sum(float(v) for v in re.findall(r"^sentiment_consumer_lag\{[^}]*\} (\S+)$", text, re.M))
            )
            assert sample(text, "sentiment_in_flight_batches") <= in_flight
        bound = (in_flight + 1) * batch
        assert max(pending) <= bound, (
            f"pending reviews {pending} exceed (max in flight + 1) x batch = {bound}"
        )
        assert max(pending) > 0, "the model was busy the whole time"
        assert min(lags) > n / 2, f"the backlog stays in Kafka, not in the worker: lag {lags}"
        done = sample(metrics(port), "sentiment_messages_out_total")
        assert 0 < done < n / 2, f"{done} classified: the slow model sets the pace"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_readyz_turns_ready_only_after_model_load_and_assignment(
    broker: str, topics: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    port = free_port()
    cmd = [
        sys.executable, "-m", "worker", "worker", "--brokers", broker, "--input-topic", topics["input"],
        "--output-topic", topics["output"], "--dlq-topic", topics["dlq"], "--group-id", topics["group"],
        "--checkpoint", str(tiny_checkpoint), "--home", str(tmp_path / "home"), "--web-port", str(port),
        "--web-host", "127.0.0.1", "--session-timeout-s", "6",
    ]  # fmt: skip
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    states: list[tuple[str, list[str]]] = []
    try:
        deadline = time.monotonic() + 90
        while not states or states[-1][0] != "ready":
            assert time.monotonic() < deadline and proc.poll() is None, f"never ready: {states[-3:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    body = json.loads(resp.read())
                    states.append(("ready", body["assigned"]))
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read())
                states.append(("not-ready", body["assigned"]))
            except OSError:
                states.append(("down", []))
            time.sleep(0.05)
        loaded_at = log.read_text().find("model ")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    kinds = [k for k, _ in states]
    assert kinds[0] == "down", "nothing is served while the model loads"
    assert loaded_at >= 0, "the worker logs the model it loaded"
    assert "not-ready" in kinds, "up but without partitions must answer 503"
    assert all(not assigned for k, assigned in states if k == "not-ready")
    assert states[-1][1] and all(a.startswith(topics["input"]) for a in states[-1][1])
