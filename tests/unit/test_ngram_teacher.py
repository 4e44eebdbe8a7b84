"""The demo's n-gram teacher: TF-IDF character n-grams, logistic regression, out-of-fold scores."""

from __future__ import annotations

import math
import random

import pytest
import torch

from models.demo.ngram_teacher import NgramClassifier, TfidfFeatures, char_ngrams, out_of_fold_log_probs


def test_char_ngrams_lower_case_and_collapse_whitespace() -> None:
    assert char_ngrams("Ab  c", sizes=(1, 2)) == ["a", "b", " ", "c", "ab", "b ", " c"]
    assert char_ngrams("很好", sizes=(1, 2, 3)) == ["很", "好", "很好"]


def test_tfidf_rows_are_sublinear_idf_weighted_and_unit_length() -> None:
    features = TfidfFeatures.fit(["好好", "好", "差"])
    # "好" is in 2 of 3 texts: idf = log(4/3) + 1; "好好" in 1: log(4/2) + 1
    idf_good, idf_pair = math.log(4 / 3) + 1, math.log(2) + 1
    row = features.transform(["好好", "未知"]).to_dense()
    tf_good = 1 + math.log(2)
    norm = math.hypot(tf_good * idf_good, idf_pair)
    assert row[0, features.index["好"]].item() == pytest.approx(tf_good * idf_good / norm)
    assert row[0, features.index["好好"]].item() == pytest.approx(idf_pair / norm)
    assert row[0].norm().item() == pytest.approx(1.0)
    assert row[1].abs().sum().item() == 0  # nothing known: an all-zero row, not NaN


def test_logistic_regression_learns_the_telling_characters() -> None:
    rng = random.Random(0)
    filler = "的了是在我有这个们"
    texts, labels = [], []
    for i in range(200):
        word = "好" if i % 2 else "差"
        texts.append("".join(rng.choice(filler) for _ in range(6)) + word)
        labels.append(i % 2)
    model = NgramClassifier(TfidfFeatures.fit(texts), 2)
    model.fit(texts, labels)
    logp = model.log_probs(["这个好", "这个差"])
    assert logp.exp().sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert logp.argmax(-1).tolist() == [1, 0]


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
