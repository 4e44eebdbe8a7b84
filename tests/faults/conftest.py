"""Fixtures of the fault-injection suite: sizes (``--quick``/``--long``), ledgers, worker fleets.

Every scenario runs the worker saturated: a backlog produced up front and a model slowed by
``--delay-s``, so kills, rebalances and outages land while batches are in flight and waiting
for slots. The quick sizes keep the whole suite within about 6 minutes on a 2-core machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.faults.harness import Fleet
from tests.faults.ledger import Ledger, Topics


@dataclass(frozen=True)
class Sizes:
    long: bool
    kills: int  # kill -9 of a saturated worker, each followed by a restart
    kill_backlog: int
    rebalance_cycles: int  # each: a worker joins, one leaves by SIGTERM, one is killed -9
    rebalance_backlog: int
    processes_backlog: int
    stage_backlog: int  # SIGTERM at each stage of a worker's life
    restart_down_s: float  # the broker is gone, then a new one (empty) on the same port
    freeze_s: float  # the broker is SIGSTOPped: over the producer's 40 s request timeout
    outage_backlog: int
    model_backlog: int
    poison_rounds: int  # the poison corpus, this many times, interleaved with good reviews
    poison_good: int  # good reviews per round
    drain_s: float  # how long the ledger waits for every input to be accounted for


QUICK = Sizes(
    long=False, kills=3, kill_backlog=1000, rebalance_cycles=1, rebalance_backlog=4000,
    processes_backlog=10000, stage_backlog=800, restart_down_s=10, freeze_s=45, outage_backlog=800,
    model_backlog=300, poison_rounds=1, poison_good=300, drain_s=120,
)  # fmt: skip
LONG = Sizes(
    long=True, kills=20, kill_backlog=8000, rebalance_cycles=5, rebalance_backlog=60000,
    processes_backlog=100000, stage_backlog=5000, restart_down_s=60, freeze_s=180,
    outage_backlog=5000, model_backlog=3000, poison_rounds=5, poison_good=2000, drain_s=1200,
)  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long sizes take longer than the suite's default 600 s timeout per test."""
    if config.getoption("long"):
        for item in items:
            if "faults" in item.keywords:
                item.add_marker(pytest.mark.timeout(3600))


@pytest.fixture
def sizes(request: pytest.FixtureRequest) -> Sizes:
    return LONG if request.config.getoption("long") else QUICK


@pytest.fixture
def fault_topics(topics: dict[str, str]) -> Topics:
    return Topics(**topics)


async def create_topics(
    brokers: str, topics: Topics, *, partitions: int, configs: Mapping[str, Mapping[str, str]] | None = None
) -> None:
    """The test's topics, created before any client could auto-create them (``configs``: per topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers, request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, partitions, 1, topic_configs=dict((configs or {}).get(name, {})))
                for name in (topics.input, topics.output, topics.dlq)
            ]
        )
    finally:
        await admin.close()


LedgerFactory = Callable[..., Ledger]
FleetFactory = Callable[[str, Topics], Fleet]


@pytest.fixture
def open_ledger() -> Iterator[LedgerFactory]:
    """``open_ledger(brokers, topics, partitions=4, configs=None)``: topics created, ledger open."""
    ledgers: list[Ledger] = []

    def make(
        brokers: str,
        topics: Topics,
        *,
        partitions: int = 4,
        configs: Mapping[str, Mapping[str, str]] | None = None,
        create: bool = True,
    ) -> Ledger:
        if create:
            asyncio.run(create_topics(brokers, topics, partitions=partitions, configs=configs))
        ledger = Ledger(brokers, topics)
        ledgers.append(ledger)
        return ledger

    yield make
    for ledger in ledgers:
        ledger.close()


@pytest.fixture
def make_fleet(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[FleetFactory]:
    """``make_fleet(brokers, topics)``: workers on them, all stopped after the test."""
    fleets: list[Fleet] = []

    def make(brokers: str, topics: Topics) -> Fleet:
        fleet = Fleet(brokers, topics, tiny_checkpoint, tmp_path / f"fleet-{len(fleets)}")
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop_all()


@pytest.fixture
def fleet(broker: str, fault_topics: Topics, make_fleet: FleetFactory) -> Fleet:
    """Workers on the session's dev broker and this test's topics."""
    return make_fleet(broker, fault_topics)


@pytest.fixture
def ledger(broker: str, fault_topics: Topics, open_ledger: LedgerFactory) -> Ledger:
    """A ledger on the session's dev broker; the test's topics created with 4 partitions."""
    return open_ledger(broker, fault_topics)
