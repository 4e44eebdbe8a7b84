"""`sentiment worker` whose web port is taken fails at once, with one line, before it loads the
model or talks to Kafka; with --processes N the parent checks all N ports. Port 0 still works."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_processes import get
from worker.ports import free_port

pytestmark = pytest.mark.integration


def _worker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The worker against a broker nobody runs and a checkpoint that does not exist: whatever
    fails first shows what the worker checked first."""
    command = [
        sys.executable, "-m", "worker", "worker",
        "--brokers", f"127.0.0.1:{free_port()}",
        "--checkpoint", str(tmp_path / "no-such-checkpoint"),
        "--home", str(tmp_path / "home"),
        *args,
    ]  # fmt: skip
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _listen(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.fixture
def taken() -> Iterator[int]:
    """A port some other program listens on, on 127.0.0.1."""
    with _listen(0) as s:
        yield s.getsockname()[1]


@pytest.mark.parametrize("host", [None, "127.0.0.1"], ids=["default-web-host", "127.0.0.1"])
def test_worker_with_its_web_port_taken_fails_before_anything_else(
    tmp_path: Path, taken: int, host: str | None
) -> None:
    proc = _worker(tmp_path, "--web-port", str(taken), *(["--web-host", host] if host else []))
    line = _one_line_error(proc)
    assert f"--web-port {taken}" in line and "already in use" in line, line
    assert "--web-port or SENTIMENT_WEB_PORT" in line, line


def test_worker_web_port_taken_via_the_environment(tmp_path: Path, taken: int) -> None:
    env = {**os.environ, "SENTIMENT_WEB_PORT": str(taken), "SENTIMENT_WEB_HOST": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "worker", "--brokers", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    line = _one_line_error(proc)
    assert f"--web-port {taken}" in line and "already in use" in line, line


def _three_ports_middle_taken() -> tuple[int, socket.socket]:
    """``first`` with ``first`` and ``first + 2`` free and ``first + 1`` held by a listener."""
    for _ in range(100):
        first = free_port()
        try:
            for port in (first, first + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first, _listen(first + 1)
        except OSError:
            continue
    raise AssertionError("no three consecutive ports to try")


def test_processes_parent_checks_every_port_up_front(tmp_path: Path) -> None:
    first, holder = _three_ports_middle_taken()
    with holder:
        proc = _worker(tmp_path, "--processes", "3", "--web-port", str(first), "--web-host", "127.0.0.1")
    line = _one_line_error(proc)
    assert f"--web-port {first + 1}" in line and "already in use" in line, line  # and nothing started


def test_web_port_0_means_any_free_port_and_passes_the_check(tmp_path: Path) -> None:
    """With --processes 2 too (each worker then gets a port of its own choosing, not 0 and 1).
    (About 10 s on a busy 2-core machine: the next check comes after torch and faust are imported.)"""
    proc = _worker(tmp_path, "--web-port", "0", "--web-host", "127.0.0.1", "--processes", "2")
    line = _one_line_error(proc)
    assert "cannot reach any Kafka broker" in line, line  # the next check: the ports were fine


def test_web_port_0_with_processes_2_serves_each_worker_on_a_port_of_its_own(
    broker: str, topics: dict[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Both workers start and serve a free port each, which they log (faust's web server takes no
    port 0); the parent that supervises them loads neither the model nor torch."""
    log = tmp_path / "worker.log"
    command = [
        sys.executable, "-m", "worker", "worker", "--brokers", broker,
        "--input-topic", topics["input"], "--output-topic", topics["output"],
        "--dlq-topic", topics["dlq"], "--group-id", topics["group"],
        "--checkpoint", str(tiny_checkpoint), "--home", str(tmp_path / "home"),
        "--processes", "2", "--web-port", "0", "--web-host", "127.0.0.1", "--session-timeout-s", "6",
    ]  # fmt: skip
    with open(log, "wb") as out:
        parent = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        served: list[int] = []
        serving = re.compile(r"serving /metrics, /healthz and /readyz on 127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + 120
        while len(served) < 2 or not all(get(port, "/readyz")[0] == 200 for port in served):
            text = log.read_text()
            assert parent.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, f"both workers ready on their ports: {text[-3000:]}"
            time.sleep(0.2)
            served = [int(port) for port in serving.findall(log.read_text())]
        assert len(set(served)) == 2 and 0 not in served, served
        assert "restarting" not in log.read_text()
        status = Path(f"/proc/{parent.pid}/status").read_text()
        rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
        assert "libtorch" not in Path(f"/proc/{parent.pid}/maps").read_text(), "the parent imported torch"
        assert rss_kib < 150 * 1024, f"the parent holds {rss_kib} KiB"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
