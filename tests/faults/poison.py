"""The poison corpus: inputs a producer bug, a hostile client or odd text can put on the topic.

Each entry is a message and what it must become: a dead letter with that ``error.reason``, or
(``None``) a result, for the odd but valid ones. Every entry carries a ``poison`` header naming
it, which its dead letter must carry back (except the one with too many headers: it is
dead-lettered without them).
"""

from __future__ import annotations

import orjson

from tests.faults.ledger import Message

TEN_MB = 10 * 1024 * 1024
DEEP = 100_000
MANY_HEADERS = 10_000
PLANES = "".join(chr((plane << 16) + 0x4E2D) for plane in range(17))  # U+4E2D 中 and its kin


def poison_corpus(tag: str) -> list[tuple[Message, str | None]]:
    """(message, expected dead-letter reason or None for a result); ids unique per ``tag``."""

    def review(name: str, **fields: object) -> bytes:
        return orjson.dumps({"id": f"{tag}-{name}", **fields})

    deep = (
        f'{{"id": "{tag}-deep-json", "text": "好", "meta": '.encode()
        + b'{"a":' * DEEP
        + b"1"
        + b"}" * (DEEP + 1)
    )
    deep_meta = (
        f'{{"id": "{tag}-deep-meta", "text": "好", "meta": {{"m": '.encode() + b"[" * 300 + b"]" * 300 + b"}}"
    )
    every_field = {"text": "不错", "ts": 1, "lang": "zh", "source": "t", "meta": {"k": [1]}}
    entries: list[tuple[str, bool, bytes | None, str | None]] = [  # name, has an id, value, reason
        ("not-json", False, b"{not json", "decode"),
        ("bad-utf8", True, f'{{"id": "{tag}-bad-utf8", "text": "'.encode() + b'\xff\xfe\xc3"}', "decode"),
        ("lone-surrogate", True, f'{{"id": "{tag}-lone-surrogate", "text": "\\ud800"}}'.encode(), "decode"),
        ("id-number", False, orjson.dumps({"id": 5, "text": "好"}), "schema"),
        ("text-list", True, review("text-list", text=["好", "评"]), "schema"),
        ("no-text", True, review("no-text"), "schema"),
        ("no-id", False, orjson.dumps({"text": "好评"}), "schema"),
        ("array", False, b"[1, 2, 3]", "schema"),
        ("string", False, b'"just a string"', "schema"),
        ("negative-ts", True, review("negative-ts", text="好", ts=-5), "schema"),
        ("empty-text", True, review("empty-text", text=""), "empty_text"),
        ("blank-text", True, review("blank-text", text=" \t\n\u3000 "), "empty_text"),
        ("tombstone", False, None, "decode"),
        ("ten-mb", True, review("ten-mb", text="好" * (TEN_MB // 3)), "too_large"),
        ("deep-json", True, deep, "decode"),
        # orjson reads 1024 levels but writes 255: this one decodes and then cannot be echoed
        ("deep-meta", True, deep_meta, "schema"),
        ("many-headers", True, review("many-headers", text="好评"), "too_large"),
        ("control-chars", True, review("control-chars", text="\x00\x01\x07\x1b[31m还行\x7f\u200b"), None),
        ("planes", True, review("planes", text=f"每个平面 {PLANES}"), None),
        ("astral", True, review("astral", text="𠀀𠀁𠀂 𝄞 𐍈"), None),
        ("emoji", True, review("emoji", text="👍🏽 好评！👨‍👩‍👧‍👦 🇨🇳 ❤️"), None),
        ("long-text", True, review("long-text", text="这个手机很好用。" * 25_000), None),
        ("all-fields", True, review("all-fields", **every_field), None),
    ]  # fmt: skip
    corpus = []
    for name, has_id, value, reason in entries:
        headers: tuple[tuple[str, bytes], ...] = (("poison", name.encode()),)
        if name == "many-headers":
            headers += tuple((f"h{i}", b"v") for i in range(MANY_HEADERS))
        key = f"{tag}-{name}".encode()
        corpus.append((Message(f"{tag}-{name}" if has_id else None, value, key, headers), reason))
    return corpus
