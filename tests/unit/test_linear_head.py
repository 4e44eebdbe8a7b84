"""``train head``'s linear head is scikit-learn's multinomial logistic regression, fitted in torch.

The trainer fits it by full-batch L-BFGS on the embeddings' device; scikit-learn's
``LogisticRegression`` is the independent reference. The objectives match when
``C = 1 / (2 · n · l2)``: ours is the balanced-weighted mean cross-entropy plus ``l2 · ‖W‖²``,
scikit-learn's ``C · Σ wᵢ · CEᵢ + ½ ‖W‖²`` (with balanced weights, ``Σ wᵢ = n``; neither
penalises the intercept).
"""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from models.training.head_training import class_weights, fit_linear


@pytest.mark.parametrize("l2", [1e-4, 1e-2])
def test_linear_head_equals_scikit_learn_logistic_regression(l2: float) -> None:
    g = torch.Generator().manual_seed(0)
    k, n_per = 3, (150, 60, 30)  # imbalanced, so the class weights matter
    centres = torch.randn(k, 8, generator=g)
    y = torch.cat([torch.full((m,), c) for c, m in enumerate(n_per)])
    x = centres[y] + 1.2 * torch.randn(len(y), 8, generator=g)  # overlapping: the penalty matters
    ours = fit_linear(x, y, k, l2, class_weights(y, k))  # float32, as the trainer runs it
    with torch.no_grad():
        p_ours = ours(x).softmax(-1).double()
    c = 1 / (2 * len(y) * l2)
    reference = LogisticRegression(C=c, class_weight="balanced", tol=1e-10, max_iter=10_000)
    p_ref = torch.from_numpy(reference.fit(x.double().numpy(), y.numpy()).predict_proba(x.double().numpy()))
    torch.testing.assert_close(p_ours, p_ref, rtol=0, atol=2e-3)
    assert torch.equal(p_ours.argmax(-1), p_ref.argmax(-1))
