from __future__ import annotations

import json

import jsonschema
import orjson
import pytest

from schemas.errors import DecodeError, EmptyTextError, InvalidMessage, SchemaError, TooLargeError
from schemas.generate import FILES, SCHEMA_DIR, render
from schemas.messages import ModelRef, Review, dead_letter_headers, decode_review, encode_result


def test_valid_review_decodes_with_optional_fields() -> None:
    raw = orjson.dumps({"id": "r1", "text": "很好", "ts": 5, "lang": "zh", "meta": {"shop": 3}, "extra": 1})
    review = decode_review(raw, max_bytes=1000)
    assert review == Review(id="r1", text="很好", ts=5, lang="zh", meta={"shop": 3})


@pytest.mark.parametrize(
    ("raw", "error", "reason"),
    [
        (b"{not json", DecodeError, "decode"),
        (b"\xff\xfe\x00garbage", DecodeError, "decode"),
        (b'{"id": "x", "text": "\xff"}', DecodeError, "decode"),
        (None, DecodeError, "decode"),
        (b"[1, 2]", SchemaError, "schema"),
        (b'{"id": "x"}', SchemaError, "schema"),
        (b'{"text": "hello"}', SchemaError, "schema"),
        (b'{"id": 7, "text": "hello"}', SchemaError, "schema"),
        (b'{"id": "x", "text": ["a"]}', SchemaError, "schema"),
        (b'{"id": "x", "text": "ok", "ts": "yesterday"}', SchemaError, "schema"),
        (b'{"id": "", "text": "ok"}', SchemaError, "schema"),
        (b'{"id": "x", "text": ""}', EmptyTextError, "empty_text"),
        (b'{"id": "x", "text": " \\n\\t "}', EmptyTextError, "empty_text"),
    ],
)
def test_malformed_input_is_rejected_with_its_reason(
    raw: bytes | None, error: type[InvalidMessage], reason: str
) -> None:
    with pytest.raises(error) as info:
        decode_review(raw, max_bytes=1000)
    assert info.value.reason == reason


def test_too_large_is_rejected_before_decoding() -> None:
    raw = orjson.dumps({"id": "x", "text": "a" * 100})
    with pytest.raises(TooLargeError):
        decode_review(raw, max_bytes=50)
    assert decode_review(raw, max_bytes=len(raw)).id == "x"


def test_encoded_result_matches_the_schema_and_sums_to_one() -> None:
    review = Review(id="r1", text="t", ts=10, meta={"k": [1, 2]})
    raw = encode_result(
        review,
        labels=("negative", "positive"),
        probabilities=(0.25, 0.75),
        truncated=True,
        model=ModelRef(name="m", version="3"),
        ts_in=10,
        ts_out=20,
    )
    obj = orjson.loads(raw)
    jsonschema.validate(obj, json.loads((SCHEMA_DIR / "sentiment-result.schema.json").read_text()))
    assert obj["label"] == "positive" and obj["label_id"] == 1
    assert obj["scores"] == {"negative": 0.25, "positive": 0.75}
    assert obj["meta"] == {"k": [1, 2]} and obj["truncated"] is True
    assert (obj["ts_in"], obj["ts_out"]) == (10, 20)


def test_dead_letter_headers_keep_originals_and_name_the_source() -> None:
    headers = dead_letter_headers(
        SchemaError("text: field required"),
        topic="reviews",
        partition=2,
        offset=41,
        original=[("trace", b"abc")],
    )
    as_dict = {k: v.decode() for k, v in headers}
    assert headers[0] == ("trace", b"abc")
    assert as_dict["error.class"] == "SchemaError"
    assert as_dict["error.reason"] == "schema"
    assert as_dict["error.message"] == "text: field required"
    assert (as_dict["source.topic"], as_dict["source.partition"], as_dict["source.offset"]) == (
        "reviews",
        "2",
        "41",
    )
    schema = json.loads((SCHEMA_DIR / "dead-letter-headers.schema.json").read_text())
    jsonschema.validate({k: v for k, v in as_dict.items() if k != "trace"}, schema)


@pytest.mark.parametrize("name", sorted(FILES))
def test_json_schema_files_are_in_sync_with_the_models(name: str) -> None:
    assert (SCHEMA_DIR / name).read_bytes() == render(FILES[name]), "run: python -m schemas.generate"
