"""Topic creation checks each topic's result, reads the brokers' replication default, and
retries only connection failures (a fake admin client stands in for the broker)."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import ClusterAuthorizationFailedError, KafkaConnectionError

from schemas.errors import ConfigError
from worker.kafka import admin
from worker.kafka.admin import BrokerError, create_topics, parse_topic_config

TOPICS = ["reviews", "reviews.sentiment", "reviews.dlq"]


@pytest.mark.parametrize(("text", "expected"), [
    (None, {}),
    ("", {}),
    ("max.message.bytes=2000", {"max.message.bytes": "2000"}),
    (" retention.ms = 60000 , min.insync.replicas=2,", {"retention.ms": "60000", "min.insync.replicas": "2"}),
    ("cleanup.policy=compact,delete=x=y", {"cleanup.policy": "compact", "delete": "x=y"}),
])  # fmt: skip
def test_topic_config_is_parsed(text: str | None, expected: dict[str, str]) -> None:
    assert parse_topic_config(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("max.message.bytes", "'max.message.bytes' is not key=value"),
    ("a=1,=2", "'=2' is not key=value"),
    ("a=", "'a=' is not key=value"),
    ("a=1,a=2", "a is given twice"),
])  # fmt: skip
def test_a_malformed_topic_config_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^--topic-config: {message}$"):
        parse_topic_config(text)


@dataclass
class Cluster:
    """What the fake broker holds and how it answers."""

    existing: set[str] = field(default_factory=set)
    errors: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # topic -> code, message
    default_replication: str | None = "3"
    fail_start: list[Exception] = field(default_factory=list)  # raised by successive start() calls
    describe_error: Exception | None = None
    admins: list[FakeAdmin] = field(default_factory=list)

    def created(self) -> list[Any]:
        return [t for admin in self.admins for t in admin.created]


class FakeAdmin:
    """The admin client calls ``create_topics`` makes, answered from a :class:`Cluster`."""

    def __init__(self, cluster: Cluster, **kwargs: Any) -> None:
        self.cluster, self.kwargs = cluster, kwargs
        self.created: list[Any] = []
        self.closed = False
        cluster.admins.append(self)

    async def start(self) -> None:
        if self.cluster.fail_start:
            raise self.cluster.fail_start.pop(0)

    async def close(self) -> None:
        self.closed = True

    async def list_topics(self) -> list[str]:
        return sorted(self.cluster.existing)

    async def describe_cluster(self) -> dict[str, Any]:
        return {"controller_id": 7, "brokers": [{"node_id": 7}]}

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        if self.cluster.describe_error is not None:
            raise self.cluster.describe_error
        [resource] = resources
        assert (int(resource.resource_type), resource.name) == (4, "7")  # BROKER, the controller
        value = self.cluster.default_replication
        entries: list[tuple[Any, ...]] = (
            [] if value is None else [("default.replication.factor", value, True, 5, False, [])]
        )
        return [SimpleNamespace(resources=[(0, None, 4, "7", entries)])]

    async def create_topics(self, topics: list[Any]) -> Any:
        self.created.extend(topics)
        errors = self.cluster.errors
        return SimpleNamespace(topic_errors=[(t.name, *errors.get(t.name, (0, None))) for t in topics])


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    cluster = Cluster()
    monkeypatch.setattr(admin, "AIOKafkaAdminClient", functools.partial(FakeAdmin, cluster))
    return cluster


def create(**kwargs: Any) -> None:
    kwargs.setdefault("partitions", 4)
    asyncio.run(create_topics("b:9092", TOPICS, timeout_s=5, **kwargs))


def test_a_refused_topic_names_the_topic_and_the_kafka_error_and_is_not_retried(kafka: Cluster) -> None:
    kafka.errors = {"reviews.sentiment": (38, "Replication factor: 3 larger than available brokers: 1.")}
    with pytest.raises(BrokerError) as info:
        create(replication_factor=3)
    assert str(info.value) == (
        "cannot create topic reviews.sentiment: InvalidReplicationFactorError: "
        "Replication factor: 3 larger than available brokers: 1."
    )
    assert len(kafka.admins) == 1 and kafka.admins[0].closed


def test_without_a_message_the_error_is_described_and_every_refusal_is_named(kafka: Cluster) -> None:
    kafka.errors = {"reviews": (40, None), "reviews.dlq": (40, "")}
    with pytest.raises(BrokerError, match=r"^cannot create topic reviews: InvalidConfigurationError: "
                                          r".+; reviews.dlq: InvalidConfigurationError: "):  # fmt: skip
        create(configs={"max.message.bytes": "nonsense"})


def test_a_topic_another_worker_just_created_is_fine(kafka: Cluster) -> None:
    kafka.errors = {"reviews": (36, "Topic 'reviews' already exists.")}
    create(replication_factor=1)  # no error: the race is lost harmlessly
    assert [t.name for t in kafka.created()] == TOPICS and len(kafka.admins) == 1  # asked once, no retry


def test_existing_topics_are_left_alone_and_the_others_get_partitions_replicas_and_configs(
    kafka: Cluster,
) -> None:
    kafka.existing = {"reviews"}
    create(partitions=6, replication_factor=2, configs={"max.message.bytes": "2000"})
    assert [(t.name, t.num_partitions, t.replication_factor, t.topic_configs) for t in kafka.created()] == [
        ("reviews.sentiment", 6, 2, {"max.message.bytes": "2000"}),
        ("reviews.dlq", 6, 2, {"max.message.bytes": "2000"}),
    ]


def test_nothing_is_asked_when_every_topic_exists(kafka: Cluster) -> None:
    kafka.existing = set(TOPICS)
    kafka.describe_error = AssertionError("no replication lookup needed")
    create()
    assert kafka.created() == []


def test_no_replication_factor_means_the_brokers_default(kafka: Cluster) -> None:
    create()
    assert {t.replication_factor for t in kafka.created()} == {3}


@pytest.mark.parametrize("problem", ["connection closed", "not returned"])
def test_an_unreadable_broker_default_gives_1_and_says_so(
    problem: str, caplog: pytest.LogCaptureFixture, kafka: Cluster
) -> None:
    if problem == "connection closed":
        kafka.describe_error = KafkaConnectionError("Connection at b:9092 closed")
    else:
        kafka.default_replication = None
    with caplog.at_level(logging.WARNING, logger="worker.kafka.admin"):
        create()
    assert {t.replication_factor for t in kafka.created()} == {1}
    [record] = caplog.records
    assert "cannot read the brokers' default.replication.factor" in record.getMessage()
    assert "replication factor 1" in record.getMessage()


def test_connection_failures_are_retried_while_the_broker_starts(kafka: Cluster) -> None:
    kafka.fail_start = [KafkaConnectionError("Unable to bootstrap"), OSError("refused")]
    create(replication_factor=1)
    assert len(kafka.admins) == 3 and len(kafka.created()) == 3
    assert all(admin.closed for admin in kafka.admins)


def test_other_failures_are_not_retried(kafka: Cluster) -> None:
    kafka.fail_start = [ClusterAuthorizationFailedError()]
    with pytest.raises(BrokerError, match="cannot create topics on b:9092: ClusterAuthorizationFailedError"):
        create(replication_factor=1)
    assert len(kafka.admins) == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"partitions": 0}, "partitions must be at least 1"),
    ({"replication_factor": 0}, "the replication factor must be at least 1"),
])  # fmt: skip
def test_impossible_counts_are_config_errors(kwargs: dict[str, int], message: str, kafka: Cluster) -> None:
    with pytest.raises(ConfigError, match=message):
        create(**kwargs)
