"""--event-loop: which loop asyncio builds afterwards, and a clear error for a uvloop that is missing."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from click.testing import CliRunner

from schemas.errors import ConfigError
from worker.commands.cli import cli
from worker.event_loop import loop_name, use_event_loop


@pytest.fixture(autouse=True)
def default_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


def loop_type() -> type:
    loop = asyncio.new_event_loop()
    try:
        return type(loop)
    finally:
        loop.close()


async def running_loop_name() -> str:
    return loop_name(asyncio.get_running_loop())


def test_auto_and_uvloop_build_uvloop_loops_and_say_which() -> None:
    for choice in ("auto", "uvloop"):
        assert use_event_loop(choice) == f"uvloop {uvloop.__version__}"
        assert loop_type() is uvloop.Loop
        assert asyncio.run(running_loop_name()) == f"uvloop {uvloop.__version__}"


def test_asyncio_undoes_an_earlier_uvloop() -> None:
    use_event_loop("auto")
    assert use_event_loop("asyncio") == "asyncio"
    assert issubclass(loop_type(), asyncio.SelectorEventLoop)  # the standard library's, on Unix
    assert asyncio.run(running_loop_name()) == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert use_event_loop("auto") == "asyncio"
    assert issubclass(loop_type(), asyncio.SelectorEventLoop)
    with pytest.raises(ConfigError, match=r"--event-loop uvloop .*not installed"):
        use_event_loop("uvloop")


def test_the_worker_command_refuses_a_missing_uvloop_before_anything_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 with one line naming the setting, before the broker is tried (none is running)."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    from worker.commands.cli import main

    monkeypatch.setattr(sys, "argv", ["sentiment", "worker", "--event-loop", "uvloop",
                                      "--brokers", "127.0.0.1:1", "--home", str(tmp_path)])  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --event-loop uvloop (SENTIMENT_EVENT_LOOP): uvloop is not installed"), err
    assert len(err.strip().splitlines()) == 1, err


def test_the_worker_help_names_the_choices() -> None:
    shown = CliRunner().invoke(cli, ["worker", "--help"])
    assert shown.exit_code == 0
    assert "--event-loop" in shown.output and "uvloop" in shown.output and "asyncio" in shown.output
