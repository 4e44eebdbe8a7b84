"""Run the real worker as a process against the session's dev broker."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from schemas.errors import SentimentError
from worker.commands.demo import wait_ready
from worker.kafka.clients import consume, produce_values
from worker.ports import free_ports

WorkerFactory = Callable[..., subprocess.Popen[bytes]]


def metrics(port: int) -> str:
    """A worker's /metrics text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (labels in the exposition's order)."""
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + inner + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    assert found, f"{name} {labels} not in /metrics"
    return float(found.group(1))


def send(broker: str, topic: str, texts: list[str], prefix: str) -> None:
    """Each text as a review with the id ``{prefix}{i}``, keyed by it; acknowledged."""
    values = [
        (f"{prefix}{i}".encode(), orjson.dumps({"id": f"{prefix}{i}", "text": t}))
        for i, t in enumerate(texts)
    ]
    asyncio.run(produce_values(broker, topic, values))


async def result_ids(broker: str, topic: str) -> list[str]:
    """The ``id`` of every result on ``topic`` so far (repeats included)."""
    return [orjson.loads(v or b"{}")["id"] async for _k, v, _h in consume(broker, topic, timeout_s=3)]


def result_counts(broker: str, topic: str, expected: int, timeout_s: float = 120) -> Counter[str]:
    """How often each id has a result, once ``expected`` distinct ids arrived (or the time ran out)
    and two more seconds passed for any repeat to arrive too."""
    deadline = time.monotonic() + timeout_s
    ids: list[str] = []
    while len(set(ids)) < expected and time.monotonic() < deadline:
        ids = asyncio.run(result_ids(broker, topic))
    time.sleep(2)
    return Counter(asyncio.run(result_ids(broker, topic)))


@pytest.fixture
def start_worker(
    broker: str, topics: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> Iterator[WorkerFactory]:
    """Start ``sentiment worker`` on this test's topics; stopped (SIGTERM) after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> subprocess.Popen[bytes]:
        # --processes N serves N consecutive ports from --web-port: all of them must be free
        processes = int(extra[extra.index("--processes") + 1]) if "--processes" in extra else 1
        web_port = free_ports(processes)
        log = tmp_path / f"worker-{len(procs)}.log"
        cmd = [
            sys.executable, "-m", "worker", "worker",
            "--brokers", broker,
            "--input-topic", topics["input"],
            "--output-topic", topics["output"],
            "--dlq-topic", topics["dlq"],
            "--group-id", topics["group"],
            "--checkpoint", str(tiny_checkpoint),
            "--home", str(tmp_path / "home"),
            "--web-port", str(web_port),
            "--web-host", "127.0.0.1",
            "--session-timeout-s", "6",
            *extra,
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        proc.web_port = web_port  # type: ignore[attr-defined]
        proc.log = log  # type: ignore[attr-defined]
        procs.append(proc)
        try:
            wait_ready(web_port, proc, timeout_s=90)
        except SentimentError as exc:
            raise AssertionError(f"{exc}:\n{log.read_text()[-3000:]}") from None
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
