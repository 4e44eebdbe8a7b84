"""Records too large for the output and dead-letter topics: kept under each topic's limit.

The dev broker (tansu 0.6) does not enforce a topic's ``max.message.bytes`` and creates topics
on produce, but it stores topic configs and answers DescribeConfigs, which is where the worker
reads its limits. So the topics are created here first with small limits (output 2000 bytes,
dead letters 1500) and the check is made on what the ledger reads: every record is within its
topic's limit (key + value + headers; a real broker also counts the batch framing, which the
worker must leave room for).

- a valid review whose result would be too large (its big ``meta`` is echoed into the result)
  becomes a dead letter ``too_large`` / ``ResultTooLargeError``;
- a dead letter whose original value would not fit is cut to the longest prefix the topic
  takes, with headers ``original.size`` and ``original.sha256`` naming the whole.
"""

from __future__ import annotations

import hashlib

import orjson
import pytest

from tests.faults.conftest import LedgerFactory, Sizes
from tests.faults.harness import Fleet
from tests.faults.ledger import Message, Topics, reviews

pytestmark = [pytest.mark.faults, pytest.mark.integration]
OUTPUT_LIMIT, DLQ_LIMIT = 2000, 1500


def test_records_over_the_topics_limits_are_dead_lettered_or_cut(
    broker: str, fault_topics: Topics, open_ledger: LedgerFactory, fleet: Fleet, sizes: Sizes
) -> None:
    configs = {
        fault_topics.output: {"max.message.bytes": str(OUTPUT_LIMIT)},
        fault_topics.dlq: {"max.message.bytes": str(DLQ_LIMIT)},
    }
    ledger = open_ledger(broker, fault_topics, configs=configs)
    good = reviews(sizes.model_backlog, "g")
    big_meta = [
        Message(
            rid, orjson.dumps({"id": rid, "text": "很好用", "meta": {"pad": "x" * 3000}}), key=rid.encode()
        )
        for rid in (f"m{i}" for i in range(0, len(good), 20))
    ]
    broken_json = [Message(None, b"{" + b"x" * 4000 + bytes([i % 256]), key=b"bad") for i in range(10)]
    mixed = good[:]
    for i, m in enumerate(big_meta + broken_json):
        mixed.insert(i * 17 % len(mixed), m)
    sent = ledger.produce(mixed)
    worker = fleet.start("--batch-size", "8", "--max-in-flight", "2", faults=("--delay-s", "0.05"))
    report = ledger.wait(timeout_s=sizes.drain_s)
    kept = [len(d.value) for ds in report.dead.values() for d in ds]
    print(f"output limits: {report.summary}; largest records {report.max_record_bytes}; "
          f"bytes of the value kept by each dead letter: {sorted(set(kept))}")  # fmt: skip

    assert not report.lost, f"{report.summary}; lost e.g. {report.lost[:5]}"
    assert report.duplicates == 0, report.summary
    assert report.max_record_bytes[fault_topics.output] <= OUTPUT_LIMIT, report.max_record_bytes
    assert report.max_record_bytes[fault_topics.dlq] <= DLQ_LIMIT, report.max_record_bytes
    assert worker.alive() and not worker.crashed_lines(), worker.tail()
    big_ids = {m.id for m in big_meta}
    assert not big_ids & set(report.result_ids), "a result over the output topic's limit was published"
    for s in sent:
        dead = report.dead.get((s.partition, s.offset), [])
        if s.id in big_ids:
            assert [(d.reason, d.header("error.class")) for d in dead] == [
                ("too_large", b"ResultTooLargeError")
            ], f"{s}: {[d.headers[-6:] for d in dead]}"
        elif s.id is None:
            assert [d.reason for d in dead] == ["decode"], f"{s}: {[d.headers[-6:] for d in dead]}"
        else:
            assert not dead, f"{s}: a good review was dead-lettered: {dead[0].headers}"
        for d in dead:
            original = s.message.value or b""
            assert d.header("original.size") == str(len(original)).encode(), d.headers
            assert d.header("original.sha256") == hashlib.sha256(original).hexdigest().encode(), d.headers
            assert original.startswith(d.value) and len(d.value) < len(original), (
                f"{s}: the dead letter's value ({len(d.value)} bytes) is not a cut prefix of the original"
            )
            # the limit is known (DescribeConfigs): the longest prefix that fits is kept, not nothing
            assert len(d.value) > DLQ_LIMIT // 4, f"{s}: only {len(d.value)} bytes of the value kept"
