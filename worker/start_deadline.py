"""A deadline on the worker's start: a model load that hangs ends the process, with every stack.

A worker that never finishes loading its model (CUDA initialisation on a failing GPU, a
checkpoint on a stalled network disk, a compile that never returns) never serves ``/healthz``:
nothing that restarts workers on a failed probe sees it as failing (``--processes`` treats a
port that refuses as one still loading; so does a kubelet during its startup probe, for as long
as that allows). The process holds its slot, or its GPU, for good. Past the deadline the worker
exits 1 instead, which every supervisor restarts (``--processes``, Kubernetes, systemd), after
printing where each thread was: the hang's site, for whoever reads the log.

Two watchers, because a call that hangs in C may hold the GIL (a driver call that never
returns), and then no Python thread runs: a thread that logs one clear line, prints the stacks
and exits; and, ``BACKSTOP_S`` later, faulthandler's own watchdog (a C thread, no GIL needed),
which prints ``Timeout (h:mm:ss)!`` and the stacks and exits 1 itself. Both write to file
descriptor 2, whatever ``sys.stderr`` has been replaced with meanwhile.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

EXIT_CODE = 1  # what faulthandler's watchdog exits with: the Python watcher says the same
BACKSTOP_S = 10.0  # faulthandler's watchdog fires this much after the deadline
STDERR_FD = 2


@contextmanager
def start_deadline(seconds: float, what: str) -> Iterator[None]:
    """Exit the process with ``EXIT_CODE`` (and every thread's stack on stderr) if the block has
    not ended ``seconds`` after it began; ``seconds`` 0: no deadline. ``what`` names the block
    in the log line."""
    if seconds <= 0:
        yield
        return
    ended = threading.Event()
    deciding = threading.Lock()  # the block's end and the watcher's verdict: one or the other

    def watch() -> None:
        if ended.wait(seconds):
            return
        with deciding:  # held until the exit: a block ending now cannot slip past the verdict
            if ended.is_set():
                return
            try:
                log.error(
                    "%s did not finish within %.0f s (--start-timeout-s): exiting %d so that the "
                    "worker is restarted; every thread's stack follows on stderr", what, seconds, EXIT_CODE,
                )  # fmt: skip
                faulthandler.dump_traceback(file=STDERR_FD, all_threads=True)
            finally:
                os._exit(EXIT_CODE)

    watcher = threading.Thread(target=watch, name="start-deadline", daemon=True)
    try:
        watcher.start()
        faulthandler.dump_traceback_later(seconds + BACKSTOP_S, exit=True, file=STDERR_FD)
        yield
    finally:
        with deciding:
            ended.set()
        faulthandler.cancel_dump_traceback_later()
