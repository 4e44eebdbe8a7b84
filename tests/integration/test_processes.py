"""`sentiment worker --processes 2`: two consumers in one group share the partitions."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.request
from collections import Counter

import orjson
import pytest

from models.reviews import sample_reviews
from tests.integration.conftest import WorkerFactory
from worker.broker import create_topics
from worker.clients import consume, produce_values

pytestmark = pytest.mark.integration
PARTITIONS, N = 4, 120


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_two_processes_split_the_partitions_and_answer_each_input_once(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    asyncio.run(
        create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=PARTITIONS)
    )
    parent = start_worker("--processes", "2", "--batch-size", "16")
    ports = [parent.web_port, parent.web_port + 1]  # type: ignore[attr-defined]
    deadline = time.monotonic() + 90
    while True:  # both ready, and the group settled: disjoint assignments covering every partition
        states = [get(p, "/readyz") for p in ports]
        if all(code == 200 for code, _ in states):
            assigned = [set(json.loads(body)["assigned"]) for _, body in states]
            if not (assigned[0] & assigned[1]) and len(assigned[0] | assigned[1]) == PARTITIONS:
                break
        assert time.monotonic() < deadline, f"group did not settle: {states}"
        time.sleep(0.5)
    assert all(assigned), "each process holds some partitions"

    reviews = sample_reviews(N, seed=3)
    messages = [
        (f"k{i}".encode(), orjson.dumps({"id": f"p{i}", "text": r.text})) for i, r in enumerate(reviews)
    ]
    asyncio.run(produce_values(broker, topics["input"], messages))

    async def collect() -> list[str]:
        ids: list[str] = []
        end = time.monotonic() + 90
        while len(set(ids)) < N and time.monotonic() < end:
            ids = [
                orjson.loads(v or b"{}")["id"]
                async for _k, v, _h in consume(broker, topics["output"], timeout_s=3)
            ]
        await asyncio.sleep(2)  # anything repeated would arrive by now
        return [
            orjson.loads(v or b"{}")["id"]
            async for _k, v, _h in consume(broker, topics["output"], timeout_s=3)
        ]

    counts = Counter(asyncio.run(collect()))
    assert set(counts) == {f"p{i}" for i in range(N)}
    assert max(counts.values()) == 1, "exactly one result per input"
    served = []
    for port in ports:
        _, text = get(port, "/metrics")
        served.append(float(re.search(r"^sentiment_messages_out_total (\S+)$", text, re.M).group(1)))  # type: ignore[union-attr]
    assert sum(served) == N and all(s > 0 for s in served), served

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 0
    assert all(get(p, "/healthz")[0] == 0 for p in ports), "both children stopped"
