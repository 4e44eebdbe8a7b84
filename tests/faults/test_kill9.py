"""kill -9 of a saturated worker at random moments, a restart after each: nothing is lost.

Offsets are committed only after results are acknowledged, so a crash can only repeat work:
at most the batches in flight (``max_in_flight``), the one being admitted, and those that
finished while the last commit was on its way, i.e. ``(max_in_flight + 2) × batch_size`` per kill.

The kill moments rotate between three points of a batch's life, judged from what the ledger's
independent reader sees: *inference* (a random time after outputs were seen: with the model
slowed and every slot busy, the model thread is almost always mid-call), *publish* (as soon as
new outputs appear: a batch was just acknowledged, its commit is being sent) and *commit* (a few
milliseconds later, around the commit's round trip).
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.faults.conftest import Sizes
from tests.faults.harness import Fleet
from tests.faults.ledger import Ledger, reviews

pytestmark = [pytest.mark.faults, pytest.mark.integration]
BATCH, IN_FLIGHT, DELAY_S = 8, 2, "0.05"
MOMENTS = ("inference", "publish", "commit")


def kill_at(moment: str, ledger: Ledger, rng: random.Random) -> None:
    """Return at ``moment`` of a batch's life (see the module docstring)."""
    seen = ledger.outputs()
    ledger.wait_outputs(seen + 1, timeout_s=60)
    if moment == "inference":
        time.sleep(rng.uniform(0.2, 1.5))
    elif moment == "commit":
        time.sleep(rng.uniform(0.002, 0.03))


def test_kill9_at_random_moments_loses_nothing(fleet: Fleet, ledger: Ledger, sizes: Sizes) -> None:
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(1 << 30))  # to replay a failure
    rng = random.Random(seed)
    n = sizes.kill_backlog
    ledger.produce(reviews(n, "k"))
    args = ("--batch-size", str(BATCH), "--max-in-flight", str(IN_FLIGHT))
    worker = fleet.start(*args, faults=("--delay-s", DELAY_S))
    at_kill: list[int] = []
    for i in range(sizes.kills):
        before = ledger.outputs()
        ledger.wait_outputs(before + rng.randint(20, 150), timeout_s=60)
        kill_at(MOMENTS[i % len(MOMENTS)], ledger, rng)
        assert worker.kill() == -9
        at_kill.append(ledger.outputs())
        assert at_kill[-1] < n, f"kill {i} came after the backlog was done (seed {seed}): not mid-stream"
        worker = fleet.start(*args, faults=("--delay-s", DELAY_S))
    assert all(b > a for a, b in zip([0, *at_kill], at_kill, strict=False)), (
        f"every worker made progress before its kill: outputs at each kill {at_kill}"
    )

    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"kill -9 ×{sizes.kills} (seed {seed}), outputs at each kill {at_kill}: {report.summary}")
    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]} (seed {seed})"
    bound = sizes.kills * (IN_FLIGHT + 2) * BATCH
    assert report.duplicates <= bound, f"{report.summary}; at most {bound} repeats expected (seed {seed})"
    assert report.dead_letters == 0 and report.unknown == 0, report.summary
    assert worker.alive() and not worker.crashed_lines(), worker.tail()
