"""``predict``'s stop handling (worker/commands/predict.py StopSignals) without a model: a signal during a
write waits for the write, one outside it stops at once, and an ignored SIGINT stays ignored."""

from __future__ import annotations

import os
import signal
import time

import pytest

from worker.commands.predict import Stopped, StopSignals


def test_a_signal_during_a_write_waits_until_the_write_is_whole() -> None:
    written: list[str] = []
    with pytest.raises(Stopped) as stop, StopSignals() as stops, stops.held():
        written.append("first half")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler has run by now; it must not raise here
        written.append("second half")
    assert written == ["first half", "second half"]
    assert stop.value.signum == signal.SIGINT


def test_a_signal_outside_a_write_stops_at_once() -> None:
    reached = False
    with pytest.raises(Stopped) as stop, StopSignals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        reached = True
    assert not reached and stop.value.signum == signal.SIGTERM


def test_a_stop_swallowed_where_it_was_raised_still_ends_the_next_write() -> None:
    written = []
    with pytest.raises(Stopped), StopSignals() as stops:
        try:  # as Python does with an exception raised in a finaliser ("Exception ignored in …")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Stopped:
            pass
        with stops.held():
            written.append("chunk")
    assert written == []


def test_the_previous_handlers_come_back_and_an_ignored_sigint_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a script
    try:
        term = signal.getsignal(signal.SIGTERM)
        with StopSignals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # ignored: nothing raised
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGINT, previous)
