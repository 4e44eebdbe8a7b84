"""SIGTERM at every stage of a worker's life exits 0, and nothing is lost.

One stream, one group, one worker after another: SIGTERM while the model loads (held there by
``--load-delay-s``), during the group join (listening, /readyz not yet 200: the dev broker holds
a new group's first join for half the session timeout), assigned and idle (nothing produced
yet), and mid-batch under load (a backlog, a slowed model, batches in flight). A last worker
drains the backlog, and the ledger must hold every input exactly once: a clean stop hands over
without repeats. The stages run in one test because each costs a worker start (~10 s here);
every stage's exit code is collected before the asserts, so one failure does not hide another.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Sizes
from tests.faults.harness import Fleet
from tests.faults.ledger import Ledger, reviews

pytestmark = [pytest.mark.faults, pytest.mark.integration]
SATURATED = ("--batch-size", "8", "--max-in-flight", "2")


def test_sigterm_at_every_stage_exits_0_and_loses_nothing(fleet: Fleet, ledger: Ledger, sizes: Sizes) -> None:
    exits: dict[str, int | None] = {}

    # the loading and the joining worker start together: they share no state before the join
    loading = fleet.start(*SATURATED, faults=("--load-delay-s", "120"), ready=False)
    joining = fleet.start(*SATURATED, ready=False)
    loading.wait_log("loading the model")
    exits["loading"] = loading.terminate(timeout_s=30)
    deadline = time.monotonic() + 60
    while (state := joining.readyz())[0] == 0:  # not listening yet
        assert joining.alive() and time.monotonic() < deadline, joining.tail()
        time.sleep(0.02)
    exits["joining"] = joining.terminate(timeout_s=30)
    assert state[0] == 503 and state[1] is not None and not state[1]["assigned"], (
        f"the SIGTERM must land during the join: /readyz said {state}"
    )

    idle = fleet.start(*SATURATED)
    time.sleep(1)
    exits["idle"] = idle.terminate(timeout_s=30)

    n = sizes.stage_backlog
    ledger.produce(reviews(n, "t"))
    busy = fleet.start(*SATURATED, faults=("--delay-s", "0.05"))
    ledger.wait_outputs(50, timeout_s=60)
    _, body = busy.readyz()
    exits["mid-batch"] = busy.terminate(timeout_s=60)
    stopped_at = ledger.outputs()
    assert body is not None and body["oldest_batch_s"] > 0, f"no batch in flight at the SIGTERM: {body}"
    assert stopped_at < n, "the SIGTERM came after the backlog was done: not under load"

    fleet.start(*SATURATED)  # unslowed: drains the rest
    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"SIGTERM stages {exits}, the mid-batch stop at {stopped_at} outputs: {report.summary}")
    logs = [w.tail(1500) for w, rc in zip((loading, joining, idle, busy), exits.values(), strict=True) if rc]
    assert exits == dict.fromkeys(exits, 0), "\n".join([f"exit codes by stage: {exits}", *logs])
    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    assert report.duplicates == 0, f"{report.summary}: a clean stop repeats nothing"
    assert report.dead_letters == 0 and report.unknown == 0, report.summary
