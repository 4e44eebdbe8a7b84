"""Metrics from probabilities, checked against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from models.evaluation import evaluate, format_report


def test_metrics_match_a_hand_computed_example() -> None:
    # true:  neg neg neg pos pos ; predicted: neg pos neg pos neg
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    report = evaluate(["neg", "pos"], [0, 0, 0, 1, 1], probs)
    assert report.accuracy == pytest.approx(3 / 5)
    assert report.confusion == [[2, 1], [1, 1]]
    assert report.per_class["neg"].precision == pytest.approx(2 / 3)
    assert report.per_class["neg"].recall == pytest.approx(2 / 3)
    assert report.per_class["pos"].precision == pytest.approx(1 / 2)
    assert report.per_class["pos"].support == 2
    assert report.macro_f1 == pytest.approx((2 / 3 + 1 / 2) / 2)
    # confidences 0.9, 0.8, 0.7 (correct) each alone in a bin; 0.6 and 0.55 (both wrong) share (0.5, 0.6]
    assert report.ece == pytest.approx((0.1 + 0.6 + 0.2 + 0.3 + 0.55) / 5)
    text = format_report(report)
    assert "accuracy 0.6000" in text and "confusion" in text


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected"):
        evaluate(["a", "b"], [0, 1, 1], torch.zeros(2, 2))
