"""``sentiment worker --processes N``: N worker processes on one machine, one consumer group.

Kafka's group protocol does the sharing: each process is an ordinary ``sentiment worker`` with
the same arguments, so the partitions are split among them exactly as among workers on several
machines. This parent only starts them, gives each its own web port, forwards SIGTERM/SIGINT,
and ends when they end: with 0 when all stopped cleanly, else with the first failure's code
(after asking the others to stop, so each finishes and commits its batch in hand).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)


def child_command(args: Sequence[str], *, checkpoint: Path, web_port: int) -> list[str]:
    """The parent's own ``worker`` arguments with one process, its port and a resolved checkpoint.

    Later options win in click, so appending overrides what ``args`` said.
    """
    return [
        sys.executable, "-m", "worker", "worker", *args,
        "--processes", "1", "--web-port", str(web_port), "--checkpoint", str(checkpoint),
    ]  # fmt: skip


def run_processes(args: Sequence[str], *, count: int, checkpoint: Path, first_port: int) -> int:
    """Start ``count`` workers and supervise them until all have exited; the exit code."""
    children = [
        subprocess.Popen(child_command(args, checkpoint=checkpoint, web_port=first_port + i))
        for i in range(count)
    ]
    log.info("started %d worker processes (pids %s)", count, ", ".join(str(c.pid) for c in children))
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        while any(c.poll() is None for c in children):
            for child in children:
                rc = child.poll()
                if rc not in (None, 0) and code == 0:
                    code = rc
                    if not stopping:
                        log.error("worker process %d exited with %d; stopping the others", child.pid, rc)
                        stop(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for child in children:
        if child.returncode not in (0, None) and code == 0:
            code = child.returncode
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
