"""The start deadline (``worker/start_deadline.py``): a block that hangs past it ends the process
with exit 1 and every thread's stack, whether the hang lets Python threads run or holds the GIL.

Each case runs in its own interpreter: the deadline ends the whole process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from worker.start_deadline import start_deadline

PRELUDE = """
import logging, time
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
import worker.start_deadline as sd
sd.BACKSTOP_S = 1.0
"""


def run(body: str, timeout_s: float = 60) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    return done.returncode, done.stderr, time.monotonic() - started


def test_a_hang_that_lets_python_run_ends_with_a_clear_line_the_stacks_and_exit_1() -> None:
    code, err, took = run("""
        def hang_here():
            time.sleep(60)

        with sd.start_deadline(1.0, "loading and warming up the model"):
            hang_here()
        print("not reached")
    """)
    assert code == 1, err
    assert took < 30, f"the deadline of 1 s ended the process only after {took:.0f} s"
    assert "loading and warming up the model did not finish within 1 s (--start-timeout-s): exiting 1" in err
    assert "in hang_here" in err and "Current thread" in err, err  # every thread's stack, the hang's too
    assert "Timeout (" not in err, "the backstop fired though the watcher could run"


def test_a_hang_that_holds_the_gil_is_ended_by_the_backstop() -> None:
    code, err, took = run("""
        import ctypes

        def hang_here():
            ctypes.PyDLL(None).sleep(60)  # libc sleep, the GIL held throughout

        with sd.start_deadline(1.0, "loading"):
            hang_here()
    """)
    assert code == 1, err
    assert took < 30, f"the deadline of 1 s ended the process only after {took:.0f} s"
    assert "Timeout (0:00:02)!" in err and "in hang_here" in err, err
    # no Python thread ran: the watcher's line could not be written
    assert "did not finish" not in err, err


def test_the_stacks_reach_stderr_when_sys_stderr_was_replaced_during_the_load() -> None:
    code, err, _ = run("""
        import contextlib, io

        def hang_here():
            time.sleep(60)

        with sd.start_deadline(1.0, "loading"):
            with contextlib.redirect_stderr(io.StringIO()):  # as loaders that hide output do
                hang_here()
    """)
    assert code == 1, err
    assert "did not finish within 1 s" in err and "in hang_here" in err, err
    assert "Timeout (" not in err, "the watcher died and left it to the backstop"


def test_a_block_that_ends_in_time_cancels_both_watchers() -> None:
    code, err, _ = run("""
        with sd.start_deadline(1.0, "loading"):
            time.sleep(0.2)
        time.sleep(3.0)  # past the deadline and the backstop: neither fires
        print("still here")
    """)
    assert code == 0, err
    assert "did not finish" not in err and "Timeout (" not in err, err


def test_a_block_that_raises_cancels_both_watchers() -> None:
    code, err, _ = run("""
        try:
            with sd.start_deadline(1.0, "loading"):
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        time.sleep(3.0)
    """)
    assert code == 0, err
    assert "did not finish" not in err and "Timeout (" not in err, err


def test_zero_means_no_deadline() -> None:
    with start_deadline(0, "loading"):
        names = {t.name for t in threading.enumerate()}
    assert "start-deadline" not in names
