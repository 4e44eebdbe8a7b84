"""The demo's n-gram teacher: TF-IDF character n-grams, logistic regression, out-of-fold scores.

The features are checked against the TF-IDF formula worked by hand, the classifier against the
objective it is meant to minimise (a float64 torch L-BFGS written from its definition), and the
out-of-fold scores against texts whose labels only a model that saw them could know.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from models.demo.ngram_teacher import C, NgramClassifier, TfidfFeatures, out_of_fold_log_probs


def telling(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Filler characters, then 好 (label 1) or 差 (label 0)."""
    rng = random.Random(seed)
    filler = "的了是在我有这个们"
    texts, labels = [], []
    for i in range(n):
        texts.append("".join(rng.choice(filler) for _ in range(6)) + ("好" if i % 2 else "差"))
        labels.append(i % 2)
    return texts, labels


def test_ngrams_are_characters_1_to_3_lower_cased_with_whitespace_runs_collapsed() -> None:
    features = TfidfFeatures.fit(["Ab  c"])
    assert set(features.index) == {"a", "b", " ", "c", "ab", "b ", " c", "ab ", "b c"}
    assert len(features) == 9
    rows = features.transform(["ab c", "AB \t C"]).toarray()
    assert (rows[0] == rows[1]).all()


def test_tfidf_rows_are_sublinear_idf_weighted_and_unit_length() -> None:
    features = TfidfFeatures.fit(["好好", "好", "差"])
    # "好" is in 2 of 3 texts: idf = log(4/3) + 1; "好好" in 1: log(4/2) + 1
    idf_good, idf_pair = math.log(4 / 3) + 1, math.log(2) + 1
    row = features.transform(["好好", "未知"]).toarray()
    tf_good = 1 + math.log(2)
    norm = math.hypot(tf_good * idf_good, idf_pair)
    assert row[0, features.index["好"]] == pytest.approx(tf_good * idf_good / norm)
    assert row[0, features.index["好好"]] == pytest.approx(idf_pair / norm)
    assert math.fsum(row[0] ** 2) == pytest.approx(1.0)
    assert abs(row[1]).sum() == 0  # nothing known: an all-zero row, not NaN


def test_the_training_rows_are_the_rows_any_text_gets() -> None:
    texts, _ = telling(50)
    features = TfidfFeatures.fit(texts)
    first = features.transform(texts)  # kept from fitting
    again = features.transform(texts)  # computed
    assert abs(first - again).max() < 1e-12


def test_logistic_regression_learns_the_telling_characters() -> None:
    texts, labels = telling(200)
    model = NgramClassifier(TfidfFeatures.fit(texts), 2)
    model.fit(texts, labels)
    logp = model.log_probs(["这个好", "这个差"])
    assert logp.dtype == torch.float32
    assert logp.exp().sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert logp.argmax(-1).tolist() == [1, 0]


def test_the_fit_minimises_c_times_the_summed_cross_entropy_plus_half_the_squared_weights() -> None:
    texts, labels = telling(120, seed=3)
    labels = [y if i % 7 else 1 - y for i, y in enumerate(labels)]  # some noise: the penalty matters
    features = TfidfFeatures.fit(texts)
    model = NgramClassifier(features, 2)
    model.fit(texts, labels, c=C)
    # the reference: two classes are one weight row β on the logit of the second class
    x = torch.from_numpy(features.transform(texts).toarray())
    y = torch.tensor(labels, dtype=torch.float64)
    beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta, bias], max_iter=5000, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = nn.functional.binary_cross_entropy_with_logits(x @ beta + bias, y, reduction="sum")
        loss = C * ce + 0.5 * beta.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        reference = torch.sigmoid(x @ beta + bias)
    # lbfgs stops once no gradient entry exceeds 1e-4 (0.005 off here); C/2 or 2C would be 0.09 off
    torch.testing.assert_close(model.log_probs(texts)[:, 1].double().exp(), reference, rtol=0, atol=0.02)


def test_log_probabilities_are_finite_and_a_class_absent_from_train_gets_none() -> None:
    texts, labels = telling(100)
    labels = [2 * y for y in labels]  # classes 0 and 2 of 3
    model = NgramClassifier(TfidfFeatures.fit(texts), 3)
    model.fit(texts, labels, c=1e6)  # all but separable: near-certain probabilities
    logp = model.log_probs(texts)
    assert torch.isfinite(logp).all()
    assert logp.logsumexp(-1).tolist() == pytest.approx([0.0] * 100, abs=1e-5)
    assert logp[:, 1].max() < -1000
    assert logp.argmax(-1).tolist() == labels
    with pytest.raises(ValueError, match="class indices below 3"):
        model.fit(texts, [3] * 100)


def test_out_of_fold_scores_come_from_models_that_never_saw_the_text() -> None:
    # every text is its own unique characters and the labels are coin flips: a model that saw a
    # text can recall its label, one that did not can only guess
    rng = random.Random(1)
    texts = [chr(0x4E00 + 3 * i) + chr(0x4E01 + 3 * i) for i in range(300)]
    labels = [rng.randint(0, 1) for _ in texts]
    truth = torch.tensor(labels)
    seen = NgramClassifier(TfidfFeatures.fit(texts), 2)
    seen.fit(texts, labels)
    assert (seen.log_probs(texts).argmax(-1) == truth).float().mean() > 0.95
    folds: list[int] = []
    oof = out_of_fold_log_probs(texts, labels, 2, folds=5, progress=folds.append)
    assert folds == [1, 2, 3, 4, 5]
    assert (oof.argmax(-1) == truth).float().mean() < 0.65
    assert oof.shape == (300, 2) and torch.isfinite(oof).all()


def test_out_of_fold_needs_enough_texts() -> None:
    with pytest.raises(ValueError, match="at least 5 texts"):
        out_of_fold_log_probs(["好", "差"], [1, 0], 2)
