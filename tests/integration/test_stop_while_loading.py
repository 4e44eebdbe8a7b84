"""SIGTERM or SIGINT while the worker loads its model (before faust handles signals): exit 0
with one log line, no traceback, no death by signal."""

from __future__ import annotations

import os
import re
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
    ("sig", "processes", "when", "to"),
    [
        (signal.SIGTERM, "1", "importing", "parent"),
        (signal.SIGINT, "1", "importing", "parent"),
        (signal.SIGTERM, "2", "spawned", "parent"),
        (signal.SIGINT, "2", "importing", "group"),
    ],
    ids=["SIGTERM", "SIGINT", "processes-2-SIGTERM-at-spawn", "processes-2-Ctrl-C"],
)
def test_a_stop_while_starting_exits_0(
    broker: str,
    topics: dict[str, str],
    tiny_checkpoint: Path,
    tmp_path: Path,
    sig: signal.Signals,
    processes: str,
    when: str,
    to: str,
) -> None:
    """The signal lands while the worker (each child, with --processes) imports torch, or the
    moment the parent has started them: it was killed by SIGTERM there (exit -15, which the parent
    counted as a failure: exit 143 and error lines) and printed a traceback on SIGINT. Ctrl-C at a
    terminal signals the whole process group: each worker gets SIGINT, then its parent's SIGTERM,
    which killed it on its way out."""
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
        start_new_session=True,  # a process group of its own, as a command started at a terminal
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        workers = [proc.pid]
        if processes == "2":
            while len(workers := children_of(proc.pid)) < 2:
                assert proc.poll() is None and time.monotonic() < deadline, "the parent started 2 workers"
                time.sleep(0.002)
        while when == "importing" and not all(importing_torch(pid) for pid in workers):
            assert proc.poll() is None and time.monotonic() < deadline, "the workers import torch"
            time.sleep(0.01)
        if to == "group":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, output = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert len(re.findall(r"stopped while starting \(SIG(TERM|INT)\)", output)) == len(workers), output
    if processes == "1":
        assert f"stopped while starting ({sig.name})" in output
    assert "loading model from" not in output, output  # the stop came before the model
    assert "Traceback" not in output and '"level":"error"' not in output, output
