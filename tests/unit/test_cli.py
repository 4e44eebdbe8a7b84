from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.commands.cli import cli

SUBCOMMANDS = [
    "worker",
    "broker",
    "produce",
    "tail",
    "predict",
    "demo",
    "train",
    "train head",
    "train lora",
    "eval",
]


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help_naming_its_env_vars(name: str) -> None:
    result = CliRunner().invoke(cli, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if name not in ("demo", "train lora", "eval"):
        assert "SENTIMENT_" in result.output


def test_worker_help_explains_the_bind_address_and_where_the_password_goes() -> None:
    text = " ".join(CliRunner().invoke(cli, ["worker", "--help"]).output.split())
    assert "kubelet's probes and Prometheus reach the pod's IP" in text
    assert "On a shared host bind 127.0.0.1" in text
    assert "SENTIMENT_SASL_PASSWORD, not --sasl-password" in text
    assert "--replication-factor" in text and "--topic-config" in text


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_missing_checkpoint_is_a_clear_error_not_a_traceback() -> None:
    proc = run("predict", "--checkpoint", "/nonexistent/ckpt", "--text", "很好")
    assert proc.returncode == 2
    assert "error: checkpoint directory /nonexistent/ckpt does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_setting_from_the_environment_is_reported() -> None:
    import os

    proc = run("predict", "--text", "x", env={**os.environ, "SENTIMENT_BATCH_SIZE": "many"})
    assert proc.returncode == 2
    assert "SENTIMENT_BATCH_SIZE=many" in proc.stderr and "Traceback" not in proc.stderr


def test_an_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.settings import load_settings

    monkeypatch.setenv("SENTIMENT_CHECKPOINT", "")  # what compose passes for an unset ${CHECKPOINT:-}
    monkeypatch.setenv("SENTIMENT_BATCH_SIZE", "")
    settings = load_settings()
    assert settings.checkpoint is None and settings.batch_size == 256


def test_report_without_prometheus_is_a_clear_error(tmp_path: Path) -> None:
    from worker.ports import free_port

    proc = run("report", "--prometheus", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "r.png"))
    assert proc.returncode == 2
    assert "error: cannot reach Prometheus" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_broker_is_a_clear_error() -> None:
    from worker.ports import free_port

    proc = run("worker", "--brokers", f"127.0.0.1:{free_port()}", "--web-port", "0")
    assert proc.returncode == 2
    assert "error: cannot reach any Kafka broker" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_prints_json_lines(tiny_checkpoint: object) -> None:
    import orjson

    proc = run("predict", "--checkpoint", str(tiny_checkpoint), "--text", "很好", "--text", "太差了" * 40)
    assert proc.returncode == 0, proc.stderr
    lines = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert [line["text"][:2] for line in lines] == ["很好", "太差"]
    assert [line["truncated"] for line in lines] == [False, True]
    for line in lines:
        assert set(line["scores"]) == {"negative", "positive"}
        assert line["label"] == max(line["scores"], key=line["scores"].get)
