"""The command line on a bad day: each failure a user can cause ends in one line and a documented
exit code, through the real ``sentiment`` console script (no broker, no model needed here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from worker.ports import free_port

SENTIMENT = str(Path(sys.executable).parent / "sentiment")  # the console script setup.sh installs


def sentiment(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [SENTIMENT, *args], input=stdin, capture_output=True, timeout=120, env={**os.environ, **(env or {})}
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The error line, after checking the exit code and that nothing else was printed."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Unclosed" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def test_the_console_script_is_installed() -> None:
    assert Path(SENTIMENT).is_file() and os.access(SENTIMENT, os.X_OK)


@pytest.mark.parametrize("command", [["produce"], ["tail", "--n", "1"]])
def test_no_broker_is_one_line_naming_the_address(command: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    line = one_line_error(sentiment(*command, "--brokers", address, stdin="很好\n".encode()))
    assert f"cannot reach a Kafka broker at {address}" in line
    assert "--brokers" in line and "SENTIMENT_BROKERS" in line


def test_an_invalid_option_is_named_as_typed() -> None:
    line = one_line_error(sentiment("worker", "--batch-size", "0"))
    assert "--batch-size 0" in line and "greater than or equal to 1" in line
    assert "batch_size" not in line


def test_an_invalid_variable_is_named_as_set() -> None:
    line = one_line_error(sentiment("worker", env={"SENTIMENT_MAX_IN_FLIGHT": "999"}))
    assert "SENTIMENT_MAX_IN_FLIGHT=999" in line and "less than or equal to 64" in line
    assert "max_in_flight" not in line


def test_help_shows_no_built_in_default_for_credentials_and_tls_files() -> None:
    proc = sentiment("worker", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "built-in" not in text
    for flag in ("--sasl-username", "--sasl-password", "--ssl-cafile", "--ssl-certfile", "--ssl-keyfile"):
        option = re.search(rf"{flag} (TEXT|PATH) [^\]]*\]", text)
        assert option is not None, flag
        entry = option.group(0)
        assert "[env: SENTIMENT_" in entry and "default" not in entry, entry


@pytest.mark.parametrize("kind", ["lora", "head"])
def test_a_hub_id_not_on_this_machine_says_how_to_get_it(kind: str, tmp_path: Path) -> None:
    data = tmp_path / "train.tsv"
    data.write_text("很好\tpositive\n太差\tnegative\n", encoding="utf-8")
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    base = "Qwen/Qwen3-0.6B" if kind == "lora" else "Qwen/Qwen3-Embedding-0.6B"
    proc = sentiment(
        "train", kind, "--base", base, "--train", str(data), "--out", str(tmp_path / "o"), env=env
    )
    line = one_line_error(proc)
    assert f"--base {base}: no such directory, and no model {base} in the local Hugging Face cache" in line
    assert f'snapshot_download("{base}", local_dir="bases/' in line
    assert f"sentiment base tiny --like {base}" in line
    assert "config.json" not in line
    assert not (tmp_path / "o").exists()


def test_a_missing_base_directory_is_not_called_a_missing_config(tmp_path: Path) -> None:
    data = tmp_path / "train.tsv"
    data.write_text("很好\tpositive\n太差\tnegative\n", encoding="utf-8")
    missing = tmp_path / "bases" / "nope"
    proc = sentiment(
        "train", "lora", "--base", str(missing), "--train", str(data), "--out", str(tmp_path / "o")
    )
    assert one_line_error(proc) == f"error: --base {missing}: no such directory"


def test_a_hub_id_in_the_local_cache_is_its_snapshot(tmp_path: Path) -> None:
    """Laid out as huggingface_hub writes its cache; resolved by huggingface_hub itself."""
    repo = tmp_path / "hub" / "models--Qwen--Qwen3-0.6B"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    code = "from worker.commands.cli import base_directory; print(base_directory('Qwen/Qwen3-0.6B'))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == snapshot


def test_produce_of_a_gbk_file_names_file_and_line_and_sends_nothing(tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.txt"
    reviews.write_bytes("物流很快\n".encode() + "质量很好\n".encode("gbk"))
    address = f"127.0.0.1:{free_port()}"  # nothing listens: the file is refused before any connection
    line = one_line_error(sentiment("produce", "--file", str(reviews), "--brokers", address))
    assert line.startswith(f"error: {reviews}:2: not UTF-8") and "iconv -f GBK -t UTF-8" in line


def test_produce_of_gbk_on_stdin_names_stdin() -> None:
    proc = sentiment("produce", "--brokers", f"127.0.0.1:{free_port()}", stdin="差评\n".encode("gbk"))
    assert one_line_error(proc).startswith("error: <stdin>:1: not UTF-8")


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_produce_of_an_empty_file_is_an_error_not_sent_0(tmp_path: Path, content: bytes) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(content)
    line = one_line_error(sentiment("produce", "--file", str(empty), "--brokers", f"127.0.0.1:{free_port()}"))
    assert line.startswith(f"error: {empty} holds no messages to send")
