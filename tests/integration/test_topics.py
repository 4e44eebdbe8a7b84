"""On the dev broker: --topic-config reaches the topics this program creates, and topics that
already exist are left as they are."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.conftest import WorkerFactory
from worker.kafka.admin import create_topics, parse_topic_config

pytestmark = pytest.mark.integration


async def describe(broker: str, names: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    """Each topic's partition count and stored configs (DescribeConfigs)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        configs: dict[str, dict[str, str]] = {}
        for response in await admin.describe_configs(resources):
            for code, _message, _type, name, entries, *_ in response.resources:
                assert code == 0, (name, code)
                configs[name] = {entry[0]: entry[1] for entry in entries}
        return {name: (partitions[name], configs[name]) for name in names}
    finally:
        await admin.close()


def test_configs_land_on_new_topics_and_an_existing_topic_is_left_alone(
    broker: str, topics: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    existing, new = topics["input"], topics["output"]
    asyncio.run(create_topics(broker, [existing], partitions=2, replication_factor=1))
    configs = parse_topic_config("max.message.bytes=2000, retention.ms=60000")
    with caplog.at_level("WARNING", logger="worker.kafka.admin"):
        asyncio.run(create_topics(broker, [existing, new], partitions=3, configs=configs))
    found = asyncio.run(describe(broker, [existing, new]))
    assert found[new] == (3, {"max.message.bytes": "2000", "retention.ms": "60000"})
    assert found[existing][0] == 2 and "max.message.bytes" not in found[existing][1]
    # the dev broker does not answer DescribeConfigs for a broker: replication factor 1, said so
    assert any("default.replication.factor" in r.getMessage() for r in caplog.records)


def test_the_worker_creates_its_topics_with_the_topic_config(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    asyncio.run(create_topics(broker, [topics["input"]], partitions=2, replication_factor=1))
    start_worker("--partitions", "3", "--topic-config", "max.message.bytes=2000")
    found = asyncio.run(describe(broker, [topics["input"], topics["output"], topics["dlq"]]))
    assert found[topics["output"]] == found[topics["dlq"]] == (3, {"max.message.bytes": "2000"})
    assert found[topics["input"]][0] == 2 and "max.message.bytes" not in found[topics["input"]][1]


@pytest.mark.parametrize("command", ["worker", "broker"])
def test_a_malformed_topic_config_is_one_clear_line(broker: str, command: str) -> None:
    target = ["--brokers", broker] if command == "worker" else ["--port", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "worker", command, *target, "--topic-config", "max.message.bytes"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: --topic-config: 'max.message.bytes' is not key=value"
