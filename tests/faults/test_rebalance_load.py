"""Rebalances under load: workers join, leave (SIGTERM) and die (kill -9) while batches wait for slots.

Saturated (batch 8, two batches in flight, a slowed model, a backlog far larger than the
workers can take), so every revocation finds batches in flight and records gathered but not yet
admitted. A revoked worker finishes and commits what it admitted and drops the rest for the next
owner; a clean hand-over may still repeat what was in flight when a commit is refused because
the group moved on, so each clean rebalance is allowed ``(max_in_flight + 1) × batch`` repeats
and each kill ``(max_in_flight + 2) × batch`` (see test_kill9).
"""

from __future__ import annotations

import psutil
import pytest

from tests.faults.conftest import FleetFactory, LedgerFactory, Sizes
from tests.faults.harness import Fleet, children
from tests.faults.ledger import Ledger, Topics, reviews

pytestmark = [pytest.mark.faults, pytest.mark.integration]
BATCH, IN_FLIGHT = 8, 2
SATURATED = ("--batch-size", str(BATCH), "--max-in-flight", str(IN_FLIGHT))
SLOW = ("--delay-s", "0.1")


def mid_stream(ledger: Ledger, n: int, what: str) -> None:
    assert ledger.outputs() < n, f"{what} came after the backlog was done: not under load"


def test_workers_joining_leaving_and_dying_under_load(fleet: Fleet, ledger: Ledger, sizes: Sizes) -> None:
    n = sizes.rebalance_backlog
    ledger.produce(reviews(n, "r"))
    first = [fleet.start(*SATURATED, faults=SLOW, ready=False) for _ in range(2)]
    for w in first:
        w.wait_ready()
    rebalances = kills = 0
    events: list[str] = []
    for cycle in range(sizes.rebalance_cycles):
        joiner = fleet.start(*SATURATED, faults=SLOW)  # ready: it holds partitions after the rebalance
        rebalances += 1
        events.append(f"join {joiner.name} at {ledger.outputs()}")
        mid_stream(ledger, n, f"cycle {cycle}: the join")
        running = fleet.running()
        assert len(running) >= 3, f"workers ended during the join: {fleet.unexpected_exits()}\n" + "\n".join(
            w.tail(1500) for w in fleet.workers if not w.alive()
        )
        leaver, victim = running[:2]
        events.append(f"SIGTERM {leaver.name} at {ledger.outputs()}")
        rc = leaver.terminate()
        assert rc == 0, f"a worker SIGTERMed under load exited with {rc}\n{leaver.tail()}"
        rebalances += 1
        mid_stream(ledger, n, f"cycle {cycle}: the leave")
        ledger.wait_outputs(ledger.outputs() + 50, timeout_s=60)  # the survivors took over
        events.append(f"kill -9 {victim.name} at {ledger.outputs()}")
        victim.kill()
        kills += 1
        mid_stream(ledger, n, f"cycle {cycle}: the kill")
        replacement = fleet.start(*SATURATED, faults=SLOW)
        rebalances += 1
        events.append(f"join {replacement.name} at {ledger.outputs()}")

    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"rebalances under load: {'; '.join(events)}: {report.summary}")
    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    bound = kills * (IN_FLIGHT + 2) * BATCH + rebalances * (IN_FLIGHT + 1) * BATCH
    assert report.duplicates <= bound, f"{report.summary}; at most {bound} repeats expected"
    assert report.dead_letters == 0 and report.unknown == 0, report.summary
    survivors = fleet.running()
    assert len(survivors) >= 2, "the survivors are still running"
    for w in survivors:
        assert not w.crashed_lines(), w.tail()
    assert not fleet.unexpected_exits(), fleet.unexpected_exits()


def test_processes_2_one_child_killed_loses_nothing_and_the_rest_keeps_running(
    broker: str,
    fault_topics: Topics,
    make_fleet: FleetFactory,
    open_ledger: LedgerFactory,
    sizes: Sizes,
) -> None:
    """``--processes 2`` (the real CLI, an unslowed tiny model, a big backlog): one child is killed
    -9 mid-stream. The parent must not take the other child down with it: both keep running (the
    parent may start a replacement), and every input gets its result."""
    n = sizes.processes_backlog
    ledger = open_ledger(broker, fault_topics)
    ledger.produce(reviews(n, "p"))
    fleet = make_fleet(broker, fault_topics)
    parent, _ = fleet.start_processes("--batch-size", "16")
    victim, other = children(parent.pid)
    ledger.wait_outputs(n // 5, timeout_s=sizes.drain_s)
    victim.kill()
    at_kill = ledger.outputs()
    assert at_kill < n, "the kill came after the backlog was done: not mid-stream"

    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"--processes 2, child killed at {at_kill} outputs: {report.summary}")
    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    assert report.duplicates <= (4 + 2) * 16, report.summary  # the default --max-in-flight is 4
    assert parent.alive(), f"the parent exited with {parent.proc.returncode}\n{parent.tail()}"
    assert other.is_running() and other.status() != psutil.STATUS_ZOMBIE, "the other child stopped"
