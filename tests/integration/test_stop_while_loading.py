"""SIGTERM or SIGINT while the worker loads its model (before faust handles signals): exit 0
with one log line, no traceback, no death by signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
