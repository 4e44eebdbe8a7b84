"""The stream hot path's fast versions against their references: the same answers, always.

- :func:`schemas.messages.review_fields` (plain checks) against :func:`decode_review` (the
  pydantic model) and the generated JSON schema: the same verdict, error class, reason and message.
- :func:`schemas.messages.result_encoder` against the pydantic :class:`SentimentResult` and the
  JSON schema.
- :func:`worker.batching.scheduler.cut_by_tokens` (bisect on running sums) against a loop.
- :func:`worker.kafka.publisher.murmur2_many` against aiokafka's murmur2 (Kafka's default partitioner).
- :func:`worker.metrics.observe_many` against one ``observe`` per value.
- :class:`worker.kafka.offsets.OffsetBook`'s bulk calls against one call per offset.
"""

from __future__ import annotations

import json
import math
import os
import random
import uuid
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka.partitioner import murmur2 as kafka_murmur2
from prometheus_client import CollectorRegistry, Histogram

from schemas.errors import InvalidMessage
from schemas.generate import SCHEMA_DIR
from schemas.messages import ModelRef, SentimentResult, decode_review, result_encoder, review_fields
from worker.batching.scheduler import cut_by_tokens
from worker.kafka.offsets import OffsetBook
from worker.kafka.publisher import murmur2, murmur2_many
from worker.metrics import LATENCY_BUCKETS, observe_many

REVIEW_SCHEMA = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "review.schema.json").read_text()))
RESULT_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((SCHEMA_DIR / "sentiment-result.schema.json").read_text())
)


def verdict(decode: Any, raw: bytes | None, max_bytes: int = 1000) -> tuple[Any, ...]:
    """("ok", the review's fields) or (error class, reason, message)."""
    try:
        got = decode(raw, max_bytes=max_bytes)
    except InvalidMessage as exc:
        return type(exc), exc.reason, str(exc)
    fields = got if isinstance(got, dict) else got.model_dump()
    return ("ok", *(fields.get(k) for k in ("id", "text", "ts", "lang", "source", "meta")))


EDGE_CASES: list[bytes | None] = [
    None,
    b"",
    b" ",
    b"{not json",
    b"\xff\xfe\x00garbage",
    b'{"id": "x", "text": "\xff"}',
    b'{"id": "x", "text": "\\ud800"}',  # a lone surrogate
    b"[1, 2]",
    b'"a string"',
    b"42",
    b"null",
    b"true",
    b"{}",
    b'{"id": "x"}',
    b'{"text": "hello"}',
    b'{"id": 7, "text": "hello"}',
    b'{"id": null, "text": "hello"}',
    b'{"id": "x", "text": ["a"]}',
    b'{"id": "x", "text": null}',
    b'{"id": "x", "text": 5}',
    b'{"id": "x", "text": "ok", "ts": "yesterday"}',
    b'{"id": "x", "text": "ok", "ts": true}',
    b'{"id": "x", "text": "ok", "ts": false}',
    b'{"id": "x", "text": "ok", "ts": 1.0}',
    b'{"id": "x", "text": "ok", "ts": 1.5}',
    b'{"id": "x", "text": "ok", "ts": -1}',
    b'{"id": "x", "text": "ok", "ts": 0}',
    b'{"id": "x", "text": "ok", "ts": null}',
    b'{"id": "x", "text": "ok", "ts": 9223372036854775807}',
    b'{"id": "x", "text": "ok", "ts": 18446744073709551615}',
    b'{"id": "x", "text": "ok", "ts": 1e3}',
    b'{"id": "", "text": "ok"}',
    b'{"id": " ", "text": "ok"}',
    b'{"id": "x", "text": ""}',
    b'{"id": "x", "text": " \\n\\t "}',
    b'{"id": "x", "text": "\\u3000"}',  # an ideographic space: white space to str.strip
    b'{"id": "x", "text": "\\u200b"}',  # a zero-width space: not white space
    b'{"id": "x", "text": "\\u0000"}',
    b'{"id": "x", "text": "ok", "lang": 3}',
    b'{"id": "x", "text": "ok", "lang": null, "source": null, "meta": null}',
    b'{"id": "x", "text": "ok", "source": ["web"]}',
    b'{"id": "x", "text": "ok", "meta": []}',
    b'{"id": "x", "text": "ok", "meta": "m"}',
    b'{"id": "x", "text": "ok", "meta": {}}',
    b'{"id": "x", "text": "ok", "meta": {"a": [1, {"b": null}]}}',
    b'{"id": "x", "text": "ok", "extra": {"anything": 1}, "ID": 5}',
    b'{"id": "x", "text": "", "id": 5}',  # duplicate keys: the last wins
    b'{"id": 5, "text": "ok", "id": "y"}',
    b'  {"id": "x", "text": "ok"}  \n',
    b'\xef\xbb\xbf{"id": "x", "text": "ok"}',  # a byte order mark
    b'{"id": "x", "text": "\xe5\xa5\xbd"}',
    b'{"id": "x", "text": "' + b"a" * 2000 + b'"}',  # over max_bytes
]


@pytest.mark.parametrize("raw", EDGE_CASES)
def test_review_fields_gives_the_pydantic_verdict_on_edge_cases(raw: bytes | None) -> None:
    assert verdict(review_fields, raw) == verdict(decode_review, raw)


def random_review(rng: random.Random) -> bytes:
    values: list[Any] = [
        None,
        "",
        " ",
        "x",
        "好",
        "\t\n",
        0,
        1,
        -1,
        2**40,
        1.5,
        True,
        False,
        [],
        {},
        {"k": 1},
        ["a"],
    ]
    obj: dict[str, Any] = {}
    for field in ("id", "text", "ts", "lang", "source", "meta", "extra"):
        if rng.random() < 0.75:
            obj[field] = rng.choice(values)
    if rng.random() < 0.05:
        return orjson.dumps(rng.choice([[obj], "s", 3, None]))
    return orjson.dumps(obj)


def test_review_fields_gives_the_pydantic_verdict_on_random_inputs() -> None:
    rng = random.Random(18)
    verdicts: set[Any] = set()
    for _ in range(5000):
        raw = random_review(rng)
        fast = verdict(review_fields, raw)
        assert fast == verdict(decode_review, raw), raw
        verdicts.add(fast[0] if fast[0] == "ok" else fast[1])
        if fast[0] == "ok":  # and the generated JSON schema agrees: an independent reference
            REVIEW_SCHEMA.validate(orjson.loads(raw))
        elif fast[1] == "schema":
            assert not REVIEW_SCHEMA.is_valid(orjson.loads(raw)), raw
    assert verdicts == {"ok", "schema", "empty_text"}, "the generator must reach every verdict"


def test_a_valid_review_comes_back_as_the_json_object_itself() -> None:
    raw = orjson.dumps({"id": "r1", "text": "很好", "ts": 5, "meta": {"shop": 3}, "extra": 1})
    assert review_fields(raw, max_bytes=1000) == orjson.loads(raw)


def reference_result(
    labels: tuple[str, ...], probs: tuple[float, ...], review: dict[str, Any]
) -> dict[str, Any]:
    """The result as the pydantic model writes it (the message definition)."""
    label_id = max(range(len(probs)), key=probs.__getitem__)
    return SentimentResult(
        id=review["id"], label=labels[label_id], label_id=label_id,
        scores={name: float(p) for name, p in zip(labels, probs, strict=True)},
        model=ModelRef(name="m", version="2"), truncated=True, ts_in=10, ts_out=20, meta=review.get("meta"),
    ).model_dump(mode="json")  # fmt: skip


@pytest.mark.parametrize("labels", [("negative", "positive"), ("neg", "neu", "pos"), ("only",)])
def test_the_result_encoder_writes_what_the_pydantic_model_defines(labels: tuple[str, ...]) -> None:
    rng = random.Random(len(labels))
    encode = result_encoder(labels, ModelRef(name="m", version="2"))
    cases = [tuple(rng.choice([0.0, 0.25, 0.5, 1.0, rng.random()]) for _ in labels) for _ in range(300)]
    cases += [(0.5,) * len(labels), (1,) * len(labels)]  # ties (the first wins), integers (as floats)
    for probs in cases:
        for review in ({"id": "r", "text": "t"}, {"id": "r", "text": "t", "meta": {"k": [1, None]}}):
            got = orjson.loads(encode(review, probs, True, 10, 20))
            assert got == reference_result(labels, probs, review)
            assert list(got) == list(SentimentResult.model_fields)  # the fields, in their order
            assert all(type(v) is float for v in got["scores"].values())
            RESULT_SCHEMA.validate(got)


def test_the_result_encoder_refuses_a_wrong_number_of_probabilities() -> None:
    for labels in (("negative", "positive"), ("a", "b", "c")):
        encode = result_encoder(labels, ModelRef(name="m", version="2"))
        for probs in ((0.5,), (0.2, 0.3, 0.5, 0.0)):
            with pytest.raises(ValueError):
                encode({"id": "r", "text": "t"}, probs, False, 1, 2)


def reference_cut(lengths: list[int], budget: int) -> list[range]:
    runs, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and total + n > budget:
            runs.append(range(start, i))
            start, total = i, 0
        total += n
    if start < len(lengths):
        runs.append(range(start, len(lengths)))
    return runs


def test_cut_by_tokens_cuts_where_a_loop_over_the_texts_does() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        lengths = [rng.choice([0, 0, 1, 3, 10, 40, 120, 400]) for _ in range(rng.randrange(0, 40))]
        budget = rng.choice([1, 5, 40, 100, 256, 1000])
        assert cut_by_tokens(lengths, budget) == reference_cut(lengths, budget), (lengths, budget)


def test_murmur2_is_kafkas() -> None:
    rng = random.Random(2)
    keys = [b"", b"a", b"ab", b"abc", b"abcd", "评论-1".encode(), b"\xff" * 9]
    keys += [os.urandom(n) for n in range(300) for _ in range(3)] + [rng.randbytes(5000)]
    for key in keys:
        assert murmur2(key) == kafka_murmur2(key), key
    rng.shuffle(keys)  # one batch of every length mixed, as the publisher hashes a micro-batch's keys
    assert murmur2_many(keys) == [kafka_murmur2(key) for key in keys]
    uuids = [str(uuid.UUID(int=rng.getrandbits(128))).encode() for _ in range(256)]  # one length
    assert murmur2_many(uuids) == [kafka_murmur2(key) for key in uuids]
    assert murmur2_many([]) == []


def histogram_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_counts_as_one_observe_per_value() -> None:
    rng = random.Random(3)
    values = [0.0, 0.001, 0.0011, 30.0, 30.5, 1e9, -1.0, math.nan] + [rng.random() * 40 for _ in range(2000)]
    one, many = CollectorRegistry(), CollectorRegistry()
    h_one = Histogram("lat", "l", buckets=LATENCY_BUCKETS, registry=one)
    h_many = Histogram("lat", "l", buckets=LATENCY_BUCKETS, registry=many)
    for v in values[8:]:
        h_one.observe(v)
    observe_many(h_many, values[8:])
    assert histogram_samples(one) == pytest.approx(histogram_samples(many))
    for v in values[:7]:  # the edges: on a bound, below the first, past the last
        h_one.observe(v)
    observe_many(h_many, values[:7])
    observe_many(h_many, [])
    assert histogram_samples(one) == pytest.approx(histogram_samples(many))


def test_the_offset_book_in_bulk_commits_what_it_does_one_by_one() -> None:
    rng = random.Random(5)
    for _ in range(300):
        offsets = sorted(rng.sample(range(200), rng.randrange(1, 60)))
        chunks = [offsets[i : i + 7] for i in range(0, len(offsets), 7)]
        finish_order = chunks[:]
        rng.shuffle(finish_order)
        bulk: OffsetBook[str] = OffsetBook()
        single: OffsetBook[str] = OffsetBook()
        for chunk in chunks:
            bulk.take_many("p", chunk)
            for o in chunk:
                single.take("p", o)
        for chunk in finish_order:
            bulk.finish_many("p", chunk)
            for o in chunk:
                single.finish("p", o)
            assert bulk.to_commit() == single.to_commit()
            assert bulk.done_up_to("p") == single.done_up_to("p")
        assert bulk.to_commit() == {"p": offsets[-1] + 1} and bulk.unfinished() == 0


def test_the_offset_book_refuses_offsets_out_of_order_in_bulk() -> None:
    book: OffsetBook[str] = OffsetBook()
    book.take_many("p", [3, 4])
    for bad in ([4, 5], [2], [6, 6], [7, 9, 8]):
        with pytest.raises(ValueError):
            book.take_many("p", bad)
    book.take_many("p", [])
    book.take_many("p", [5, 9])
    book.finish_many("p", [3, 4, 5, 9])
    assert book.to_commit() == {"p": 10}
