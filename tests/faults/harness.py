"""Worker processes and broker faults for the fault-injection suite and ``bench/faults.py``.

A :class:`Worker` is ``python -m tests.faults.fault_worker [FAULTS] -- [worker options]`` (the
real CLI; see ``fault_worker.py``) run from the repository root, logging to a file. The helpers
here start, signal and watch such processes, poll their ``/readyz``, and freeze the dev broker
under them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.faults.ledger import Topics
from worker.commands.dev_broker import DevBroker
from worker.ports import free_port, free_ports

ROOT = Path(__file__).resolve().parents[2]  # `python -m worker` imports the code of this checkout
CRASH_MARKS = ("failed, stopping", "Traceback")


def readyz(port: int) -> tuple[int, dict[str, Any] | None]:
    """(status, body) of ``/readyz``; (0, None) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class Worker:
    """One worker process (``proc``), its web port and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    web_port: int
    log: Path
    signalled: list[str] = field(default_factory=list)  # "term", "kill": what the test did to it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} ({self.log}) ---\n{self.log_text()[-chars:]}"

    def crashed_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if any(m in line for m in CRASH_MARKS)]

    def readyz(self) -> tuple[int, dict[str, Any] | None]:
        return readyz(self.web_port)

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Until ``/readyz`` is 200 (it holds partitions); AssertionError with the log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.alive(), f"{self.name} exited with {self.proc.returncode}\n{self.tail()}"
            if self.readyz()[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {timeout_s:.0f} s\n{self.tail()}")

    def wait_ports_ready(self, ports: Sequence[int], timeout_s: float = 90) -> None:
        """Until every one of ``ports`` (a ``--processes`` parent's workers) says /readyz 200."""
        deadline = time.monotonic() + timeout_s
        while not all(readyz(port)[0] == 200 for port in ports):
            assert self.alive(), f"{self.name} exited with {self.proc.returncode}\n{self.tail()}"
            assert time.monotonic() < deadline, f"{self.name}: not all of {ports} ready\n{self.tail()}"
            time.sleep(0.2)

    def wait_log(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log_text():
            assert self.alive(), f"{self.name} exited with {self.proc.returncode}\n{self.tail()}"
            assert time.monotonic() < deadline, f"{self.name}: no {text!r} in the log\n{self.tail()}"
            time.sleep(0.05)

    def rss_kb(self) -> int:
        """Resident memory (VmRSS) in KiB; 0 once the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
        return int(line.split()[1])

    def terminate(self, timeout_s: float = 60) -> int | None:
        """SIGTERM and wait; the exit code, or None if it was still running after ``timeout_s``."""
        self.signalled.append("term")
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int:
        self.signalled.append("kill")
        self.proc.kill()
        return self.proc.wait(timeout=30)

    def wait_exit(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop_quietly(self) -> None:
        """Teardown: SIGKILL to its process group (its own session: the worker and any children it
        started), since what a stop does is checked where a test asks for it, not here."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass
class Fleet:
    """Starts workers on one broker and topics; remembers them all so teardown stops them."""

    broker: str
    topics: Topics
    checkpoint: Path
    home: Path
    workers: list[Worker] = field(default_factory=list)

    def command(self, faults: Sequence[str], args: Sequence[str], web_port: int) -> list[str]:
        t = self.topics
        return [
            sys.executable, "-m", "tests.faults.fault_worker", *faults, "--",
            "--brokers", self.broker,
            "--input-topic", t.input, "--output-topic", t.output, "--dlq-topic", t.dlq,
            "--group-id", t.group,
            "--checkpoint", str(self.checkpoint),
            "--home", str(self.home / "home"),
            "--web-port", str(web_port), "--web-host", "127.0.0.1",
            "--session-timeout-s", "6",
            *args,
        ]  # fmt: skip

    def start(
        self,
        *args: str,
        faults: Sequence[str] = (),
        ready: bool = True,
        timeout_s: float = 90,
        web_port: int | None = None,
    ) -> Worker:
        """Start a worker with ``faults`` (fault_worker options) and ``args`` (worker options);
        wait for ``/readyz`` 200 unless ``ready`` is False."""
        port = web_port or free_port()
        name = f"worker-{len(self.workers)}"
        log = self.home / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.command(faults, args, port),
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own, for the teardown
            )
        worker = Worker(name, proc, port, log)
        self.workers.append(worker)
        if ready:
            worker.wait_ready(timeout_s)
        return worker

    def start_processes(
        self, *args: str, count: int = 2, faults: Sequence[str] = (), ready: bool = True
    ) -> tuple[Worker, tuple[int, ...]]:
        """``--processes count`` with ``args``, on consecutive free ports; once every worker is
        ready (unless not ``ready``): the parent and their ports."""
        parent = self.start(
            "--processes", str(count), *args, faults=faults, ready=False, web_port=free_ports(count)
        )  # fmt: skip
        ports = tuple(range(parent.web_port, parent.web_port + count))
        if ready:
            parent.wait_ports_ready(ports)
        return parent, ports

    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def unexpected_exits(self) -> list[str]:
        """Workers that ended on their own, or with a code other than 0 after SIGTERM."""
        bad = []
        for w in self.workers:
            rc = w.proc.poll()
            if rc is None or "kill" in w.signalled:
                continue
            if "term" not in w.signalled or rc != 0:
                bad.append(f"{w.name} exited with {rc} (signalled: {w.signalled or 'nothing'})")
        return bad

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop_quietly()


class ReadyzPoller:
    """Samples a worker's ``/readyz`` every ``every_s`` in a thread: [(seconds, status, body)]."""

    def __init__(self, port: int, every_s: float = 0.25) -> None:
        self.port, self.every_s = port, every_s
        self.samples: list[tuple[float, int, dict[str, Any] | None]] = []
        self.started = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            status, body = readyz(self.port)
            self.samples.append((time.monotonic() - self.started, status, body))
            self.done.wait(self.every_s)

    def between(self, start: float, end: float) -> list[tuple[float, int, dict[str, Any] | None]]:
        return [s for s in self.samples if start <= s[0] <= end]

    def now(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> ReadyzPoller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def children(pid: int, timeout_s: float = 60, count: int = 2) -> list[psutil.Process]:
    """The first ``count`` child processes of ``pid`` (a ``--processes`` parent's workers)."""
    deadline = time.monotonic() + timeout_s
    while len(kids := psutil.Process(pid).children()) < count:
        assert time.monotonic() < deadline, f"the parent started {len(kids)} of {count} children"
        time.sleep(0.2)
    return kids


@contextlib.contextmanager
def frozen(dev: DevBroker) -> Iterator[None]:
    """The broker process stopped (SIGSTOP) inside the block: connections stay open, nothing
    answers, and nothing is lost; SIGCONT on the way out, whatever happens."""
    assert dev.process is not None
    os.kill(dev.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(dev.process.pid, signal.SIGCONT)
