"""``train head``'s linear head: scikit-learn's ``LogisticRegression``, copied into a torch head.

Two independent checks. The checkpoint's head (saved and loaded as the worker loads it) gives
the probabilities of a ``LogisticRegression`` with ``class_weight="balanced"`` fitted here in
float64, which checks the copy of ``coef_``/``intercept_`` (one row for two classes); the trainer
fits on the float32 embeddings, which bounds the agreement at a few 1e-4. And its
solution is the minimum of the objective the trainer means, balanced-weighted mean cross-entropy
plus ``l2 · ‖W‖²`` over a [k, d] ``W`` (intercepts not penalised), found here by a minimal torch
L-BFGS written from that definition alone: the check that ``C`` means the same ``l2``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from models.engine.heads import load_head, save_head
from models.training.head_training import class_weights, fit_linear

D = 8


def blobs(n_per: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes (the penalty matters), imbalanced (the class weights matter)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(n_per), D, generator=g)
    y = torch.cat([torch.full((m,), c) for c, m in enumerate(n_per)])
    return centres[y] + 1.2 * torch.randn(len(y), D, generator=g), y


def saved(head: nn.Sequential, tmp_path: Path, k: int) -> nn.Sequential:
    """The head as an ``embedding-head`` checkpoint stores it and the worker loads it."""
    save_head(head, tmp_path)
    return load_head(tmp_path, in_dim=D, num_labels=k)


def probabilities(head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head(x).softmax(-1).double()


def reference_minimum(
    x: torch.Tensor, y: torch.Tensor, k: int, l2: float, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin over (W [k, d], b [k]) of cross_entropy(xWᵀ + b, y, weight=weights) + l2·‖W‖², in float64."""
    x, weights = x.double(), weights.double()
    w = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=5000, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ w.T + b, y, weight=weights) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def objective(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, l2: float) -> float:
    w, b, weights = w.detach().double(), b.detach().double(), class_weights(y, w.shape[0]).double()
    return float(nn.functional.cross_entropy(x.double() @ w.T + b, y, weight=weights) + l2 * w.square().sum())


@pytest.mark.parametrize("n_per", [(150, 60, 30), (150, 40)], ids=["3 classes", "2 classes"])
@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_the_saved_head_gives_scikit_learns_probabilities(
    n_per: tuple[int, ...], l2: float, tmp_path: Path
) -> None:
    x, y = blobs(n_per)
    k, n = len(n_per), len(y)
    head = saved(fit_linear(x, y, k, l2, class_weights(y, k)), tmp_path, k)
    # balanced weights sum to n; two classes are one row β, which the head stores as [-β/2, β/2]
    c = 1 / ((1 if k == 2 else 2) * n * l2)
    model = LogisticRegression(C=c, class_weight="balanced", tol=1e-10, max_iter=10_000)
    p_sklearn = torch.from_numpy(model.fit(x.double().numpy(), y.numpy()).predict_proba(x.double().numpy()))
    torch.testing.assert_close(probabilities(head, x), p_sklearn, rtol=0, atol=5e-4)
    assert torch.equal(probabilities(head, x).argmax(-1), p_sklearn.argmax(-1))


@pytest.mark.parametrize("n_per", [(150, 60, 30), (150, 40)], ids=["3 classes", "2 classes"])
@pytest.mark.parametrize("l2", [1e-4, 1e-3, 1e-2])
def test_the_head_minimises_the_trainers_objective(n_per: tuple[int, ...], l2: float) -> None:
    x, y = blobs(n_per, seed=1)
    k = len(n_per)
    weights = class_weights(y, k)
    ours = fit_linear(x, y, k, l2, weights)[0]
    assert isinstance(ours, nn.Linear)
    w, b = reference_minimum(x, y, k, l2, weights)
    assert objective(ours.weight, ours.bias, x, y, l2) == pytest.approx(objective(w, b, x, y, l2), abs=1e-6)
    with torch.no_grad():
        p_reference = (x.double() @ w.T + b).softmax(-1)
        torch.testing.assert_close(ours(x).softmax(-1).double(), p_reference, rtol=0, atol=1e-3)
        # the same least-norm weights (the softmax ignores a shift shared by all rows; the penalty picks zero)
        torch.testing.assert_close(ours.weight.double(), w, rtol=0, atol=1e-2 * float(w.abs().max()))


def test_a_class_missing_from_train_gets_probability_zero() -> None:
    x, y3 = blobs((100, 50, 70), seed=2)
    keep = y3 != 1
    x, y = x[keep], y3[keep]  # labels 0 and 2 of 3
    weights = class_weights(y, 3)
    assert weights[1] == 0
    head = fit_linear(x, y, 3, 1e-3, weights)
    p = probabilities(head, x)
    assert p[:, 1].max() < 1e-30
    w, b = reference_minimum(x, y, 3, 1e-3, weights)  # its class-1 intercept heads for -∞
    p_reference = (x.double() @ w.T + b).softmax(-1)
    torch.testing.assert_close(p[:, [0, 2]], p_reference[:, [0, 2]], rtol=0, atol=1e-3)


def test_a_single_training_class_is_predicted_for_everything() -> None:
    x, _ = blobs((30, 30))
    y = torch.ones(60, dtype=torch.int64)
    p = probabilities(fit_linear(x, y, 2, 1e-3, class_weights(y, 2)), x)
    torch.testing.assert_close(p, torch.tensor([[0.0, 1.0]], dtype=torch.float64).expand(60, 2))
