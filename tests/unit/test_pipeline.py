"""BatchProcessor and BatchScheduler with a fake model and publisher (the real ones: integration tests)."""

from __future__ import annotations

import asyncio
import hashlib

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError, NotEnoughReplicasError, ProducerClosed
from prometheus_client import CollectorRegistry

from tests.unit.fakes import FakePublisher, Run, handle, make, record
from worker.batching.pipeline import ModelBroken, PublishError


def test_valid_reviews_are_published_and_bad_ones_dead_lettered() -> None:
    pub, registry = FakePublisher(), CollectorRegistry()
    proc, model = make(pub, registry)
    batch = [
        record(0, orjson.dumps({"id": "a", "text": "很好", "ts": 2_000, "meta": {"x": 1}})),
        record(1, b"{broken"),
        record(2, orjson.dumps({"id": "b", "text": "差"})),
        record(3, orjson.dumps({"id": "c", "text": ""})),
        record(4, b"x" * 300),
    ]
    run = handle(proc, batch)

    assert model.calls == [["很好", "差"]]  # one model call for the valid ones only
    assert sorted(run.acked) == [0, 1, 2, 3, 4] and not run.fatal
    outputs = [(k, orjson.loads(v), h) for t, k, v, h in pub.sent if t == "out"]
    assert [o["id"] for _, o, _ in outputs] == ["a", "b"]
    key, first, headers = outputs[0]
    assert key == b"k" and headers == [("h", b"v")]
    assert first["label"] == "positive" and first["scores"] == {"negative": 0.2, "positive": 0.8}
    assert first["ts_in"] == 2_000 and first["ts_out"] == 3_000 and first["meta"] == {"x": 1}
    assert outputs[1][1]["ts_in"] == 1_000  # no ts: the broker timestamp

    dead = {dict(h)["source.offset"]: (v, dict(h)) for t, _, v, h in pub.sent if t == "dlq"}
    assert set(dead) == {b"1", b"3", b"4"}
    assert dead[b"1"][0] == b"{broken" and dead[b"1"][1]["error.reason"] == b"decode"
    assert dead[b"3"][1]["error.class"] == b"EmptyTextError"
    assert dead[b"4"][1]["error.reason"] == b"too_large" and dead[b"4"][0] == b"x" * 300

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("sentiment_messages_in_total") == 5
    assert value("sentiment_messages_out_total") == 2
    assert value("sentiment_dead_letters_total", reason="decode") == 1
    assert value("sentiment_dead_letters_total", reason="empty_text") == 1
    assert value("sentiment_dead_letters_total", reason="too_large") == 1
    assert value("sentiment_end_to_end_latency_seconds_sum") == pytest.approx(1.0 + 2.0)


def test_a_model_failure_isolates_the_bad_text_as_model_error() -> None:
    pub = FakePublisher()
    proc, model = make(pub, CollectorRegistry())
    batch = [record(i, orjson.dumps({"id": str(i), "text": t})) for i, t in enumerate(["好", "boom", "差"])]
    handle(proc, batch)
    assert model.calls[0] == ["好", "boom", "差"] and model.calls[1:] == [["好"], ["boom"], ["差"]]
    assert sorted(orjson.loads(v)["id"] for t, _, v, _ in pub.sent if t == "out") == ["0", "2"]
    [(_, _, value, headers)] = [s for s in pub.sent if s[0] == "dlq"]
    assert value == batch[1].value and dict(headers)["error.reason"] == b"model_error"


def review(offset: int, text: str = "好", **extra: object) -> bytes:
    return orjson.dumps({"id": f"r{offset}", "text": text, **extra})


def test_unacknowledged_sends_are_retried_with_backoff_until_the_broker_takes_them() -> None:
    errors = [KafkaTimeoutError(), NotEnoughReplicasError(), KafkaTimeoutError(), KafkaTimeoutError()]
    pub, registry = FakePublisher(failures={"out": list(errors)}), CollectorRegistry()
    proc, _ = make(pub, registry, retry_backoff_max_s=1.0)
    seen: list[str] = []
    proc.health.publish_retrying = lambda e, f=proc.health.publish_retrying: (seen.append(e), f(e))[1]  # type: ignore[method-assign]
    run = handle(proc, [record(i, review(i)) for i in range(3)])

    assert not run.fatal and sorted(run.acked) == [0, 1, 2]
    assert [orjson.loads(v)["id"] for t, _, v, _ in pub.sent if t == "out"] == ["r0", "r1", "r2"]
    assert proc.slept == [0.25, 0.5, 1.0, 1.0]  # exponential, capped at retry_backoff_max_s
    assert len(seen) == 1 and seen[0].startswith("KafkaTimeoutError")  # one retrying episode
    assert proc.health.publishing == "ok" and proc.health.ok  # recovered
    assert registry.get_sample_value("sentiment_publish_retries_total", {"error": "KafkaTimeoutError"}) == 3


def test_nothing_is_acked_while_publishing_retries_and_no_new_batch_starts() -> None:
    async def scenario() -> tuple[list[int], list[int], str, list[int]]:
        pub = FakePublisher(failures={"out": [KafkaTimeoutError()] * 1000})
        proc, model = make(pub, CollectorRegistry())
        run = Run(proc, max_in_flight=4)
        await run.submit([record(0, review(0))])
        for _ in range(50):  # the first batch is retrying by now
            await asyncio.sleep(0)
        second = asyncio.ensure_future(run.submit([record(1, review(1, "差"))]))
        for _ in range(50):
            await asyncio.sleep(0)
        acked_meanwhile, calls_meanwhile = list(run.acked), [len(c) for c in model.calls]
        state = proc.health.publishing
        pub.failures["out"].clear()  # the broker is back
        await second
        await run.scheduler.drain()
        return acked_meanwhile, calls_meanwhile, state, sorted(run.acked)

    acked_meanwhile, calls_meanwhile, state, acked = asyncio.run(scenario())
    assert acked_meanwhile == [] and state == "retrying"
    assert calls_meanwhile == [1], "the second batch must wait: it reached the model"
    assert acked == [0, 1]


def test_a_closed_producer_is_fatal_and_acks_nothing() -> None:
    pub = FakePublisher(failures={"out": [ProducerClosed()]})
    proc, _ = make(pub, CollectorRegistry())
    run = handle(proc, [record(0, review(0))])
    [(batch, exc)] = run.fatal
    assert isinstance(exc, PublishError) and "ProducerClosed" in str(exc)
    assert [r.offset for r in batch.records] == [0] and run.acked == []


def test_a_result_too_large_for_its_topic_becomes_a_dead_letter() -> None:
    pub = FakePublisher(limits={"out": 400})
    proc, _ = make(pub, CollectorRegistry(), max_message_bytes=10_000)
    big = review(1, meta={"blob": "x" * 500})
    run = handle(proc, [record(0, review(0)), record(1, big)])
    assert sorted(run.acked) == [0, 1] and not run.fatal
    assert [orjson.loads(v)["id"] for t, _, v, _ in pub.sent if t == "out"] == ["r0"]
    [(_, _, value, headers)] = [s for s in pub.sent if s[0] == "dlq"]
    h = dict(headers)
    assert h["error.reason"] == b"too_large" and h["error.class"] == b"ResultTooLargeError"
    assert value == big and h["original.sha256"] == hashlib.sha256(big).hexdigest().encode()


def test_a_dead_letter_is_cut_to_the_cap_and_sent_bare_when_still_refused() -> None:
    value = b"{not json" + bytes(range(256)) * 4
    pub = FakePublisher(limits={"dlq": 360})
    proc, _ = make(pub, CollectorRegistry(), max_message_bytes=10_000, dlq_max_value_bytes=100)
    run = handle(proc, [record(0, value)])
    assert run.acked == [0] and not run.fatal
    [(_, _, kept, headers)] = [s for s in pub.sent if s[0] == "dlq"]
    h = dict(headers)
    assert kept == b"" and "h" not in h  # bare: no value, no original headers
    assert h["original.size"] == str(len(value)).encode()
    assert h["original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert h["original.truncated"] == b"true" and h["error.reason"] == b"decode"

    pub2 = FakePublisher()
    proc2, _ = make(pub2, CollectorRegistry(), max_message_bytes=10_000, dlq_max_value_bytes=100)
    handle(proc2, [record(0, value)])
    [(_, _, kept2, headers2)] = [s for s in pub2.sent if s[0] == "dlq"]
    assert kept2 == value[:100] and dict(headers2)["h"] == b"v"  # cut, original headers kept


def test_a_dead_letter_refused_even_bare_is_fatal() -> None:
    pub = FakePublisher(limits={"dlq": 10})
    proc, _ = make(pub, CollectorRegistry())
    run = handle(proc, [record(0, b"{broken")])
    [(_, exc)] = run.fatal
    assert isinstance(exc, PublishError) and run.acked == []


def test_inputs_over_the_header_limits_are_dead_lettered_without_their_headers() -> None:
    pub = FakePublisher()
    proc, _ = make(pub, CollectorRegistry(), max_headers=3, max_header_bytes=50)
    many = record(0, review(0))
    many.headers = [(f"k{i}", b"v") for i in range(4)]
    large = record(1, review(1))
    large.headers = [("k", b"v" * 60)]
    fine = record(2, review(2))
    fine.headers = [("k1", b"v"), ("k2", b"v"), ("k3", b"v")]
    run = handle(proc, [many, large, fine])
    assert sorted(run.acked) == [0, 1, 2]
    [(_, _, _, out_headers)] = [s for s in pub.sent if s[0] == "out"]
    assert out_headers == fine.headers
    dead = {dict(h)["source.offset"]: dict(h) for t, _, _, h in pub.sent if t == "dlq"}
    assert set(dead) == {b"0", b"1"}
    for h in dead.values():
        assert h["error.class"] == b"HeadersTooLargeError" and h["error.reason"] == b"too_large"
        assert not any(k.startswith("k") for k in h)


def test_a_broken_device_stops_the_batch_instead_of_dead_lettering_it() -> None:
    pub = FakePublisher()
    proc, model = make(pub, CollectorRegistry())
    model.broken = True
    run = handle(proc, [record(i, review(i)) for i in range(3)])
    [(_, exc)] = run.fatal
    assert isinstance(exc, ModelBroken) and run.acked == [] and pub.sent == []
    assert proc.health.report()["model"] == "broken" and not proc.health.ok


def test_a_dead_letter_keeps_the_longest_prefix_its_known_topic_limit_takes() -> None:
    """The publisher knows the dead-letter topic's max.message.bytes: the value is cut to fit it,
    and the original headers stay (no refusal, no bare resend)."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    value = b"{not json " + b"z" * 5000
    pub = FakePublisher(limits={"dlq": 1000})
    pub.limit = lambda topic: 1000 if topic == "dlq" else 1 << 30  # type: ignore[method-assign]
    proc, _ = make(pub, CollectorRegistry(), max_message_bytes=10_000)
    run = handle(proc, [record(0, value)])
    assert run.acked == [0] and not run.fatal
    [(_, key, kept, headers)] = [s for s in pub.sent if s[0] == "dlq"]
    h = dict(headers)
    assert h["h"] == b"v" and h["original.truncated"] == b"true"
    assert len(kept) > 500 and value.startswith(kept)
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(key, kept, headers) <= 1000


def test_a_review_whose_result_cannot_be_encoded_is_dead_lettered_not_fatal() -> None:
    """orjson reads JSON nested 1024 deep but writes only 255: a ``meta`` 300 deep decodes,
    validates, and then cannot be echoed into its result."""
    deep = b'{"id": "deep", "text": "\\u597d", "meta": {"m": ' + b"[" * 300 + b"]" * 300 + b"}}"
    pub = FakePublisher()
    proc, _ = make(pub, CollectorRegistry(), max_message_bytes=10_000)
    run = handle(proc, [record(0, deep), record(1, review(1))])
    assert sorted(run.acked) == [0, 1] and not run.fatal
    assert [orjson.loads(v)["id"] for t, _, v, _ in pub.sent if t == "out"] == ["r1"]
    [(_, _, value, headers)] = [s for s in pub.sent if s[0] == "dlq"]
    assert value == deep and dict(headers)["error.reason"] == b"schema"


def test_an_authorization_failure_is_retried_until_an_operator_cures_it() -> None:
    from aiokafka.errors import TopicAuthorizationFailedError

    pub = FakePublisher(failures={"out": [TopicAuthorizationFailedError()] * 3})
    proc, _ = make(pub, CollectorRegistry())
    run = handle(proc, [record(0, review(0))])
    assert run.acked == [0] and not run.fatal and len(proc.slept) == 3


def test_a_record_the_broker_refuses_for_good_is_tried_alone_then_ends_the_process() -> None:
    from aiokafka.errors import InvalidTimestampError

    pub = FakePublisher(failures={"out": [InvalidTimestampError()] * 2})
    proc, _ = make(pub, CollectorRegistry())
    run = handle(proc, [record(0, review(0))])
    [(_, exc)] = run.fatal
    assert isinstance(exc, PublishError) and "retrying cannot cure it" in str(exc)
    assert run.acked == [] and pub.calls == 2 and proc.slept == []  # the batch, then the record alone


def test_when_one_partition_of_the_results_fails_only_its_messages_are_sent_again() -> None:
    """The results go out in one call, one future per partition; when one partition's record
    batch is not acknowledged, its results alone are retried, and every result is counted once."""

    class TwoPartitions(FakePublisher):
        """Keys ending in an odd digit go to partition 1, whose first batch times out."""

        def __init__(self) -> None:
            super().__init__()
            self.failed_once = False

        async def send_many(self, topic, messages):  # type: ignore[no-untyped-def]
            self.calls += 1
            loop = asyncio.get_running_loop()
            futures, by_part = [], {0: loop.create_future(), 1: loop.create_future()}
            for key, value, headers in messages:
                part = int(key[-1:]) % 2 if topic == "out" else 0
                if part == 1 and not self.failed_once:
                    continue
                self.sent.append((topic, key, value, headers))
            for part, fut in by_part.items():
                if part == 1 and topic == "out" and not self.failed_once:
                    fut.set_exception(KafkaTimeoutError())
                else:
                    fut.set_result(None)
            for key, _, _ in messages:
                futures.append(by_part[int(key[-1:]) % 2 if topic == "out" else 0])
            if topic == "out" and any(int(k[-1:]) % 2 for k, _, _ in messages):
                self.failed_once = True
            return futures

    pub, registry = TwoPartitions(), CollectorRegistry()
    proc, _ = make(pub, registry)
    batch = [record(i, review(i), key=f"k{i}".encode()) for i in range(6)] + [record(6, b"{broken")]
    run = handle(proc, batch)
    assert sorted(run.acked) == list(range(7)) and not run.fatal
    outs = [orjson.loads(v)["id"] for t, _, v, _ in pub.sent if t == "out"]
    assert sorted(outs) == [f"r{i}" for i in range(6)], "each result acknowledged exactly once"
    assert outs[:3] == ["r0", "r2", "r4"] and sorted(outs[3:]) == ["r1", "r3", "r5"]
    assert proc.slept == [0.25] and proc.health.ok
    assert registry.get_sample_value("sentiment_messages_out_total") == 6
    assert registry.get_sample_value("sentiment_results_total", {"label": "positive"}) == 6
    assert registry.get_sample_value("sentiment_end_to_end_latency_seconds_count") == 6
    assert registry.get_sample_value("sentiment_dead_letters_total", {"reason": "decode"}) == 1


def test_a_model_whose_server_is_away_is_waited_for_and_nothing_is_dead_lettered() -> None:
    pub = FakePublisher()
    proc, model = make(pub, CollectorRegistry())
    model.away = True
    seen: list[tuple[object, bool]] = []

    async def sleep(seconds: float) -> None:  # each backoff: what /readyz says then; back after 3
        proc.slept.append(seconds)  # type: ignore[attr-defined]
        seen.append((proc.health.report()["model"], proc.health.ok))
        model.away = len(seen) < 3
        await asyncio.sleep(0)

    proc.sleep = sleep
    run = handle(proc, [record(i, review(i, "好" if i % 2 else "差")) for i in range(4)])
    assert run.fatal == [] and run.acked == [0, 1, 2, 3]
    assert sorted(orjson.loads(v)["id"] for t, _, v, _ in pub.sent if t == "out") == ["r0", "r1", "r2", "r3"]
    assert [t for t, *_ in pub.sent if t == "dlq"] == []  # not one review lost to the dead letters
    assert seen == [("unavailable", False)] * 3
    assert proc.slept == [0.25, 0.5, 1.0]  # type: ignore[attr-defined]
    assert proc.health.report()["model"] == "ok" and proc.health.ok
    # the whole batch was tried again each time, never text by text while the server was away
    assert all(len(call) == 4 for call in model.calls)


def test_a_text_the_server_fails_on_while_it_answers_probes_is_dead_lettered() -> None:
    pub = FakePublisher()
    proc, model = make(pub, CollectorRegistry())
    batch = [record(i, review(i, t)) for i, t in enumerate(["好", "choke me", "差"])]
    run = handle(proc, batch)
    assert model.calls[1:] == [["好"], ["choke me"], ["差"]] and model.probes == 2  # isolated, probed
    assert run.fatal == [] and run.acked == [0, 1, 2] and proc.slept == []  # type: ignore[attr-defined]
    assert sorted(orjson.loads(v)["id"] for t, _, v, _ in pub.sent if t == "out") == ["r0", "r2"]
    [(_, _, value, headers)] = [s for s in pub.sent if s[0] == "dlq"]
    assert value == batch[1].value and dict(headers)["error.reason"] == b"model_error"
    assert proc.health.ok


def test_the_idle_probe_makes_readiness_follow_the_server() -> None:
    proc, model = make(FakePublisher(), CollectorRegistry())

    async def probe() -> tuple[object, bool]:
        await proc.probe_idle()
        return proc.health.report()["model"], proc.health.ok

    assert asyncio.run(probe()) == ("ok", True)
    model.away = True
    assert asyncio.run(probe()) == ("unavailable", False)
    assert proc.health.report()["model_error"] == "health probe failed"
    model.away = False
    assert asyncio.run(probe()) == ("ok", True) and model.probes == 3
