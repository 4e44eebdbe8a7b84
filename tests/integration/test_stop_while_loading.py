"""SIGTERM or SIGINT while the worker loads its model (before faust handles signals): exit 0
with one log line, no traceback, no death by signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_processes import children_of
from worker.ports import free_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_while_loading_exits_0(
    broker: str, topics: dict[str, str], tiny_checkpoint: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.integration.slow_load", "worker",
            "--brokers", broker, "--input-topic", topics["input"], "--output-topic", topics["output"],
            "--dlq-topic", topics["dlq"], "--group-id", topics["group"],
            "--checkpoint", str(tiny_checkpoint), "--home", str(tmp_path / "home"),
            "--web-port", str(free_port()), "--web-host", "127.0.0.1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("loading model from" in line for line in lines):
            line = proc.stderr.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=20)  # the model would take 30 s
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert f"stopped while loading the model ({sig.name})" in output
    assert "Traceback" not in output and '"exception"' not in output


def importing_torch(pid: int) -> bool:
    """Whether process ``pid`` has begun importing torch (its library is mapped); the rest of
    torch, transformers and faust take seconds more."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize(
    ("sig", "processes"),
    [(signal.SIGTERM, "1"), (signal.SIGINT, "1"), (signal.SIGTERM, "2")],
    ids=["SIGTERM", "SIGINT", "SIGTERM-processes-2"],
)
def test_a_stop_while_importing_torch_and_faust_exits_0(
    broker: str,
    topics: dict[str, str],
    tiny_checkpoint: Path,
    tmp_path: Path,
    sig: signal.Signals,
    processes: str,
) -> None:
    """The signal lands while the worker (each child, with --processes) imports torch: it was killed
    by SIGTERM there (exit -15, which --processes counted as a failure: exit 143 and error lines)
    and printed a traceback on SIGINT."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "worker", "worker",
            "--brokers", broker, "--input-topic", topics["input"], "--output-topic", topics["output"],
            "--dlq-topic", topics["dlq"], "--group-id", topics["group"],
            "--checkpoint", str(tiny_checkpoint), "--home", str(tmp_path / "home"),
            "--web-port", "0", "--web-host", "127.0.0.1", "--processes", processes,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        workers = [proc.pid]
        if processes == "2":
            while len(workers := children_of(proc.pid)) < 2:
                assert proc.poll() is None and time.monotonic() < deadline, "the parent started 2 workers"
                time.sleep(0.01)
        while not all(importing_torch(pid) for pid in workers):
            assert proc.poll() is None and time.monotonic() < deadline, "the workers import torch"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, output = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert output.count(f"stopped while starting ({'SIGTERM' if processes == '2' else sig.name})") == len(
        workers
    ), output
    assert "loading model from" not in output, output  # the stop came before the model
    assert "Traceback" not in output and '"level":"error"' not in output, output
