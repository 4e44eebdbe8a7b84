"""Input, output and dead-letter messages (``docs/architecture.md``, "Messages"), encoded with orjson.

Decoding is strict on purpose: a review whose ``id`` is a number or whose ``text`` is missing is
a producer bug, and it is better surfaced in the dead-letter topic than guessed at. Unknown extra
fields are ignored so that producers can add fields without breaking the worker.

The pydantic models define the messages (the JSON schemas are generated from them). The worker's
hot path does not build them: :func:`review_fields` checks the decoded JSON object with plain
type checks that accept exactly what :class:`Review` accepts, and hands on the object itself; any
input they refuse goes through :func:`decode_review` (pydantic) so that its error, and so the
dead letter, is the same. :func:`result_encoder` writes a :class:`SentimentResult` with one
``orjson.dumps`` of a plain dict.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import (
    DecodeError,
    EmptyTextError,
    HeadersTooLargeError,
    InvalidMessage,
    SchemaError,
    TooLargeError,
)

Headers = Sequence[tuple[str, bytes]]  # a list, or the tuple aiokafka's ConsumerRecord carries
HeaderList = list[tuple[str, bytes]]  # what aiokafka's record builder takes
ReviewFields = dict[str, Any]  # a valid review as decoded: the JSON object itself (review_fields)


class Review(BaseModel):
    """A product review as producers write it to the input topic."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, title="Review")

    id: str = Field(min_length=1, description="Producer's identifier; the result carries it back.")
    text: str = Field(description="The review text (UTF-8). Empty or white-space-only is rejected.")
    ts: int | None = Field(default=None, ge=0, description="Producer time, epoch milliseconds.")
    lang: str | None = Field(default=None, description="Language tag, e.g. 'zh'. Informational.")
    source: str | None = Field(default=None, description="Where the review came from. Informational.")
    meta: dict[str, Any] | None = Field(default=None, description="Opaque object, passed through.")


class ModelRef(BaseModel):
    """Which model produced a result."""

    model_config = ConfigDict(frozen=True, title="ModelRef")

    name: str
    version: str


class SentimentResult(BaseModel):
    """One labelled result per valid review, written to the output topic."""

    model_config = ConfigDict(frozen=True, title="SentimentResult")

    id: str = Field(description="The input review's id.")
    label: str = Field(description="Most probable label name, e.g. 'negative' or 'positive'.")
    label_id: int = Field(ge=0, description="Index of the label in the checkpoint's label list.")
    scores: dict[str, float] = Field(description="Label name → probability; the values sum to 1.")
    model: ModelRef
    truncated: bool = Field(description="True when the text was longer than the model's max length.")
    ts_in: int = Field(description="Input's ts, or the broker timestamp when absent (epoch ms).")
    ts_out: int = Field(description="When the result was produced (epoch ms).")
    meta: dict[str, Any] | None = Field(default=None, description="The input's meta, unchanged.")


class DeadLetterHeaders(BaseModel):
    """Headers on a dead letter; its value is the original bytes, cut to the dead-letter size cap."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, title="DeadLetterHeaders")

    error_class: str = Field(alias="error.class", description="Error class name, e.g. 'DecodeError'.")
    error_reason: str = Field(
        alias="error.reason",
        description="One of decode, schema, empty_text, too_large, model_error.",
    )
    error_message: str = Field(alias="error.message", description="Human-readable cause.")
    source_topic: str = Field(alias="source.topic")
    source_partition: str = Field(alias="source.partition", description="Decimal partition number.")
    source_offset: str = Field(alias="source.offset", description="Decimal offset.")
    original_size: str = Field(
        alias="original.size", description="Decimal byte length of the whole original value."
    )
    original_sha256: str = Field(
        alias="original.sha256", description="Hex SHA-256 of the whole original value."
    )
    original_truncated: str = Field(
        alias="original.truncated",
        description="'true' when the value kept is a prefix of the original (the size cap), else 'false'.",
    )


def check_headers(headers: Headers, *, max_count: int, max_bytes: int) -> None:
    """Raise :class:`HeadersTooLargeError` when ``headers`` are over either limit.

    A result carries the input's headers over, so without a bound one input could make a result
    (or a dead letter) larger than any topic takes."""
    if len(headers) > max_count:
        raise HeadersTooLargeError(f"{len(headers)} headers, over the limit of {max_count}")
    size = sum(len(k.encode()) + len(v or b"") for k, v in headers)
    if size > max_bytes:
        raise HeadersTooLargeError(f"headers total {size} bytes, over the {max_bytes}-byte limit")


def decode_review(value: bytes | None, *, max_bytes: int) -> Review:
    """Decode and validate one raw input value, or raise an :class:`InvalidMessage` subclass."""
    if value is None:
        raise DecodeError("message has no value (tombstone)")
    if len(value) > max_bytes:
        raise TooLargeError(f"value is {len(value)} bytes, over the {max_bytes}-byte limit")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        review = Review.model_validate(obj)
    except ValidationError as exc:
        raise SchemaError(_summarise(exc)) from None
    if not review.text.strip():
        raise EmptyTextError("text is empty")
    return review


def review_fields(value: bytes | None, *, max_bytes: int) -> ReviewFields:
    """The decoded JSON object of a valid review, or raise what :func:`decode_review` raises.

    The hot path's decoding: the same verdict as :class:`Review` (strict: ``id`` a non-empty
    string, ``text`` a string, ``ts`` a non-negative integer or null, ``lang`` and ``source``
    strings or null, ``meta`` an object or null; other fields ignored), by plain type checks
    instead of building the pydantic object. What they refuse is decoded again by
    :func:`decode_review`, so the error (class, reason, message) is pydantic's."""
    if value is not None and len(value) <= max_bytes:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict:
            get = obj.get
            rid, text, ts = get("id"), get("text"), get("ts")
            lang, source, meta = get("lang"), get("source"), get("meta")
            if (
                type(rid) is str
                and rid
                and type(text) is str
                and (ts is None or (type(ts) is int and ts >= 0))
                and (lang is None or type(lang) is str)
                and (source is None or type(source) is str)
                and (meta is None or type(meta) is dict)
                and text.strip()
            ):
                return obj
    review = decode_review(value, max_bytes=max_bytes)  # raises the reference error
    return review.model_dump()  # not reached while the checks above agree with pydantic


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def encode_result(
    review: Review | Mapping[str, Any],
    *,
    labels: Sequence[str],
    probabilities: Sequence[float],
    truncated: bool,
    model: ModelRef,
    ts_in: int,
    ts_out: int | None = None,
) -> bytes:
    """Serialise one :class:`SentimentResult` without building the pydantic object."""
    fields = review.model_dump() if isinstance(review, Review) else review
    encode = result_encoder(labels, model)
    return encode(fields, probabilities, truncated, ts_in, ts_out if ts_out is not None else now_ms())


ResultEncoder = Callable[[Mapping[str, Any], Sequence[float], bool, int, int], bytes]


def result_encoder(labels: Sequence[str], model: ModelRef) -> ResultEncoder:
    """``encode(review, probabilities, truncated, ts_in, ts_out)``: one :class:`SentimentResult`
    as bytes, for a model with ``labels`` (the hot path: one ``orjson.dumps`` of a plain dict).

    The label is the most probable (the first of equals); ``review`` is the decoded input
    (:func:`review_fields`), whose ``id`` and ``meta`` the result carries. Two labels (the
    sentiment models) get an encoder written out for them: the same bytes, in half the time."""
    names = tuple(labels)
    ref = {"name": model.name, "version": model.version}
    dumps = orjson.dumps

    def encode(
        review: Mapping[str, Any], probabilities: Sequence[float], truncated: bool, ts_in: int, ts_out: int
    ) -> bytes:
        label_id = max(range(len(probabilities)), key=probabilities.__getitem__)
        return dumps(
            {
                "id": review["id"],
                "label": names[label_id],
                "label_id": label_id,
                "scores": {name: float(p) for name, p in zip(names, probabilities, strict=True)},
                "model": ref,
                "truncated": truncated,
                "ts_in": ts_in,
                "ts_out": ts_out,
                "meta": review.get("meta"),
            }
        )

    if len(names) != 2:
        return encode
    first, second = names

    def encode_two(
        review: Mapping[str, Any], probabilities: Sequence[float], truncated: bool, ts_in: int, ts_out: int
    ) -> bytes:
        p0, p1 = probabilities  # ValueError for any other count, as zip(strict=True) raises
        label_id = 1 if p1 > p0 else 0  # the first of equals, as max() picks
        return dumps(
            {
                "id": review["id"],
                "label": names[label_id],
                "label_id": label_id,
                "scores": {first: float(p0), second: float(p1)},
                "model": ref,
                "truncated": truncated,
                "ts_in": ts_in,
                "ts_out": ts_out,
                "meta": review.get("meta"),
            }
        )

    return encode_two


def dead_letter_headers(
    error: InvalidMessage,
    *,
    topic: str,
    partition: int,
    offset: int,
    original: Headers | None = None,
    value: bytes | None = None,
    truncated: bool = False,
) -> HeaderList:
    """The input's own headers followed by the error headers (see :class:`DeadLetterHeaders`).

    ``value`` is the whole original value: its size and SHA-256 identify it even when the dead
    letter keeps only a prefix of it (``truncated``)."""
    message = str(error).encode("utf-8", "replace")[:1000].decode("utf-8", "ignore")  # 1000 bytes at most
    whole = value or b""
    return [
        *(original or []),
        ("error.class", type(error).__name__.encode()),
        ("error.reason", error.reason.encode()),
        ("error.message", message.encode("utf-8", "replace")),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
        ("original.size", str(len(whole)).encode()),
        ("original.sha256", hashlib.sha256(whole).hexdigest().encode()),
        ("original.truncated", b"true" if truncated else b"false"),
    ]


def dead_letter(
    error: InvalidMessage,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    max_value_bytes: int,
) -> tuple[bytes | None, bytes, HeaderList]:
    """(key, value, headers) of the dead letter for one input.

    The value is the original bytes, cut to ``max_value_bytes`` so that a dead letter always
    fits the dead-letter topic; an input refused for its headers is dead-lettered without them."""
    whole = value or b""
    kept = whole[:max_value_bytes]
    original = None if isinstance(error, HeadersTooLargeError) else headers
    return key, kept, dead_letter_headers(
        error, topic=topic, partition=partition, offset=offset, original=original, value=whole,
        truncated=len(kept) < len(whole),
    )  # fmt: skip


def now_ms() -> int:
    return time.time_ns() // 1_000_000
