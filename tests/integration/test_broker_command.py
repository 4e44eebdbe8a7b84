"""`sentiment broker` starts tansu, creates the topics, and stops cleanly on Ctrl-C, SIGTERM or
SIGHUP (taking tansu with it); a port someone else holds is an error, not a false success."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from worker.commands.dev_broker import DevBroker, PortInUseError
from worker.ports import free_port

pytestmark = pytest.mark.integration


async def _describe(brokers: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        topics = await admin.describe_topics(["reviews", "reviews.sentiment", "reviews.dlq"])
        return {t["topic"]: len(t["partitions"]) for t in topics}
    finally:
        await admin.close()


def _restore_default_signals() -> None:
    """As from a terminal: pytest-xdist workers ignore SIGINT (and a CI runner under nohup
    SIGHUP), and a child inherits that."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _start_broker(port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "broker", "--port", str(port), *extra],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_restore_default_signals,
    )


def _tansu_child(proc: subprocess.Popen[str]) -> psutil.Process:
    [child] = psutil.Process(proc.pid).children()
    return child


def _gone(process: psutil.Process, timeout_s: float = 10) -> bool:
    """Whether ``process`` ended (a zombie no one reaps counts: it holds nothing) within the time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _assert_one_line_error(stderr: str, *parts: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for part in parts:
        assert part in lines[0], stderr
    assert "Traceback" not in stderr and "broker listening" not in stderr, stderr


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that some other program listens on (it accepts connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_broker_command_creates_topics_and_stops_on_ctrl_c() -> None:
    port = free_port()
    proc = _start_broker(port, "--partitions", "5")
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert f"broker listening on 127.0.0.1:{port}" in line, line
        assert asyncio.run(_describe(f"127.0.0.1:{port}")) == {
            "reviews": 5,
            "reviews.sentiment": 5,
            "reviews.dlq": 5,
        }
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    time.sleep(0.2)
    assert _port_free(port), "the tansu child went with it"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_broker_command_stops_tansu_on_sigterm_and_sighup(sig: signal.Signals) -> None:
    port = free_port()
    proc = _start_broker(port)
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert f"broker listening on 127.0.0.1:{port}" in line, line
        tansu = _tansu_child(proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopping broker" in stderr and "Traceback" not in stderr, stderr
    assert _gone(tansu, timeout_s=0.5), "tansu outlived the broker command"
    assert _port_free(port)


def test_broker_command_killed_takes_tansu_with_it() -> None:
    """SIGKILL cannot be handled: the kernel's parent-death signal stops tansu."""
    port = free_port()
    proc = _start_broker(port)
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert f"broker listening on 127.0.0.1:{port}" in line, line
        tansu = _tansu_child(proc)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert _gone(tansu), "tansu outlived the killed broker command"
    assert _port_free(port)


def test_broker_command_on_a_port_another_program_listens_on_fails(listener: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "broker", "--port", str(listener)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc.stderr, f"127.0.0.1:{listener}", "already in use", "--port")


def test_broker_command_on_the_port_of_another_broker_fails(broker: str) -> None:
    port = broker.rpartition(":")[2]
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "broker", "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    _assert_one_line_error(proc.stderr, f"127.0.0.1:{port}", "already in use")


def test_dev_broker_does_not_hand_out_a_listener_that_took_the_port_after_its_check(
    listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the check before starting cannot close: the port is taken between the check
    and tansu's bind. tansu then exits (with code 0) while the other program accepts connections."""
    import worker.commands.dev_broker

    real = worker.commands.dev_broker.bind_problem
    calls: list[int] = []

    def free_at_first(host: str, port: int) -> OSError | None:
        calls.append(port)
        return None if len(calls) == 1 else real(host, port)

    monkeypatch.setattr(worker.commands.dev_broker, "bind_problem", free_at_first)
    dev = DevBroker(listener)
    with pytest.raises(PortInUseError, match="already in use"):
        dev.start(timeout_s=10)
    assert dev.process is not None and dev.process.poll() is not None
