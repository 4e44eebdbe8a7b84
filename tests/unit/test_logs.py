"""Log lines: JSON objects off a terminal, with the message's coordinates as fields."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from worker.logs import JsonFormatter, TextFormatter, logging_config, wants_json, where


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(
        "worker.batching.pipeline", logging.WARNING, __file__, 1, "dead-lettering %s", ("x",), None
    )
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_topic_partition_offset() -> None:
    line = JsonFormatter().format(record(**where("reviews", 2, 427)))
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "worker.batching.pipeline"
    assert entry["message"] == "dead-lettering x"
    assert (entry["topic"], entry["partition"], entry["offset"]) == ("reviews", 2, 427)
    assert entry["ts"].endswith("+00:00")
    assert "topic" not in json.loads(JsonFormatter().format(record()))


def test_text_lines_append_the_coordinates() -> None:
    line = TextFormatter("%(levelname)s %(message)s").format(record(**where("reviews", 0, 5)))
    assert line == "WARNING dead-lettering x [topic=reviews partition=0 offset=5]"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_only_off_a_terminal() -> None:
    assert wants_json(io.StringIO()) and not wants_json(Tty())


@pytest.mark.parametrize("as_json", [True, False])
def test_the_config_applies(as_json: bool, capsys: pytest.CaptureFixture[str]) -> None:
    logging.config.dictConfig(logging_config("info", json=as_json))
    logging.getLogger("t").warning("hello", extra=where("a", 1, 2))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    if as_json:
        assert json.loads(err)["offset"] == 2
    else:
        assert err.endswith("t: hello [topic=a partition=1 offset=2]")
