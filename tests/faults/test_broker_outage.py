"""The broker goes away under a saturated worker and comes back; each test has its own dev broker.

Two kinds of outage:

- *freeze*: the tansu process is SIGSTOPped, then SIGCONTed. Connections stay open and nothing
  answers; no data is lost, so the ledger is exact. The quick freeze (45 s) outlasts the
  producer's 40 s request timeout, so publishing fails and must be retried, not end the process.
- *restart*: tansu is stopped and a new one started on the same port. This scenario runs in a
  thread, beside the freeze (see ``restart_in_background``).

The worker must neither exit nor hang: /readyz says 503 while the broker is away and 200 again
after, and the work goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from aiokafka.partitioner import murmur2

from tests.faults.conftest import LONG, QUICK, FleetFactory, LedgerFactory, Sizes, create_topics
from tests.faults.harness import Fleet, ReadyzPoller, Worker, children, frozen
from tests.faults.ledger import Ledger, Message, Report, Sent, Topics, reviews
from worker.commands.dev_broker import DevBroker
from worker.ports import free_port

pytestmark = [pytest.mark.faults, pytest.mark.integration]
BATCH, IN_FLIGHT = 8, 2
SATURATED = ("--batch-size", str(BATCH), "--max-in-flight", str(IN_FLIGHT))
SLOW = ("--delay-s", "0.05")
RECOVERY_S = 90  # ready again after the broker is back: a rejoin, retries backed off ≤ 10 s


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[DevBroker]:
    """A dev broker of this test's own: the session's broker, shared by others, is never touched."""
    with DevBroker(free_port(), log_file=tmp_path / "broker.log") as dev:
        yield dev


def wait_ready_again(worker: Worker, timeout_s: float = RECOVERY_S) -> float:
    """Seconds until /readyz is 200 again; AssertionError if the worker exits or never recovers."""
    started = time.monotonic()
    while worker.readyz()[0] != 200:
        assert worker.alive(), f"the worker exited with {worker.proc.returncode}\n{worker.tail()}"
        assert time.monotonic() - started < timeout_s, f"not ready {timeout_s} s after\n{worker.tail()}"
        time.sleep(0.25)
    return time.monotonic() - started


@pytest.mark.usefixtures("restart_in_background")
def test_a_frozen_broker_loses_nothing(
    own_broker: DevBroker,
    fault_topics: Topics,
    make_fleet: FleetFactory,
    open_ledger: LedgerFactory,
    sizes: Sizes,
) -> None:
    n = sizes.outage_backlog
    ledger = open_ledger(own_broker.bootstrap, fault_topics)
    ledger.produce(reviews(n, "f"))
    worker = make_fleet(own_broker.bootstrap, fault_topics).start(*SATURATED, faults=SLOW)
    ledger.wait_outputs(100, timeout_s=60)
    with ReadyzPoller(worker.web_port) as poll:
        start = poll.now()
        with frozen(own_broker):
            at_freeze = ledger.outputs()
            time.sleep(sizes.freeze_s)
            end = poll.now()
        back_after = wait_ready_again(worker)
    during = poll.between(start, end)
    assert at_freeze < n, "the freeze came after the backlog was done: not under load"

    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"freeze {sizes.freeze_s} s at {at_freeze} outputs, ready again after {back_after:.1f} s: "
          f"{report.summary}")  # fmt: skip
    assert worker.alive(), f"the worker exited with {worker.proc.returncode}\n{worker.tail()}"
    assert any(status == 503 for _, status, _ in during), f"never 503 while frozen: {during[-3:]}"
    assert during[-1][1] == 503, f"/readyz at the end of the freeze: {during[-1]}"
    bodies = [body for _, _, body in during if body]
    assert any(b["broker"] is False for b in bodies), f"/readyz never said the broker is away: {bodies[-1:]}"
    # the freeze outlasts the producer's 40 s request timeout: sends failed and were retried
    assert "not acknowledged" in worker.log_text(), "publishing never failed: the freeze was too short"
    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    # the session expires during the freeze: like a crash, the batches in flight may repeat
    assert report.duplicates <= (IN_FLIGHT + 2) * BATCH, report.summary
    assert report.dead_letters == 0 and report.unknown == 0, report.summary
    assert not worker.crashed_lines(), worker.tail()


def test_processes_2_a_child_restarted_while_the_broker_is_away_waits_for_it(
    own_broker: DevBroker,
    fault_topics: Topics,
    make_fleet: FleetFactory,
    open_ledger: LedgerFactory,
    sizes: Sizes,
) -> None:
    """``--processes 2`` under load; the broker freezes and one child is killed -9 meanwhile (an
    OOM kill during an outage). Its restart finds no broker and exits 2: the parent must wait for
    the broker rather than count it as a crash (5 such restarts would stop the healthy child and
    end the parent), then start it again once the broker is back. Nothing is lost."""
    n = sizes.processes_backlog
    ledger = open_ledger(own_broker.bootstrap, fault_topics)
    ledger.produce(reviews(n, "w"))
    fleet = make_fleet(own_broker.bootstrap, fault_topics)
    parent, ports = fleet.start_processes("--batch-size", "16")
    victim, other = children(parent.pid)
    ledger.wait_outputs(n // 10, timeout_s=sizes.drain_s)
    with frozen(own_broker):
        at_freeze = ledger.outputs()
        victim.kill()
        # its restart (1 s on) imports torch, finds no broker within 5 s and exits 2; the parent's
        # own check agrees, so it waits
        parent.wait_log("the broker is away", timeout_s=120)
        time.sleep(2 * 5.0)  # two of the parent's checks: the child is not started again meanwhile
        assert len(psutil.Process(parent.pid).children()) == 1, "started again with the broker away"
    parent.wait_log("a broker answers again", timeout_s=60)
    parent.wait_ports_ready(ports, timeout_s=120)

    report = ledger.wait(timeout_s=sizes.drain_s)
    print(f"--processes 2, broker frozen and a child killed at {at_freeze} outputs: {report.summary}")
    assert at_freeze < n, "the freeze came after the backlog was done: not under load"
    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    # the kill, and the healthy child's session expiring in the freeze: batches in flight repeat
    assert report.duplicates <= 2 * (4 + 2) * 16, report.summary  # the default --max-in-flight is 4
    assert report.dead_letters == 0 and report.unknown == 0, report.summary
    assert other.is_running() and other.status() != psutil.STATUS_ZOMBIE, "the healthy child was stopped"
    log = parent.log_text()
    assert "restart 2 of" not in log and "stopping the others" not in log, parent.tail()
    assert parent.terminate() == 0, parent.tail()


def stored_twice(broker_log: Path, topic: str) -> set[int]:
    """Partitions of ``topic`` where the dev broker refused a produce with ``AlreadyExists`` for a
    record batch file: tansu 0.6 (memory storage) gave two concurrent produce requests the same
    offset, and the batches it stores after that overlap, so readers (aiokafka skips records below
    its position) never see some records the broker had acknowledged."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", broker_log.read_text(errors="replace"))
    pattern = rf"AlreadyExists \{{ path: \"[^\"]*/topics/{re.escape(topic)}/partitions/(\d+)/records/"
    return {int(n) for n in re.findall(pattern, text)}


def unreadable_lost(report: Report, output: str, broker_log: Path) -> None:
    """Fail for a lost input, unless every loss is on an output partition the dev broker itself
    reported storing over (:func:`stored_twice`): then the results were published and
    acknowledged but cannot be read back, a dev-broker defect, not the worker's, and the test is
    marked xfail with the evidence. A loss anywhere else fails as before."""
    conflicted = stored_twice(broker_log, output)
    partitions = 4  # every topic of the scenario; results are keyed by review id like the inputs

    def result_partition(sent: Sent) -> int | None:
        key = sent.message.key
        return None if key is None else (murmur2(key) & 0x7FFFFFFF) % partitions

    unexplained = [s for s in report.lost if result_partition(s) not in conflicted]
    assert not unexplained, f"{report.summary}; lost e.g. {unexplained[:5]}"
    pytest.xfail(
        f"dev broker: {len(report.lost)} acknowledged results unreadable on {output} partitions "
        f"{sorted(conflicted)}, where tansu logged AlreadyExists (overlapping batches); {report.summary}"
    )


def restart_scenario(checkpoint: Path, workdir: Path, sizes: Sizes) -> str:
    """The restart outage, start to end, with its own broker, topics, ledgers and worker; raises
    AssertionError on a failure, else returns a summary. See test_a_restarted_broker_is_survived."""
    topics = Topics(*(f"{name}-restart-{uuid.uuid4().hex[:8]}" for name in ("in", "out", "dlq", "group")))
    with contextlib.ExitStack() as stack:
        dev = stack.enter_context(DevBroker(free_port(), log_file=workdir / "broker.log"))
        brokers = dev.bootstrap
        asyncio.run(create_topics(brokers, topics, partitions=4))
        before = stack.enter_context(Ledger(brokers, topics))
        sent = before.produce(reviews(sizes.outage_backlog, "b"))
        fleet = Fleet(brokers, topics, checkpoint, workdir)
        stack.callback(fleet.stop_all)
        worker = fleet.start(*SATURATED, faults=SLOW)
        before.wait_outputs(100, timeout_s=60)
        with ReadyzPoller(worker.web_port) as poll:
            at_stop = before.outputs()
            before.close()
            start = poll.now()
            dev.stop()
            time.sleep(sizes.restart_down_s)
            end = poll.now()
            dev.start()
            asyncio.run(create_topics(brokers, topics, partitions=4))
            back_after = wait_ready_again(worker)
        assert at_stop < sizes.outage_backlog, "the restart came after the backlog was done: not under load"
        late = [s for s in poll.between(start, end) if s[0] >= (start + end) / 2]
        assert late and all(status == 503 for _, status, _ in late), (
            f"/readyz in the second half of the outage: {[s[:2] for s in late]}"
        )

        # The worker still holds offsets of the old log (it may even commit them to the new broker
        # while handing its partitions over): fill each partition up to the old log's end with
        # tombstones (dead letters, no model call) so the new inputs lie beyond any old offset.
        ends = {p: o + 1 for p, o in sorted((s.partition, s.offset) for s in sent)}  # the last wins
        after = stack.enter_context(Ledger(brokers, topics))
        filler = [Message(None, None, b"filler", partition=p) for p, end in ends.items() for _ in range(end)]
        after.produce(filler, record=False)
        after.produce(reviews(sizes.outage_backlog, "a"))
        report = after.wait(timeout_s=sizes.drain_s)
        if report.lost:
            unreadable_lost(report, topics.output, workdir / "broker.log")
        assert report.dead_letters == 0, report.summary
        assert worker.alive() and not worker.crashed_lines(), worker.tail()
    return (
        f"restart after {sizes.restart_down_s} s down, ready again after {back_after:.1f} s: {report.summary}"
    )


@pytest.fixture(scope="module")
def restart_in_background(
    request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[str]]:
    """The restart scenario, started in a thread (it has its own broker, topics and worker) so
    that it runs while the freeze test waits out its freeze: 40 s less for the quick suite."""
    sizes = LONG if request.config.getoption("long") else QUICK
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(restart_scenario, tiny_checkpoint, tmp_path_factory.mktemp("restart"), sizes)


def test_a_restarted_broker_is_survived(restart_in_background: Future[str]) -> None:
    """What can be checked when the broker restarts empty.

    The dev broker keeps everything in memory: the new tansu has no topics, no messages and no
    committed offsets. That is the dev broker's limit, not the worker's (a real Kafka keeps its
    log), so the inputs sent before the restart cannot be accounted for. What is checked: the
    worker neither exits nor hangs, /readyz is 503 while the broker is away and 200 after, and
    every input produced after the restart (the topics created again) gets a result.
    """
    print(restart_in_background.result())  # a hang is ended by pytest-timeout
