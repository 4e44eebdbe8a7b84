"""`sentiment broker` starts tansu, creates the topics, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from worker.broker import free_port

pytestmark = pytest.mark.integration


async def _describe(brokers: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        topics = await admin.describe_topics(["reviews", "reviews.sentiment", "reviews.dlq"])
        return {t["topic"]: len(t["partitions"]) for t in topics}
    finally:
        await admin.close()


def test_broker_command_creates_topics_and_stops_on_ctrl_c() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "broker", "--port", str(port), "--partitions", "5"],
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: pytest-xdist workers ignore SIGINT, and a child inherits that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert f"broker listening on 127.0.0.1:{port}" in line, line
        assert asyncio.run(_describe(f"127.0.0.1:{port}")) == {
            "reviews": 5,
            "reviews.sentiment": 5,
            "reviews.dlq": 5,
        }
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    time.sleep(0.2)
    # the tansu child went with it: the port is free again
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
