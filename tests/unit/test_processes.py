"""The ``--processes`` supervisor's policy (fake children, fake clock), the password kept off
the children's command lines, and the loading phase's signal handling."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.liveness import Unhealthy
from worker.processes import (
    PASSWORD_ENV,
    STOP_SIGNALS,
    Slot,
    StopRequested,
    Supervisor,
    child_command,
    child_env,
    stop_after,
    stop_on_signals,
    web_ports,
    without_password,
)

SECRET = "pw-canary-7f3a"


@pytest.mark.parametrize("args", [
    ["--sasl-mechanism", "PLAIN", "--sasl-password", SECRET, "--batch-size", "8"],
    ["--sasl-mechanism", "PLAIN", f"--sasl-password={SECRET}", "--batch-size", "8"],
    ["--sasl-password", SECRET, "--sasl-mechanism", "PLAIN", "--sasl-password", SECRET, "--batch-size", "8"],
])  # fmt: skip
def test_the_password_is_stripped_from_the_childrens_arguments(args: list[str]) -> None:
    assert without_password(args) == ["--sasl-mechanism", "PLAIN", "--batch-size", "8"]
    command = child_command(args, checkpoint=Path("/ckpt"), web_port=7001)
    assert not any(SECRET in arg for arg in command)
    assert command[:4] == [sys.executable, "-m", "worker", "worker"]
    assert command[-6:] == ["--processes", "1", "--web-port", "7001", "--checkpoint", "/ckpt"]


def test_arguments_without_a_password_pass_unchanged() -> None:
    args = ["--sasl-username", "--sasl-password-file", "--batch-size=8"]  # look-alikes stay
    assert without_password(args) == args


def test_the_children_get_the_password_in_their_environment() -> None:
    parent = {"PATH": "/usr/bin", PASSWORD_ENV: "from-the-environment"}
    assert child_env(parent, SECRET) == {"PATH": "/usr/bin", PASSWORD_ENV: SECRET}
    assert child_env(parent, None) == parent
    assert child_env({"PATH": "/usr/bin"}, None) == {"PATH": "/usr/bin"}
    assert parent[PASSWORD_ENV] == "from-the-environment", "the parent's mapping is not changed"


class FakeChild:
    """A process whose exit the test decides."""

    pids = iter(range(1000, 10_000))

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A supervisor of two fake children on ports 7000 and 7001."""

    def __init__(self, **kwargs: float) -> None:
        self.clock = Clock()
        self.spawned: list[FakeChild] = []
        self.spawn_error: OSError | None = None  # what Popen raises, while set
        self.broker_away: str | None = None  # what the parent's broker check says, while set
        self.broker_checks = 0
        self.health: dict[int, Unhealthy | None] = {}  # what each port's liveness probe says
        self.probes: list[int] = []
        slots = [Slot(["worker", f"--web-port={p}"], p) for p in (7000, 7001)]
        self.supervisor = Supervisor(
            slots,
            self.spawn,
            clock=self.clock,
            broker_problem=self.broker_problem,
            probe=self.probe,
            **kwargs,  # type: ignore[arg-type]
        )
        self.supervisor.start()

    def probe(self, port: int) -> Unhealthy | None:
        self.probes.append(port)
        return self.health.get(port)

    def broker_problem(self) -> str | None:
        self.broker_checks += 1
        return self.broker_away

    def spawn(self, command: list[str]) -> FakeChild:
        if self.spawn_error is not None:
            raise self.spawn_error
        child = FakeChild(command)
        self.spawned.append(child)
        return child

    def running(self, port: int) -> FakeChild:
        [slot] = [s for s in self.supervisor.slots if s.port == port]
        assert isinstance(slot.process, FakeChild)
        return slot.process

    def after(self, seconds: float) -> bool:
        self.clock.now += seconds
        return self.supervisor.step()


def test_a_child_killed_by_a_signal_is_restarted_with_the_same_command_after_a_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    first = h.running(7001)
    first.returncode = -signal.SIGKILL
    with caplog.at_level(logging.INFO, logger="worker.processes"):
        assert h.after(0.2)
        assert h.running(7000) is h.spawned[0] and len(h.spawned) == 2, "not yet: backing off"
        assert h.after(1.0)
    restarted = h.running(7001)
    assert restarted is not first and restarted.command == first.command
    assert not h.spawned[0].signals, "the other child is left alone"
    messages = [r.getMessage() for r in caplog.records if "7001" in r.getMessage()]
    assert messages[0].startswith(f"worker process {first.pid} (port 7001) was killed by SIGKILL; restarting")
    assert messages[1] == f"worker process on port 7001 restarted (pid {restarted.pid})"


def test_a_non_zero_exit_is_restarted_and_the_backoff_doubles() -> None:
    h = Harness()
    delays = []
    for _ in range(3):
        h.running(7000).returncode = 1
        h.after(0)
        start = h.clock.now
        while h.supervisor.slots[0].process is None:
            h.after(0.25)
        delays.append(h.clock.now - start)
    assert delays == [1.0, 2.0, 4.0]


def test_past_five_restarts_within_the_window_the_others_are_stopped_and_the_code_is_the_failure() -> None:
    h = Harness()
    for _ in range(5):
        h.running(7000).returncode = 3
        h.after(0)
        h.after(20)  # more than any backoff (1, 2, 4, 8, 16 s): restarted
    assert len(h.spawned) == 7
    h.running(7000).returncode = 3  # the sixth failure within 300 s
    assert h.after(0), "the other child is still finishing its batch"
    other = h.running(7001)
    assert other.signals == [signal.SIGTERM]
    assert h.supervisor.slots[0].process is None and h.supervisor.slots[0].restart_at is None
    other.returncode = 0
    assert not h.after(0.2)
    assert h.supervisor.exit_code == 3 and len(h.spawned) == 7


def test_restarts_older_than_the_window_do_not_count() -> None:
    h = Harness()
    for _ in range(12):
        h.running(7000).returncode = -signal.SIGKILL
        h.after(0)
        h.after(61)  # a crash a minute: five per 300 s at most
        assert h.supervisor.slots[0].process is not None, "restarted"
    assert not h.supervisor.stopping and h.supervisor.exit_code == 0


def test_the_limit_counts_all_children_together() -> None:
    h = Harness(limit=2)
    for port in (7000, 7001):
        h.running(port).returncode = 1
        h.after(0)
        h.after(10)
    h.running(7000).returncode = -signal.SIGKILL
    h.after(0)
    assert h.supervisor.stopping and h.supervisor.exit_code == 128 + signal.SIGKILL


def test_a_stop_request_terminates_all_and_a_clean_stop_exits_0() -> None:
    h = Harness()
    h.supervisor.request_stop()  # what the SIGTERM/SIGINT handler does
    assert [c.signals for c in h.spawned] == [[], []], "the handler itself sends nothing"
    assert h.after(0)
    assert [c.signals for c in h.spawned] == [[signal.SIGTERM], [signal.SIGTERM]]
    for child in h.spawned:
        child.returncode = 0
    assert not h.after(0.2)
    assert h.supervisor.exit_code == 0


def test_a_second_stop_request_while_stopping_kills_the_children_still_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.supervisor.request_stop()
    h.after(0)
    h.spawned[0].returncode = 0  # stopped cleanly already
    h.supervisor.request_stop()  # Ctrl-C again: the other one takes too long
    assert h.after(0)
    assert [c.signals for c in h.spawned] == [[signal.SIGTERM], [signal.SIGTERM, signal.SIGKILL]]
    h.supervisor.request_stop()  # a third changes nothing
    h.after(0)
    assert h.spawned[1].signals == [signal.SIGTERM, signal.SIGKILL]
    assert f"killing 1 worker process(es) (pids {h.spawned[1].pid})" in caplog.text
    h.spawned[1].returncode = -signal.SIGKILL
    assert not h.after(0.2)
    assert h.supervisor.exit_code == 128 + signal.SIGKILL, "a forced stop is not a clean one"


def test_a_child_dying_while_stopping_is_not_restarted_and_sets_the_code() -> None:
    h = Harness()
    h.supervisor.request_stop()
    h.after(0)
    h.spawned[0].returncode = -signal.SIGKILL
    h.spawned[1].returncode = 0
    assert not h.after(5)
    assert len(h.spawned) == 2 and h.supervisor.exit_code == 128 + signal.SIGKILL


def test_a_stop_request_cancels_a_pending_restart() -> None:
    h = Harness()
    h.running(7000).returncode = 1
    h.after(0)
    h.supervisor.request_stop()
    h.running(7001).returncode = 0
    assert not h.after(0)
    assert len(h.spawned) == 2 and h.supervisor.exit_code == 0


def test_a_child_that_stops_cleanly_by_itself_is_not_restarted() -> None:
    h = Harness()
    h.running(7000).returncode = 0  # someone sent it SIGTERM
    assert h.after(10) and len(h.spawned) == 2
    h.running(7001).returncode = 0
    assert not h.after(0.2) and h.supervisor.exit_code == 0


def test_exit_2_with_the_broker_answering_is_a_failure_like_any_other() -> None:
    h = Harness()
    h.running(7000).returncode = 2  # a start-up check failed, and not the broker: a deleted checkpoint?
    h.after(0)
    assert len(h.supervisor.restarts) == 1 and h.broker_checks == 1
    h.after(1.0)
    assert len(h.spawned) == 3, "restarted after the usual backoff"


def test_a_child_that_finds_the_broker_away_waits_for_it_and_is_not_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    healthy = h.running(7001)
    h.broker_away = "cannot reach any Kafka broker in 127.0.0.1:9092 (refused)"
    with caplog.at_level(logging.INFO, logger="worker.processes"):
        h.running(7000).returncode = -signal.SIGKILL  # an OOM kill, during a broker outage
        h.after(0)
        for _ in range(6):  # more failed starts than the limit (5): a broker that flaps
            h.after(20)  # restarted
            h.running(7000).returncode = 2  # its start-up check: no broker answers
            h.after(0)
            for _ in range(20):  # 100 s of outage: not started again, nothing stopped
                assert h.after(5.0)
                assert h.supervisor.slots[0].process is None and not h.supervisor.stopping
            h.broker_away = None  # back ...
            h.after(5.0)
            assert h.running(7000).command == ["worker", "--web-port=7000"]
            h.broker_away = "cannot reach any Kafka broker in 127.0.0.1:9092 (refused)"  # ... and away
    assert not h.supervisor.stopping and healthy.signals == [], "the healthy child is left alone"
    assert h.running(7001) is healthy and len(h.spawned) == 2 + 1 + 6
    assert not h.supervisor.stopping and healthy.signals == [], "the healthy child is left alone"
    assert len(h.supervisor.restarts) == 1, "only the kill counted, not the outage"
    assert "the broker is away (cannot reach any Kafka broker" in caplog.text
    assert "not counted as a restart" in caplog.text
    assert "a broker answers again: starting the worker process on port 7000" in caplog.text


def test_the_broker_is_checked_once_a_step_however_many_children_wait() -> None:
    h = Harness()
    h.broker_away = "away"
    for port in (7000, 7001):
        h.running(port).returncode = 2
    h.after(0)
    checks = h.broker_checks
    h.after(5.0)
    assert h.broker_checks == checks + 1
    assert all(s.process is None and s.waiting_for_broker for s in h.supervisor.slots)


def test_a_failing_broker_check_counts_the_exit_as_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> str | None:
        raise RuntimeError("a bug in the check")

    clock = Clock()
    supervisor = Supervisor([Slot(["worker"], 7000)], FakeChild, clock=clock, broker_problem=broken)
    supervisor.start()
    assert isinstance(supervisor.slots[0].process, FakeChild)
    supervisor.slots[0].process.returncode = 2
    assert supervisor.step() and len(supervisor.restarts) == 1, "restarted with the usual backoff"
    assert "the broker check failed: taking it that a broker answers" in caplog.text


def test_a_stop_request_while_waiting_for_the_broker_ends_with_0() -> None:
    h = Harness()
    h.broker_away = "away"
    h.running(7000).returncode = 2
    h.after(0)
    h.supervisor.request_stop()
    h.running(7001).returncode = 0
    assert not h.after(0), "nothing left to wait for"
    assert h.supervisor.exit_code == 0 and len(h.spawned) == 2


def test_a_child_that_cannot_be_started_is_retried_like_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.running(7000).returncode = -signal.SIGKILL
    h.after(0)
    h.spawn_error = OSError(12, "Cannot allocate memory")  # fork failed
    with caplog.at_level(logging.WARNING, logger="worker.processes"):
        h.after(1.0)
    assert h.supervisor.slots[0].process is None and len(h.supervisor.restarts) == 2
    assert (
        "worker process (port 7000) could not be started ([Errno 12] Cannot allocate memory)" in caplog.text
    )
    h.spawn_error = None
    h.after(2.0)
    assert h.supervisor.slots[0].process is not None and not h.supervisor.stopping


def test_a_child_that_never_starts_ends_the_parent_with_1_after_the_limit() -> None:
    h = Harness()
    h.spawn_error = FileNotFoundError(2, "No such file or directory")  # the executable was removed
    h.running(7000).returncode = 1
    h.after(0)
    for _ in range(5):
        h.after(20)
    other = h.running(7001)
    assert h.supervisor.stopping and other.signals == [signal.SIGTERM]
    other.returncode = 0
    assert not h.after(0.2)
    assert h.supervisor.exit_code == 1


def test_a_child_that_cannot_be_started_at_first_is_retried() -> None:
    clock = Clock()
    calls: list[list[str]] = []

    def spawn(command: list[str]) -> FakeChild:
        calls.append(command)
        if len(calls) == 1:
            raise OSError(11, "Resource temporarily unavailable")
        return FakeChild(command)

    supervisor = Supervisor([Slot(["worker"], 7000)], spawn, clock=clock)
    supervisor.start()
    assert supervisor.slots[0].process is None and supervisor.step()
    clock.now += 1.0
    assert supervisor.step() and supervisor.slots[0].process is not None and len(calls) == 2


HUNG = Unhealthy("/healthz 503 {'status': 'model call hung', 'model_busy_s': 130.2}", answers=True)
SILENT = Unhealthy("/healthz did not answer within 5 s", answers=False)


def test_each_child_is_probed_every_10_s_from_its_start() -> None:
    h = Harness()
    h.after(9.8)
    assert h.probes == []
    h.after(0.2)
    assert sorted(h.probes) == [7000, 7001]
    h.after(5)
    assert len(h.probes) == 2
    h.after(5)
    assert len(h.probes) == 4


def test_a_child_whose_model_call_hung_is_stopped_then_replaced_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    hung, healthy = h.running(7000), h.running(7001)
    h.health[7000] = HUNG
    with caplog.at_level(logging.INFO, logger="worker.processes"):
        for _ in range(2):
            h.after(10)
            assert hung.signals == [], "not on one or two failed checks"
        h.after(10)
        assert hung.signals == [signal.SIGTERM], "the third in a row: stop it (it commits, leaves)"
        h.after(10)
        assert hung.signals == [signal.SIGTERM], "no more probes or signals while it stops"
        hung.returncode = 0  # it stopped cleanly, without waiting for the hung call
        h.health[7000] = None
        h.after(0)
        assert h.supervisor.slots[0].process is None and len(h.supervisor.restarts) == 1
        h.after(1.0)
    assert h.running(7000) is not hung and h.running(7000).command == hung.command
    assert healthy.signals == [] and not h.supervisor.stopping
    assert "model call hung" in caplog.text and "3 checks in a row: replacing it (SIGTERM" in caplog.text
    assert (
        f"worker process {hung.pid} (port 7000) exited with 0, replaced; restarting it in 1 s" in caplog.text
    )


def being_replaced() -> tuple[Harness, FakeChild]:
    """A harness whose child on port 7000 has just been sent SIGTERM for 3 hung probes in a row."""
    h = Harness(replace_grace_s=60)
    hung = h.running(7000)
    h.health[7000] = HUNG
    for _ in range(3):
        h.after(10)
    assert hung.signals == [signal.SIGTERM]
    return h, hung


def test_a_hung_child_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    h, hung = being_replaced()
    h.after(59)
    assert hung.signals == [signal.SIGTERM]
    h.after(1)
    assert hung.signals == [signal.SIGTERM, signal.SIGKILL]
    h.after(10)
    assert hung.signals == [signal.SIGTERM, signal.SIGKILL], "killed once"
    hung.returncode = -signal.SIGKILL
    h.after(0)
    assert len(h.supervisor.restarts) == 1


def test_a_child_that_does_not_answer_is_killed_at_once() -> None:
    h = Harness()
    frozen = h.running(7000)
    h.health[7000] = SILENT
    for _ in range(3):
        h.after(10)
    assert frozen.signals == [signal.SIGKILL], "its event loop is blocked: SIGTERM would wait with it"
    h.after(100)
    assert frozen.signals == [signal.SIGKILL]
    frozen.returncode = -signal.SIGKILL
    h.after(0)
    h.after(1)
    assert h.running(7000) is not frozen


def test_one_good_answer_resets_the_count() -> None:
    h = Harness()
    child = h.running(7000)
    for health in (HUNG, HUNG, None, HUNG, HUNG, None, SILENT, SILENT):
        h.health[7000] = health
        h.after(10)
    assert child.signals == []


def test_children_on_any_free_port_are_not_probed() -> None:
    clock = Clock()
    probed: list[int] = []

    def probe(port: int) -> Unhealthy | None:
        probed.append(port)
        return SILENT

    supervisor = Supervisor([Slot(["worker"], 0)], FakeChild, clock=clock, probe=probe)
    supervisor.start()
    for _ in range(10):
        clock.now += 10
        supervisor.step()
    assert probed == [] and isinstance(supervisor.slots[0].process, FakeChild)
    assert supervisor.slots[0].process.signals == []


def test_the_children_due_are_probed_at_once_and_no_probe_thread_outlives_the_step() -> None:
    """Four children that do not answer (a machine that swaps): their probes wait together, so a
    step lasts one probe's timeout, not four, and a stop request waits that long at most. Each
    probe here returns only once all four are being asked (a barrier), which probes asked one
    after the other never reach."""
    clock = Clock()
    together = threading.Barrier(4, timeout=10)
    ports = (7000, 7001, 7002, 7003)

    def probe(port: int) -> Unhealthy | None:
        together.wait()
        return SILENT

    supervisor = Supervisor([Slot(["worker"], p) for p in ports], FakeChild, clock=clock, probe=probe)
    supervisor.start()
    clock.now += 10
    supervisor.step()
    assert [s.probe_failures for s in supervisor.slots] == [1, 1, 1, 1]
    # a child is forked (preexec_fn) only with no other thread running
    assert not [t.name for t in threading.enumerate() if t.name.startswith("probe")]


def test_without_threads_the_children_are_probed_one_after_the_other(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No thread to be had (a pids limit, no memory) does not end the parent: the probes are
    asked in turn, as they answer."""

    def no_thread(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    h = Harness()
    h.health[7000] = SILENT
    with caplog.at_level(logging.WARNING, logger="worker.processes"):
        h.after(10)
    assert sorted(h.probes) == [7000, 7001]
    assert [s.probe_failures for s in h.supervisor.slots] == [1, 0]
    assert "cannot start probe threads (can't start new thread)" in caplog.text


def test_a_stop_requested_while_the_probes_wait_stops_the_children_cleanly() -> None:
    """SIGTERM while the probes wait (5 s for a worker that does not answer): the third silent
    answer does not SIGKILL that worker; the stop sends every worker SIGTERM."""
    h = Harness()
    h.health[7000] = SILENT
    h.after(10)
    h.after(10)
    asked = h.probe

    def probe_then_stop(port: int) -> Unhealthy | None:
        h.supervisor.request_stop()  # the signal handler, during the probe
        return asked(port)

    h.supervisor.probe = probe_then_stop
    h.after(10)
    assert h.running(7000).signals == [], "no SIGKILL for a third failure that came with the stop"
    h.after(0)
    assert h.running(7000).signals == [signal.SIGTERM] and h.running(7001).signals == [signal.SIGTERM]


def test_no_probes_while_stopping() -> None:
    h = Harness()
    h.supervisor.request_stop()
    h.after(0)
    h.health[7000] = SILENT
    for _ in range(5):
        h.after(10)
    assert h.probes == [] and h.running(7000).signals == [signal.SIGTERM]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_while_loading_raise_stop_requested_and_the_handlers_come_back(sig: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(StopRequested, match=signal.Signals(sig).name), stop_on_signals():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # interrupted: the handler raises in the main thread
        pytest.fail("the signal did not stop the block")
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.fixture
def handlers() -> Iterator[None]:
    """SIGTERM's and SIGINT's handlers (and mask) as they were before the test, whatever it left."""
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_while_starting_let_the_block_finish_then_raise_and_are_ignored_after(
    sig: int, handlers: None
) -> None:
    finished = False
    with pytest.raises(StopRequested, match=signal.Signals(sig).name), stop_after():
        os.kill(os.getpid(), sig)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one is noted too, and changes nothing
        time.sleep(0.05)  # not interrupted (an import of torch is not cut half way)
        finished = True
    assert finished
    # the process is ending: a second signal (the --processes parent's SIGTERM) cannot kill it
    assert all(signal.getsignal(s) is signal.SIG_IGN for s in STOP_SIGNALS)
    os.kill(os.getpid(), signal.SIGTERM)  # ignored: this test goes on
    time.sleep(0.05)


def test_without_a_stop_the_handlers_come_back(handlers: None) -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with stop_after():
        pass
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_a_signal_held_blocked_since_the_start_is_noted_once_the_block_begins(handlers: None) -> None:
    """How a --processes worker starts: its stop signals blocked (pending, not lost) until its own
    handlers are in place."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    # to this thread (a worker starts with one thread only; pytest may have others, which a signal
    # to the process could be delivered to): pending, neither delivered nor lost
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    assert signal.SIGTERM in signal.sigpending()
    with pytest.raises(StopRequested, match="SIGTERM"), stop_after():
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_final_stop_leaves_the_signals_ignored(handlers: None) -> None:
    with pytest.raises(StopRequested), stop_on_signals(final=True):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert all(signal.getsignal(s) is signal.SIG_IGN for s in STOP_SIGNALS)


def test_an_error_in_the_starting_block_is_raised_as_it_is(handlers: None) -> None:
    with pytest.raises(ValueError, match="bad setting"), stop_after():
        os.kill(os.getpid(), signal.SIGTERM)
        raise ValueError("bad setting")


def test_a_stop_during_asyncio_run_reaches_the_block() -> None:
    """asyncio keeps any BaseException but KeyboardInterrupt/SystemExit raised in a task or callback
    on that task; a stop there must still end the block (the broker creating its topics)."""

    async def busy_task() -> None:
        while True:
            await asyncio.sleep(0.001)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(busy_task())
        loop = asyncio.get_running_loop()
        # the signal lands while the background task runs, not in main()
        loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.sleep(5)
        task.cancel()

    start = time.monotonic()
    with pytest.raises(StopRequested), stop_on_signals(once=True):
        asyncio.run(main())
    assert time.monotonic() - start < 4, "the stop was swallowed: asyncio.run ran to its end"


def test_once_ignores_a_second_signal_during_the_cleanup() -> None:
    cleaned = False
    with pytest.raises(StopRequested), stop_on_signals(once=True):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while stopping a child
            time.sleep(0.05)
            cleaned = True
    assert cleaned


def test_keep_ignored_leaves_an_ignored_signal_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stop_on_signals((signal.SIGTERM, signal.SIGHUP), keep_ignored=True):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)  # not raised: still ignored
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_web_ports_follow_the_first_or_are_all_any_free_port() -> None:
    assert web_ports(6066, 3) == [6066, 6067, 6068]
    assert web_ports(0, 3) == [0, 0, 0]  # not 0, 1, 2: each child asks for any free port


def test_a_stop_during_a_replacement_still_kills_the_hung_child_after_the_grace() -> None:
    h, hung = being_replaced()
    h.supervisor.request_stop()  # the operator stops the parent meanwhile
    h.after(1)
    h.running(7001).returncode = 0
    for _ in range(6):
        assert h.after(10), "the hung child still runs"
    assert hung.signals == [signal.SIGTERM, signal.SIGTERM, signal.SIGKILL], "killed after the grace"
    hung.returncode = -signal.SIGKILL
    assert not h.after(0.2)


def test_once_the_limit_stops_everything_while_starting_no_more_children_start() -> None:
    clock = Clock()
    calls: list[list[str]] = []

    def spawn(command: list[str]) -> FakeChild:
        calls.append(command)
        if len(calls) <= 6:
            raise OSError(11, "Resource temporarily unavailable")  # a pids limit, for a moment
        return FakeChild(command)

    supervisor = Supervisor([Slot(["worker"], 7000 + i) for i in range(7)], spawn, clock=clock)
    supervisor.start()
    assert supervisor.stopping and len(calls) == 6, "the sixth failure hit the limit: no seventh start"
    assert not supervisor.step() and supervisor.exit_code == 1


def test_the_next_broker_check_is_due_a_poll_after_the_last_one_ended() -> None:
    clock = Clock()
    checks: list[float] = []

    def slow_broker() -> str | None:
        checks.append(clock.now)
        clock.now += 5.0  # a frozen broker: each check waits out its 5 s timeout
        return "away"

    supervisor = Supervisor([Slot(["worker"], 7000)], FakeChild, clock=clock, broker_problem=slow_broker)
    supervisor.start()
    assert isinstance(supervisor.slots[0].process, FakeChild)
    supervisor.slots[0].process.returncode = 2
    while len(checks) < 4:
        supervisor.step()
        clock.now += 0.2
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(checks)]
    assert all(gap >= 10.0 for gap in gaps), f"checks back to back: {gaps}"


def test_a_child_that_outlives_its_sigkill_is_reported_every_minute(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    stuck = h.running(7000)
    h.health[7000] = SILENT
    with caplog.at_level(logging.ERROR, logger="worker.processes"):
        for _ in range(3):
            h.after(10)
        for _ in range(36):  # ten minutes in the kernel (a wedged GPU driver call)
            h.after(10)
    assert stuck.signals == [signal.SIGKILL], "killed once"
    still = [r.getMessage() for r in caplog.records if "after SIGKILL" in r.getMessage()]
    assert len(still) == 6 and "uninterruptible sleep" in still[0], still
