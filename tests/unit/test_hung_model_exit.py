"""A worker whose model call hangs exits without waiting for it (Python's exit would join the
model thread forever): with 0 after a clean stop, and with 1 when the stop came from a crash, which
``--processes`` then restarts (it does not restart a worker that exits 0)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from worker import app as worker_app
from worker.app import KafkaService


class Stops:
    """The publisher's and the source's ``stop``: fakes (this is a unit test of the exit code)."""

    def __init__(self) -> None:
        self.stopped = 0

    async def stop(self) -> None:
        self.stopped += 1


@pytest.mark.parametrize(("crash", "code"), [(None, 0), (RuntimeError("the consumer failed"), 1)])
def test_a_hung_model_call_exits_at_once_with_the_code_of_the_stop(
    crash: BaseException | None, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    exits: list[int] = []

    def fake_exit(status: int) -> None:
        exits.append(status)

    monkeypatch.setattr(worker_app.os, "_exit", fake_exit)
    monkeypatch.setattr(worker_app.logging, "shutdown", lambda: None)  # pytest's own handlers stay
    publisher, source = Stops(), Stops()
    service: Any = KafkaService(
        settings=None,  # type: ignore[arg-type]  # not read on the way out
        publisher=publisher,  # type: ignore[arg-type]
        source=source,  # type: ignore[arg-type]
        model_busy_s=lambda: 42.0,  # a call has been running for 42 s
        app_crash=lambda: crash,
    )
    asyncio.run(service.on_stop())
    assert (source.stopped, publisher.stopped) == (1, 1)
    assert exits == [code]


def test_an_idle_model_leaves_the_exit_to_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(worker_app.os, "_exit", exits.append)
    monkeypatch.setattr(worker_app.logging, "shutdown", lambda: None)
    service: Any = KafkaService(
        settings=None,  # type: ignore[arg-type]
        publisher=Stops(),  # type: ignore[arg-type]
        source=Stops(),  # type: ignore[arg-type]
        model_busy_s=lambda: 0.0,
        app_crash=lambda: RuntimeError("crashed"),
    )
    asyncio.run(service.on_stop())
    assert exits == []
