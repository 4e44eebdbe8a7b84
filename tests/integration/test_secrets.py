"""The SASL password shows nowhere: not in logs, not on a child's command line, not on the web
endpoints; and a broker refusing the SASL login is one clear error line, not a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import WorkerFactory
from tests.integration.test_processes import children_of, get, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def canary() -> str:
    return f"canary-{uuid.uuid4().hex}"


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_refused_sasl_login_is_one_clear_line_without_the_password(
    broker: str, tiny_checkpoint: Path, tmp_path: Path, canary: str, processes: str
) -> None:
    """The dev broker does no SASL: the login fails before the model loads or children start."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "worker", "worker", "--brokers", broker,
            "--sasl-mechanism", "PLAIN", "--sasl-username", "u", "--processes", processes,
            "--checkpoint", str(tiny_checkpoint), "--home", str(tmp_path / "home"),
            "--web-port", "0",  # any free port each: a fixed one (+1 for a second process) can be taken
        ],
        env={**os.environ, "SENTIMENT_SASL_PASSWORD": canary},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert proc.stderr.strip() == (
        f"error: {broker} refused the connection (--sasl-mechanism PLAIN): UnsupportedSaslMechanismError: "
        "The broker does not support the requested SASL mechanism."
    )
    assert canary not in output


@pytest.mark.parametrize("given", ["environment", "command line"])
def test_the_password_reaches_the_children_only_through_their_environment(
    start_worker: WorkerFactory, canary: str, given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if given == "environment":
        monkeypatch.setenv("SENTIMENT_SASL_PASSWORD", canary)  # start_worker's process inherits it
        extra: tuple[str, ...] = ()
    else:
        monkeypatch.delenv("SENTIMENT_SASL_PASSWORD", raising=False)
        extra = ("--sasl-password", canary)
    parent = start_worker("--processes", "2", "--sasl-mechanism", "none", *extra)
    ports = [parent.web_port, parent.web_port + 1]  # type: ignore[attr-defined]
    wait_until(lambda: all(get(p, "/readyz")[0] == 200 for p in ports), 90, "both children ready")

    children = children_of(parent.pid)
    assert len(children) == 2
    for pid in children:
        assert canary.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"SENTIMENT_SASL_PASSWORD={canary}".encode() in environ
    for port in ports:
        for path in ("/metrics", "/readyz", "/healthz"):
            code, body = get(port, path)
            assert code == 200 and canary not in body, (port, path)

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 0
    log = parent.log.read_text()  # type: ignore[attr-defined]
    assert canary not in log
    warned = "--sasl-password on the command line is visible in the process list" in log
    assert warned == (given == "command line"), log[-2000:]
