"""BatchProcessor and BatchScheduler with a fake model and publisher (the real ones: integration tests)."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.unit.fakes import FakePublisher, handle, make, record
from worker.pipeline import PublishError


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


def test_an_unacknowledged_send_is_fatal_and_acks_nothing() -> None:
    pub = FakePublisher(fail_topic="out")
    proc, _ = make(pub, CollectorRegistry())
    run = handle(proc, [record(0, orjson.dumps({"id": "a", "text": "好"}))])
    [(batch, exc)] = run.fatal
    assert isinstance(exc, PublishError) and "1 of 1 sends" in str(exc)
    assert [r.offset for r in batch.records] == [0] and run.acked == []
