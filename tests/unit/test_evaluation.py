"""Metrics from probabilities, checked against values worked out by hand, against scikit-learn and
against the ECE definition computed independently with numpy."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from models.training.evaluation import evaluate, format_report


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


# --- the same numbers as an independent reference -------------------------------------------------
# Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix must equal
# scikit-learn's on the same predictions (argmax of the probabilities). Our convention for a ratio
# with a zero denominator is 0 (precision of a class never predicted, recall of a class absent from
# the truth, F1 when precision + recall = 0): scikit-learn's ``zero_division=0``. Classes are always
# all of ``labels`` (``labels=range(k)``), so a class absent from both truth and predictions still
# counts in the macro average, with F1 0.
#
# scikit-learn has no ECE, so the reference is computed here from the definition: confidence = the
# top probability, ``bins`` equal-width bins B_m = (m/bins, (m+1)/bins] (left-open, right-closed,
# so a confidence of exactly 0.5 falls in (0.4, 0.5] and 1.0 in the last bin), and
# ECE = sum_m |sum_{i in B_m} (correct_i - confidence_i)| / n.

TOL = 1e-12


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _probs_predicting(rng: np.random.Generator, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Random probabilities whose argmax is ``y_pred`` (by a clear margin, so never a tie)."""
    logits = rng.normal(size=(len(y_pred), k))
    logits[np.arange(len(y_pred)), y_pred] = logits.max(axis=1) + rng.uniform(0.05, 4.0, len(y_pred))
    return _softmax(logits)


def _case(name: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(k, y_true, probs) for one named prediction set; probs float64 unless the name says float32."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name == "binary_random":
        y = rng.integers(0, 2, 200)
        return 2, y, rng.dirichlet([1.0, 1.0], 200)
    if name == "three_class_random":
        y = rng.integers(0, 3, 500)
        return 3, y, rng.dirichlet([0.7, 0.7, 0.7], 500)
    if name == "three_class_random_float32":
        y = rng.integers(0, 3, 500)
        return 3, y, rng.dirichlet([0.7, 0.7, 0.7], 500).astype(np.float32)
    if name == "three_class_calibrated":  # truth drawn from the probabilities: gaps of both signs
        probs = rng.dirichlet([0.5, 0.5, 0.5], 2000)
        return 3, (rng.random((2000, 1)) > probs.cumsum(axis=1)).sum(axis=1), probs
    if name == "binary_imbalanced":
        y = (rng.random(300) < 0.07).astype(np.int64)
        pred = np.where(rng.random(300) < 0.9, 0, 1)
        return 2, y, _probs_predicting(rng, pred, 2)
    if name == "three_class_imbalanced":
        y = rng.choice(3, 400, p=[0.85, 0.1, 0.05])
        pred = np.where(rng.random(400) < 0.6, y, rng.choice(3, 400, p=[0.9, 0.08, 0.02]))
        return 3, y, _probs_predicting(rng, pred, 3)
    if name == "class_never_predicted":
        y = rng.integers(0, 3, 150)
        return 3, y, _probs_predicting(rng, rng.integers(0, 2, 150), 3)
    if name == "class_absent_from_truth":
        y = rng.choice([0, 2], 150)
        return 3, y, _probs_predicting(rng, rng.integers(0, 3, 150), 3)
    if name == "class_absent_and_never_predicted":
        y = rng.integers(0, 2, 120)
        return 3, y, _probs_predicting(rng, rng.integers(0, 2, 120), 3)
    if name == "everything_one_class":
        y = np.zeros(50, dtype=np.int64)
        return 3, y, _probs_predicting(rng, y, 3)
    if name == "perfect_three_class":
        y = rng.integers(0, 3, 90)
        return 3, y, _probs_predicting(rng, y, 3)
    if name == "all_wrong_binary":
        y = rng.integers(0, 2, 60)
        return 2, y, _probs_predicting(rng, 1 - y, 2)
    if name == "single_example":
        return 3, np.array([1]), np.array([[0.2, 0.3, 0.5]])
    if name == "float64_near_ties_and_edges":  # differences a float32 round trip would erase
        probs = np.array(
            [
                [0.4999999999, 0.5000000001],
                [0.5000000001, 0.4999999999],
                [0.6000000001, 0.3999999999],
                [0.3999999999, 0.6000000001],
                [0.7000000001, 0.2999999999],
                [0.6999999999, 0.3000000001],
            ]
        )
        return 2, np.array([1, 1, 0, 0, 0, 1]), probs
    if name in ("confidences_on_bin_edges", "confidences_on_bin_edges_float32"):
        # exact edge values (0.5, 0.6, 0.7, 1.0, 0.4) and a tie (first maximum wins, as np.argmax)
        probs = np.array(
            [
                [0.5, 0.5, 0.0],
                [0.6, 0.3, 0.1],
                [0.3, 0.7, 0.0],
                [0.0, 0.0, 1.0],
                [1.0, 0.0, 0.0],
                [0.4, 0.3, 0.3],
                [0.2, 0.4, 0.4],
                [0.1, 0.2, 0.7],
            ]
        )
        return 3, np.array([0, 0, 1, 2, 1, 0, 2, 0]), probs.astype(np.float32 if "32" in name else np.float64)
    raise AssertionError(name)


CASES = [
    "binary_random",
    "three_class_random",
    "three_class_random_float32",
    "three_class_calibrated",
    "binary_imbalanced",
    "three_class_imbalanced",
    "class_never_predicted",
    "class_absent_from_truth",
    "class_absent_and_never_predicted",
    "everything_one_class",
    "perfect_three_class",
    "all_wrong_binary",
    "single_example",
    "float64_near_ties_and_edges",
    "confidences_on_bin_edges",
    "confidences_on_bin_edges_float32",
]


def _reference_ece(
    confidence: np.ndarray, correct: np.ndarray, bins: int, edge_dtype: type = np.float64
) -> float:
    # edges m / bins, rounded to the probabilities' precision: a float32 0.6 (0.6000000238...) is *on*
    # the 0.6 edge, as whoever wrote it meant, not just above it
    edges = (np.arange(bins + 1) / bins).astype(edge_dtype).astype(np.float64)
    which = np.digitize(confidence, edges, right=True) - 1  # edges[m] < c <= edges[m + 1] -> m
    assert which.min() >= 0 and which.max() < bins  # every confidence is in (0, 1]
    gaps = np.bincount(which, weights=correct - confidence, minlength=bins)
    return float(np.abs(gaps).sum() / len(confidence))


@pytest.mark.parametrize("name", CASES)
def test_metrics_equal_scikit_learn_on_the_same_predictions(name: str) -> None:
    k, y_true, probs = _case(name)
    labels = [f"c{i}" for i in range(k)]
    ids = list(range(k))
    y_pred = probs.argmax(axis=1)
    report = evaluate(labels, y_true.tolist(), torch.from_numpy(probs))

    assert report.labels == tuple(labels)
    assert report.n == len(y_true)
    assert report.accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=TOL)
    assert report.macro_f1 == pytest.approx(
        f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0), abs=TOL
    )
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average=None, zero_division=0
    )
    assert list(report.per_class) == labels
    ours = [report.per_class[label] for label in labels]
    np.testing.assert_allclose([c.precision for c in ours], precision, rtol=0, atol=TOL)
    np.testing.assert_allclose([c.recall for c in ours], recall, rtol=0, atol=TOL)
    np.testing.assert_allclose([c.f1 for c in ours], f1, rtol=0, atol=TOL)
    assert [c.support for c in ours] == support.tolist()
    assert report.confusion == confusion_matrix(y_true, y_pred, labels=ids).tolist()


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("bins", [10, 15])
def test_ece_equals_its_definition(name: str, bins: int) -> None:
    k, y_true, probs = _case(name)
    report = evaluate([f"c{i}" for i in range(k)], y_true.tolist(), torch.from_numpy(probs), bins=bins)
    confidence = probs.astype(np.float64).max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    assert report.ece == pytest.approx(_reference_ece(confidence, correct, bins, probs.dtype.type), abs=TOL)


def test_ece_default_is_ten_bins() -> None:
    _, y_true, probs = _case("three_class_calibrated")
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == y_true).astype(np.float64)
    report = evaluate(["a", "b", "c"], y_true.tolist(), torch.from_numpy(probs))
    assert report.ece == pytest.approx(_reference_ece(confidence, correct, 10), abs=TOL)
    assert report.ece != pytest.approx(_reference_ece(confidence, correct, 15), abs=1e-6)
