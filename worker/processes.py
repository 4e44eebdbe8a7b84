"""``sentiment worker --processes N``: N worker processes on one machine, one consumer group.

Kafka's group protocol does the sharing: each process is an ordinary ``sentiment worker`` with
the same arguments, so the partitions are split among them exactly as among workers on several
machines. This parent only starts them, gives each its own web port, restarts one that dies
(a crash, an OOM kill) or hangs (its ``/healthz`` fails) so the machine keeps its share of the
work, waits out a broker outage, forwards SIGTERM/SIGINT, and ends when they end: with 0 when
all stopped cleanly, else with the failing code (after asking the others to stop, so each
finishes and commits its batch in hand).

Also the signal handling of a worker's loading phase (:func:`stop_on_signals`), before faust
installs its own handlers, and the check that the web ports are free (:func:`require_free_ports`),
made up front by the parent for all N. On Linux the kernel sends each worker SIGTERM if the
parent itself dies (:func:`die_with_parent`), so none is left running unsupervised.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from schemas.errors import ConfigError
from worker.liveness import Unhealthy, healthz, probe_host
from worker.ports import bind_problem, describe_bind_problem
from worker.settings import ENV_PREFIX

log = logging.getLogger(__name__)

PASSWORD_OPTION = "--sasl-password"
PASSWORD_ENV = f"{ENV_PREFIX}SASL_PASSWORD"
RESTART_LIMIT = 5  # restarts allowed (all children together) ...
RESTART_WINDOW_S = 300.0  # ... within this many seconds; one more and the parent gives up
BACKOFF_S = 1.0  # the first restart's delay, doubled for each restart in the window
POLL_S = 0.2
BROKER_POLL_S = 5.0  # how often a worker waiting for the broker to answer again is retried
EXIT_CHECKS = 2  # a worker's start-up checks failed (settings, web port, broker): one line on stderr
EXIT_SPAWN = 1  # the code given to a worker process that could not be started at all
EXIT_UNHEALTHY = 1  # ... and to one stopped for failing its liveness probe, if it then exits 0
PROBE_EVERY_S = 10.0  # how often the parent asks each worker's /healthz (a kubelet's period) ...
PROBE_FAILURES = 3  # ... and how many failures in a row replace it
MAX_PROBES_AT_ONCE = 16  # probes asked at the same time (a thread each, for the probe's length)
REPLACE_GRACE_S = 60.0  # SIGTERM to an unhealthy worker that answers, SIGKILL this much later
STILL_KILLED_LOG_S = 60.0  # how often to say that a worker outlives its SIGKILL


def without_password(args: Sequence[str]) -> list[str]:
    """``args`` less ``--sasl-password VALUE`` and ``--sasl-password=VALUE``.

    Any user of the machine can read a process's command line (``ps``, ``/proc/PID/cmdline``);
    the children get the password in their environment instead (:func:`child_env`).
    """
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg == PASSWORD_OPTION:
            skip_value = True
        elif not arg.startswith(f"{PASSWORD_OPTION}="):
            kept.append(arg)
    return kept


def child_env(environ: Mapping[str, str], password: str | None) -> dict[str, str]:
    """The children's environment: ours, with the SASL password (however it was given) in
    ``SENTIMENT_SASL_PASSWORD``, readable only by the same user."""
    env = dict(environ)
    if password is not None:
        env[PASSWORD_ENV] = password
    return env


def child_command(args: Sequence[str], *, checkpoint: Path, web_port: int) -> list[str]:
    """The parent's own ``worker`` arguments, without the password, with one process, its port
    and a resolved checkpoint.

    Later options win in click, so appending overrides what ``args`` said.
    """
    return [
        sys.executable, "-m", "worker", "worker", *without_password(args),
        "--processes", "1", "--web-port", str(web_port), "--checkpoint", str(checkpoint),
    ]  # fmt: skip


class Child(Protocol):
    """What the supervisor needs of a process (``subprocess.Popen``; a fake in the tests)."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that has the kernel send the child SIGTERM when we die (even by
    SIGKILL), so a child (a worker, a dev broker) never outlives the process that started it; None
    elsewhere.

    Only from the main thread: the signal comes when the *thread* that started the child ends.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # we died before the prctl: nobody would stop the child
            os._exit(1)

    return preexec


def shell_code(code: int) -> int:
    """A child's return code as a process exit status: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


@dataclass
class Slot:
    """One worker's place: the same command (and web port) across restarts."""

    command: list[str]
    port: int
    process: Child | None = None
    restart_at: float | None = None  # a restart is due at this time
    waiting_for_broker: bool = False  # ... once a broker answers again
    probe_at: float = 0.0  # the next liveness probe is due at this time
    probe_failures: int = 0  # failed in a row
    replacing_since: float | None = None  # stopped for failing its probe at this time ...
    killed_at: float | None = None  # ... and sent SIGKILL at this time
    still_logged_at: float = 0.0  # when we last said it outlives its SIGKILL


class Supervisor:
    """Starts the children, restarts the ones that die, and stops them all on request.

    A child that dies (non-zero exit, killed by a signal) while the parent is not stopping is
    started again with the same command after a backoff (1 s, doubled for each recent restart),
    up to :data:`RESTART_LIMIT` restarts within :data:`RESTART_WINDOW_S` for all children
    together: a machine that kills its workers faster than that (bad GPU, memory) is not helped
    by more restarts, so past the limit the others are stopped and the parent exits with the
    failing code. A child that exits 0 by itself (someone sent it SIGTERM) is not restarted.
    A child that could not be started at all (``Popen`` failed: no memory to fork, the Python
    executable gone) counts as one that died at once.

    A broker outage is not a crash: a child that exits with :data:`EXIT_CHECKS` while
    ``broker_problem`` (the parent's own check, None when a broker answers) says no broker
    answers is started again once one does, checked every ``broker_poll_s``, without counting
    toward the limit. Otherwise an outage during a restart would use up the limit in seconds and
    stop the healthy children too, which ride it out by themselves.

    A hung child is a crash too: with ``probe`` (a port's liveness, :func:`worker.liveness.healthz`),
    each child's ``/healthz`` is asked every ``probe_every_s``, and after ``probe_failures``
    failures in a row the child is replaced: SIGKILL when it does not answer at all (its event
    loop is blocked, it could not act on SIGTERM), else SIGTERM (a hung model call: it commits
    what it published and leaves the group) and SIGKILL after ``replace_grace_s``. Its exit then
    counts as a restart, like any crash. Children on port 0 (any free port) are not probed: the
    parent does not know their ports.

    Driven by :meth:`step`, so the policy is tested with fake children and a fake clock.
    """

    def __init__(
        self,
        slots: Sequence[Slot],
        spawn: Callable[[list[str]], Child],
        *,
        clock: Callable[[], float] = time.monotonic,
        limit: int = RESTART_LIMIT,
        window_s: float = RESTART_WINDOW_S,
        backoff_s: float = BACKOFF_S,
        broker_problem: Callable[[], str | None] | None = None,
        broker_poll_s: float = BROKER_POLL_S,
        probe: Callable[[int], Unhealthy | None] | None = None,
        probe_every_s: float = PROBE_EVERY_S,
        probe_failures: int = PROBE_FAILURES,
        replace_grace_s: float = REPLACE_GRACE_S,
    ) -> None:
        self.slots = list(slots)
        self.spawn, self.clock = spawn, clock
        self.limit, self.window_s, self.backoff_s = limit, window_s, backoff_s
        self.broker_problem, self.broker_poll_s = broker_problem, broker_poll_s
        self.probe, self.probe_every_s = probe, probe_every_s
        self.probe_failures, self.replace_grace_s = probe_failures, replace_grace_s
        self.restarts: deque[float] = deque()  # times of recent restarts
        self.stop_requests = 0  # counted by the signal handler, acted on by step()
        self.stopping = False
        self.killing = False
        self.broker_now: tuple[str | None] | None = None  # this step's broker check, once made
        self.code = 0  # the first failure that ends the parent, as a Popen return code

    def start(self) -> None:
        now = self.clock()
        for slot in self.slots:
            self.launch(slot, now)
        pids = ", ".join(str(s.process.pid) for s in self.slots if s.process is not None)
        log.info("started %d worker processes (pids %s)", len(self.slots), pids)

    def launch(self, slot: Slot, now: float) -> bool:
        """Start the slot's child; a failure to start counts as a child that died at once."""
        if self.stopping:  # the limit was reached while starting the others: start no more
            return False
        slot.probe_at, slot.probe_failures = now + self.probe_every_s, 0
        slot.replacing_since, slot.killed_at = None, None
        try:
            slot.process = self.spawn(slot.command)
        except (OSError, subprocess.SubprocessError) as exc:  # fork or exec failed, or the preexec_fn
            self.exited(
                slot, f"worker process (port {slot.port}) could not be started ({exc})", EXIT_SPAWN, now
            )
            return False
        return True

    def request_stop(self) -> None:
        """Safe from a signal handler: only counts, :meth:`step` sends the signals. The first
        request stops the children cleanly (SIGTERM); a second one, while they stop, kills them."""
        self.stop_requests += 1

    def step(self) -> bool:
        """Reap exited children, start due restarts, act on a stop request; True while any child
        is running or due to be restarted."""
        if self.stop_requests and not self.stopping:
            self.stop_all()
        elif self.stop_requests > 1 and self.stopping and not self.killing:
            self.kill_all()
        now = self.clock()
        self.broker_now = None
        answers = self.probe_due(now)
        for slot in self.slots:
            if slot.process is not None:
                code = slot.process.poll()
                if code is not None:
                    pid, slot.process = slot.process.pid, None
                    what = f"worker process {pid} (port {slot.port}) {describe_exit(code)}"
                    if slot.replacing_since is not None:  # a replacement, however it exited
                        slot.replacing_since, what, code = None, f"{what}, replaced", code or EXIT_UNHEALTHY
                    self.exited(slot, what, code, now)
                elif slot.replacing_since is not None or not self.stopping:
                    # a replacement's SIGKILL is due even when stopping
                    self.watch(slot, slot.process, now, answers)
            elif slot.restart_at is not None and now >= slot.restart_at:
                if slot.waiting_for_broker:
                    if self.stop_requests or self.check_broker() is not None:
                        slot.restart_at = self.clock() + self.broker_poll_s  # from the answer
                        continue
                    slot.waiting_for_broker = False
                    log.info("a broker answers again: starting the worker process on port %d", slot.port)
                slot.restart_at = None
                if self.launch(slot, now) and slot.process is not None:
                    log.info("worker process on port %d restarted (pid %d)", slot.port, slot.process.pid)
        return any(s.process is not None or s.restart_at is not None for s in self.slots)

    def probe_due(self, now: float) -> dict[int, Unhealthy | None]:
        """The liveness of each running child whose probe is due, by port, all asked at once: a
        step waits for one probe's timeout (5 s) however many children do not answer (all of
        them, on a machine that swaps), not for one per child in turn, so a stop request or
        another child's exit is acted on within seconds. The threads end before this returns:
        no child is forked (``preexec_fn``) beside one."""
        if self.probe is None or self.stopping or self.stop_requests:
            return {}
        due = [
            s.port for s in self.slots
            if s.process is not None and s.replacing_since is None and s.port and now >= s.probe_at
        ]  # fmt: skip
        if not due:
            return {}
        probe = self.probe
        asked: dict[int, Future[Unhealthy | None]] = {}
        try:
            with ThreadPoolExecutor(min(len(due), MAX_PROBES_AT_ONCE), thread_name_prefix="probe") as pool:
                for port in due:
                    asked[port] = pool.submit(probe, port)
        except RuntimeError as exc:  # no thread to be had (a pids limit, no memory): one at a time
            log.warning("cannot start probe threads (%s): asking the workers one after the other", exc)
        answers: dict[int, Unhealthy | None] = {}
        for port in due:
            try:
                answers[port] = asked[port].result() if port in asked else probe(port)
            except Exception:  # a bug in the probe must not end the supervision of the others
                log.exception("the liveness probe of port %d failed: taking the worker as healthy", port)
                answers[port] = None
        return answers

    def watch(self, slot: Slot, process: Child, now: float, answers: Mapping[int, Unhealthy | None]) -> None:
        """Act on a running child's probe (``answers``, when it was due); replace it after too
        many failures in a row."""
        if slot.replacing_since is not None:
            if slot.killed_at is None and now - slot.replacing_since >= self.replace_grace_s:
                log.error("worker process %d (port %d) still runs %.0f s after SIGTERM: SIGKILL",
                          process.pid, slot.port, now - slot.replacing_since)  # fmt: skip
                process.send_signal(signal.SIGKILL)
                slot.killed_at = slot.still_logged_at = now
            elif slot.killed_at is not None and now - slot.still_logged_at >= STILL_KILLED_LOG_S:
                # a process in uninterruptible sleep (a hung GPU driver call) outlives SIGKILL
                log.error("worker process %d (port %d) still runs %.0f s after SIGKILL: stuck in the "
                          "kernel (uninterruptible sleep; a GPU driver hang? see dmesg)",
                          process.pid, slot.port, now - slot.killed_at)  # fmt: skip
                slot.still_logged_at = now
            return
        if self.stopping or self.stop_requests or slot.port not in answers:  # a stop came during the probes
            return
        problem = answers[slot.port]
        slot.probe_at = self.clock() + self.probe_every_s  # from the answer: a timeout took seconds
        if problem is None:
            slot.probe_failures = 0
            return
        slot.probe_failures += 1
        what = f"worker process {process.pid} (port {slot.port}): {problem.reason}"
        if slot.probe_failures < self.probe_failures:
            log.warning("%s (%d of %d failed checks in a row replace it)",
                        what, slot.probe_failures, self.probe_failures)  # fmt: skip
            return
        if problem.answers:
            log.error("%s, %d checks in a row: replacing it (SIGTERM; SIGKILL in %.0f s)",
                      what, slot.probe_failures, self.replace_grace_s)  # fmt: skip
            process.send_signal(signal.SIGTERM)
        else:
            log.error("%s, %d checks in a row: replacing it (SIGKILL: it cannot act on SIGTERM)",
                      what, slot.probe_failures)  # fmt: skip
            process.send_signal(signal.SIGKILL)
            slot.killed_at = slot.still_logged_at = self.clock()
        slot.replacing_since = self.clock()  # the grace from the signal, not from before the probe

    def check_broker(self) -> str | None:
        """Why no broker answers, or None when one does (or the check itself failed). Made at
        most once a step (it can take seconds), however many children exit or wait."""
        if self.broker_problem is None:
            return None
        if self.broker_now is None:
            try:
                self.broker_now = (self.broker_problem(),)
            except Exception:  # a bug in the check must not end the supervision of the others
                log.exception("the broker check failed: taking it that a broker answers")
                self.broker_now = (None,)
        return self.broker_now[0]

    def exited(self, slot: Slot, what: str, code: int, now: float) -> None:
        """``slot``'s child ended with ``code`` (a Popen return code; ``what`` says so in words):
        restart it, wait for the broker, or give up."""
        if code == 0:
            log.log(logging.INFO if self.stopping else logging.WARNING, "%s", what)
            return
        if self.stopping:
            log.error("%s while stopping", what)
            self.code = self.code or code
            return
        if code == EXIT_CHECKS and (problem := self.check_broker()) is not None:
            slot.waiting_for_broker, slot.restart_at = True, self.clock() + self.broker_poll_s
            log.warning("%s: the broker is away (%s); starting it again once a broker answers "
                        "(checked every %.0f s; not counted as a restart)", what, problem,
                        self.broker_poll_s)  # fmt: skip
            return
        while self.restarts and now - self.restarts[0] >= self.window_s:
            self.restarts.popleft()
        if len(self.restarts) >= self.limit:
            log.error("%s; %d restarts within %.0f s already: stopping the others",
                      what, len(self.restarts), self.window_s)  # fmt: skip
            self.code = code
            self.stop_all()
            return
        delay = self.backoff_s * 2 ** len(self.restarts)
        self.restarts.append(now)
        slot.restart_at = now + delay
        log.warning("%s; restarting it in %.0f s (restart %d of %d within %.0f s)",
                    what, delay, len(self.restarts), self.limit, self.window_s)  # fmt: skip

    def stop_all(self) -> None:
        """SIGTERM to every running child (each finishes its batch and commits); no more restarts."""
        self.stopping = True
        for slot in self.slots:
            slot.restart_at, slot.waiting_for_broker = None, False
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)

    def kill_all(self) -> None:
        """SIGKILL to every running child: a second stop request (Ctrl-C again) while they stop.
        What they had not committed is read again by the partitions' next owner."""
        self.killing = True
        running = [s.process for s in self.slots if s.process is not None and s.process.poll() is None]
        if running:
            log.warning("a second stop request: killing %d worker process(es) (pids %s); what they "
                        "had not committed is read again by the next owner",
                        len(running), ", ".join(str(p.pid) for p in running))  # fmt: skip
        for process in running:
            process.send_signal(signal.SIGKILL)

    @property
    def exit_code(self) -> int:
        return shell_code(self.code)


def web_ports(first_port: int, count: int) -> list[int]:
    """The web ports of ``count`` workers: ``first_port`` and the ports after it; each any free
    port (0) when ``first_port`` is 0."""
    return [first_port + i if first_port else 0 for i in range(count)]


def require_free_ports(host: str, ports: Sequence[int]) -> None:
    """Fail fast, with one line, when the web server could not listen on ``host`` at one of
    ``ports`` (the ``--processes`` workers' ports): before the model loads, not as faust's
    crash seconds later. Port 0 (any free port) always can."""
    many = f"; --processes {len(ports)} uses ports {ports[0]}-{ports[-1]}" if len(ports) > 1 else ""
    hint = f"; choose another with --web-port or {ENV_PREFIX}WEB_PORT"
    for port in ports:
        if port > 65535:
            raise ConfigError(f"--web-port {ports[0]} is too high{many}, past the last port, 65535")
        problem = bind_problem(host, port) if port else None
        if isinstance(problem, socket.gaierror):
            raise ConfigError(f"--web-host {host}: cannot resolve it ({problem.strerror or problem})")
        if problem is not None and problem.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                f"--web-host {host} is not an address of this machine ({problem.strerror}); "
                f"see --web-host or {ENV_PREFIX}WEB_HOST"
            )
        if problem is not None:
            what = describe_bind_problem(problem, port)
            raise ConfigError(f"--web-port {port} on {host} is {what}{many}{hint}")


def run_processes(
    args: Sequence[str],
    *,
    count: int,
    checkpoint: Path,
    first_port: int,
    env: Mapping[str, str] | None = None,
    broker_problem: Callable[[], str | None] | None = None,
    web_host: str | None = None,
) -> int:
    """Start ``count`` workers and supervise them until all have exited; the exit code.

    ``env``: the children's environment (:func:`child_env`); ours when None. ``broker_problem``:
    why no broker answers, None when one does. ``web_host``: the workers' ``--web-host``, where
    their ``/healthz`` is probed; None for no probes. See :class:`Supervisor`.
    """
    ports = web_ports(first_port, count)
    slots = [Slot(child_command(args, checkpoint=checkpoint, web_port=port), port) for port in ports]
    environ = dict(env) if env is not None else dict(os.environ)
    # a worker gets SIGTERM (stops cleanly: finishes, commits, leaves the group) when this parent
    # dies, even by SIGKILL or the OOM killer: no worker is left running unsupervised, holding its
    # web port against the parent started again
    die = die_with_parent()

    def preexec() -> None:
        if die is not None:
            die()
        # held, not lost, until the worker's own handlers are in place (stop_after unblocks them):
        # a stop in its first fraction of a second (Python starting) would kill it by the signal
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def spawn(command: list[str]) -> Child:
        return subprocess.Popen(command, env=environ, preexec_fn=preexec)

    probe = None
    if web_host is not None:
        probe = functools.partial(healthz, probe_host(web_host))
    supervisor = Supervisor(slots, spawn, broker_problem=broker_problem, probe=probe)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        supervisor.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor.start()
        while supervisor.step():
            time.sleep(POLL_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return supervisor.exit_code


class StopRequested(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGINT, ...) arrived during :func:`stop_on_signals`.

    A KeyboardInterrupt, so that no ``except Exception`` in the loading code swallows it, and so
    that asyncio passes it on from whatever task or callback it interrupted (an ``asyncio.run``
    in the block: asyncio re-raises only KeyboardInterrupt and SystemExit from those, and keeps
    any other BaseException on the task, where the stop would be lost)."""


@contextlib.contextmanager
def stop_after(signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Inside the block, ``signals`` are only noted; once the block has run to its end,
    :class:`StopRequested` is raised if one came. Without a stop the previous handlers are
    restored; after one the signals stay ignored while the process ends.

    For the seconds a worker spends importing torch, transformers and faust, before it loads the
    model: until now SIGTERM killed it there (exit -15, a crash to ``--processes``) and SIGINT
    printed a traceback. Raising in the middle of an import instead (:func:`stop_on_signals`)
    could leave the stop to a library's ``except BaseException``; a note cannot be lost.

    ``signals`` blocked when the block starts (a ``--processes`` worker starts with them blocked)
    are unblocked: one that came before is noted then.
    """
    noted: list[str] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        noted.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, note) for s in signals}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)  # held since the start (--processes): noted now
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # once a stop came the process is ending: a second signal (a terminal's Ctrl-C reaches
            # the worker, then its parent's SIGTERM) is ignored, not a kill on its way out
            signal.signal(sig, signal.SIG_IGN if noted else signal.SIG_DFL if handler is None else handler)
    if noted:
        raise StopRequested(noted[0])


@contextlib.contextmanager
def stop_on_signals(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    *,
    keep_ignored: bool = False,
    once: bool = False,
    final: bool = False,
) -> Iterator[None]:
    """Inside the block, ``signals`` raise :class:`StopRequested`; the previous handlers are
    restored on the way out.

    For a worker loading its model: faust installs its handlers only when it runs, and until
    then SIGTERM would kill the process (exit -15, which a supervisor counts as a crash) and
    SIGINT would print a traceback, where a stop request should just end the process with 0.

    ``keep_ignored``: a signal ignored when the block starts (SIGHUP under ``nohup``) stays
    ignored. ``once``: only the first signal raises, later ones are ignored, so they cannot
    interrupt the cleanup it starts (stopping a child process). ``final``: the process ends after
    a stop, so once one was raised the signals stay ignored instead of restored (a second one, as
    a terminal's Ctrl-C followed by the ``--processes`` parent's SIGTERM, would kill it on its way
    out, seconds with torch loaded).
    """
    stopping = False

    def raise_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not (once and stopping):
            stopping = True
            raise StopRequested(signal.Signals(signum).name)

    previous = {s: signal.getsignal(s) for s in signals}
    for sig, handler in previous.items():
        if not (keep_ignored and handler is signal.SIG_IGN):
            signal.signal(sig, raise_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if final and stopping:
                signal.signal(sig, signal.SIG_IGN)
            else:
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set in C
