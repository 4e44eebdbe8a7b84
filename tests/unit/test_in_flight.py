"""The in-flight tracker behind sentiment_in_flight_batches and /readyz's stuck-batch check."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from worker.batching.scheduler import InFlight
from worker.metrics import Metrics


def test_tracks_count_and_oldest_age_and_clears_on_error() -> None:
    metrics = Metrics.create(CollectorRegistry())
    tracker = InFlight(metrics)
    assert tracker.oldest_age() == 0.0
    with tracker.track():
        time.sleep(0.05)
        with tracker.track():
            assert metrics.in_flight_batches._value.get() == 2
            assert tracker.oldest_age() >= 0.05
    assert metrics.in_flight_batches._value.get() == 0
    with pytest.raises(RuntimeError), tracker.track():
        raise RuntimeError("batch failed")
    assert metrics.in_flight_batches._value.get() == 0 and tracker.oldest_age() == 0.0
