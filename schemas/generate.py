"""Write the JSON Schema files for the message models: ``python -m schemas.generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from schemas.messages import DeadLetterHeaders, Review, SentimentResult

SCHEMA_DIR = Path(__file__).resolve().parent

FILES: dict[str, type[BaseModel]] = {
    "review.schema.json": Review,
    "sentiment-result.schema.json": SentimentResult,
    "dead-letter-headers.schema.json": DeadLetterHeaders,
}


def render(model: type[BaseModel]) -> bytes:
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(by_alias=True),
    }
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main() -> None:
    for name, model in FILES.items():
        (SCHEMA_DIR / name).write_bytes(render(model))
        print(f"wrote schemas/{name}")


if __name__ == "__main__":
    main()
