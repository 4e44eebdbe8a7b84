"""Log output: human lines on a terminal, one JSON object per line otherwise (for log shippers).

Records may carry ``topic``, ``partition`` and ``offset`` (``extra=`` on the logging call, see
:func:`where`); the JSON form puts them in fields of their own, the text form after the message.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import orjson

CONTEXT = ("topic", "partition", "offset")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def where(topic: str, partition: int, offset: int) -> dict[str, Any]:
    """``extra=`` for a log call about one message."""
    return {"topic": topic, "partition": partition, "offset": offset}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key in CONTEXT:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [f"{key}={getattr(record, key)}" for key in CONTEXT if hasattr(record, key)]
        return f"{line} [{' '.join(context)}]" if context else line


def wants_json(stream: Any = None) -> bool:
    stream = stream or sys.stderr
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def logging_config(level: str, *, json: bool | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for stderr (also handed to faust's worker)."""
    use_json = wants_json() if json is None else json
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"()": JsonFormatter} if use_json else {"()": TextFormatter, "format": TEXT_FORMAT}
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
