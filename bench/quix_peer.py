"""The quixstreams peer of ``bench/stream.py``: consume → JSON decode → label → produce, at least once.

Run by ``bench/stream.py`` with the interpreter of a separate virtual environment that has
quixstreams (``--quix-python``, default ``.venv-quix/bin/python``); quixstreams is not a
dependency of the project, so this file imports nothing from it.

The same work as the worker with a no-op model: every valid review gets the same label and one
result message with the worker's fields (``schemas/result.schema.json``); quixstreams' own JSON
deserializer (orjson) decodes the input, its JSON serializer encodes the result, and offsets are
committed after the produced messages are acknowledged (``processing_guarantee="at-least-once"``,
its default commit interval).

    .venv-quix/bin/python bench/quix_peer.py --brokers 127.0.0.1:9092 --input in --output out --group g
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from quixstreams import Application

LABELS = ("negative", "positive")
SCORES = {"negative": 0.0, "positive": 1.0}
MODEL = {"name": "noop", "version": "0"}


def label(review: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": review["id"],
        "label": "positive",
        "label_id": 1,
        "scores": SCORES,
        "model": MODEL,
        "truncated": False,
        "ts_in": review["ts"],
        "ts_out": time.time_ns() // 1_000_000,
        "meta": review.get("meta"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()
    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        loglevel="WARNING",
        auto_create_topics=False,  # bench/stream.py creates them
        use_changelog_topics=False,  # stateless
        state_dir=tempfile.mkdtemp(prefix="bench-quix-state-"),  # not ./state in the caller's folder
    )
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="json")
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(label)
    sdf.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
