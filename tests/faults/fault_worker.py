"""The real ``sentiment worker`` CLI, with faults injected into the model's forward pass.

    python -m tests.faults.fault_worker [FAULTS] -- [sentiment worker options]

``models.engine.classifier.load_classifier`` is patched so the engine it returns has its ``forward``
wrapped: every model call goes through ``forward``, including the engine's own split-on-OOM
retries and its health probe, so the faults reach exactly the code paths a real device fault
would. Everything else (CLI, settings, app, Kafka) is the code under test, unchanged.

``--load-hang-s`` hangs model loading itself, in a C call that holds the GIL (the start
deadline's case). The stream's faults are armed once ``warm_up`` has returned, so ``--hang-at N`` and
``--broken-after N`` count the model calls made for the stream (and health probes), not the
warm-up's. With ``--processes N`` the children are plain ``sentiment worker`` processes and the
faults apply to this process only, unless ``--in-children``: then each child is a fault worker
with the same faults (``--hang-once-file`` makes a hang happen in one process of them all).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


def parse_faults(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fault_worker", description=__doc__)
    parser.add_argument("--delay-s", type=float, default=0.0, help="sleep per forward call (saturation)")
    parser.add_argument("--load-delay-s", type=float, default=0.0, help="sleep inside model loading")
    parser.add_argument("--oom-over", type=int, default=None, help="CUDA OOM when a call gets > K texts")
    parser.add_argument("--fail-marker", default=None, help="RuntimeError when a text contains this")
    parser.add_argument("--broken-after", type=int, default=None, help="every call after the Nth fails")
    parser.add_argument("--hang-s", type=float, default=0.0, help="how long the --hang-at call sleeps")
    parser.add_argument("--hang-at", type=int, default=None, help="the Nth call sleeps --hang-s")
    parser.add_argument("--hang-once-file", default=None, help="hang only where this file is created")
    parser.add_argument(
        "--load-hang-s", type=float, default=0.0,
        help="model loading hangs this long in a C call holding the GIL (a driver call that never returns)",
    )  # fmt: skip
    parser.add_argument("--in-children", action="store_true", help="--processes children get the faults")
    return parser.parse_args(list(argv))


def say(message: str) -> None:
    """A line in the worker's log (its stderr goes there) that the tests wait for."""
    print(f"fault_worker: {message}", file=sys.stderr, flush=True)


def first_to_create(path: str | None) -> bool:
    """True in the one process (of all that try) that creates ``path``; True when there is none."""
    if path is None:
        return True
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def faults_in_children(fault_argv: Sequence[str]) -> None:
    """``--processes N`` children run as fault workers with ``fault_argv``: the parent's
    ``worker.processes.child_command`` is wrapped (the command it builds is otherwise the same)."""
    import worker.processes

    build = worker.processes.child_command
    passed = [a for a in fault_argv if a != "--in-children"]

    def child_command(*args: Any, **kwargs: Any) -> list[str]:
        command = build(*args, **kwargs)
        assert command[1:4] == ["-m", "worker", "worker"], command
        return [command[0], "-m", "tests.faults.fault_worker", *passed, "--", *command[4:]]

    worker.processes.child_command = child_command


def hang_holding_the_gil(seconds: float) -> None:
    """libc's ``sleep`` called through ``ctypes.PyDLL``, which keeps the GIL: no other Python
    thread runs meanwhile, nor any Python signal handler, as in a driver call that never returns."""
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))


class Faults:
    """The faulty ``forward`` and the count of calls it has seen since arming."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.calls = 0
        self.armed = False
        self.lock = threading.Lock()

    def wrap(self, engine: Any) -> None:
        forward: Callable[[Sequence[Sequence[int]]], Any] = engine.forward
        warm_up: Callable[[], float] = engine.warm_up
        opts = self.opts

        def faulty_forward(seqs: Sequence[Sequence[int]]) -> Any:
            with self.lock:
                if not self.armed:
                    return forward(seqs)
                self.calls += 1
                n = self.calls
            if opts.delay_s:
                time.sleep(opts.delay_s)
            if opts.hang_at == n and first_to_create(opts.hang_once_file):
                say(f"call {n} hangs for {opts.hang_s} s (pid {os.getpid()})")
                time.sleep(opts.hang_s)
                say(f"call {n} resumes")
            if opts.broken_after is not None and n > opts.broken_after:
                raise RuntimeError(ILLEGAL_ACCESS)
            if opts.oom_over is not None and len(seqs) > opts.oom_over:
                import torch

                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: {len(seqs)} texts)")
            if opts.fail_marker and any(opts.fail_marker in engine.tokenizer.decode(list(s)) for s in seqs):
                raise RuntimeError(f"injected failure: a text contains {opts.fail_marker!r}")
            return forward(seqs)

        def arming_warm_up() -> float:
            try:
                return warm_up()
            finally:
                self.armed = True
                say("faults armed")

        engine.forward = faulty_forward
        engine.warm_up = arming_warm_up


def install(opts: argparse.Namespace) -> Faults:
    """Patch ``models.engine.classifier.load_classifier`` (``run_worker`` imports it when it runs)."""
    import models.engine.classifier

    faults = Faults(opts)
    load = models.engine.classifier.load_classifier

    def faulty_load(*args: Any, **kwargs: Any) -> Any:
        if opts.load_delay_s:
            say(f"loading the model (sleeping {opts.load_delay_s} s)")
            time.sleep(opts.load_delay_s)
        if opts.load_hang_s and first_to_create(opts.hang_once_file):
            say(f"model loading hangs for {opts.load_hang_s:g} s, holding the GIL (pid {os.getpid()})")
            hang_holding_the_gil(opts.load_hang_s)
        engine = load(*args, **kwargs)
        faults.wrap(engine)
        return engine

    models.engine.classifier.load_classifier = faulty_load
    return faults


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts = parse_faults(argv[:split])
    install(opts)
    if opts.in_children:
        faults_in_children(argv[:split])
    sys.argv = ["sentiment", "worker", *argv[split + 1 :]]
    import worker.commands.cli

    say(f"running {worker.commands.cli.__file__}")
    worker.commands.cli.main()


if __name__ == "__main__":
    main()
