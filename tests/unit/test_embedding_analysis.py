"""``train head``'s embedding analysis: k-means ARI and the t-SNE map, on vectors whose answer is known."""

from __future__ import annotations

import pytest
import torch

from models.training.embedding_analysis import analyse, sample


def blobs(
    n_per: int, k: int, dim: int = 16, spread: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, list[int]]:
    """``k`` tight clusters around random unit centres, interleaved: the labels are the clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=-1) * 3
    labels = [i % k for i in range(n_per * k)]
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return x, labels


def test_clusters_that_are_the_labels_score_an_ari_of_one_whatever_the_label_names() -> None:
    x, y = blobs(60, 3)
    assert analyse(x, y, 3).ari == pytest.approx(1.0)
    renamed = [(label + 1) % 3 for label in y]  # the ARI does not care which cluster is which label
    assert analyse(x, renamed, 3).ari == pytest.approx(1.0)


def test_labels_unrelated_to_the_clusters_score_about_zero() -> None:
    x, _ = blobs(100, 2)
    shuffled = torch.randint(0, 2, (len(x),), generator=torch.Generator().manual_seed(1)).tolist()
    assert abs(analyse(x, shuffled, 2).ari) < 0.05


def test_the_map_keeps_clusters_apart_and_is_reproducible() -> None:
    x, y = blobs(40, 2)
    a = analyse(x, y, 2, seed=3, max_tsne=50)
    assert a.tsne.shape == (50, 2) and len(a.tsne_index) == 50 and torch.isfinite(a.tsne).all()
    shown = torch.tensor([y[i] for i in a.tsne_index])
    centre = [a.tsne[shown == c].mean(0) for c in (0, 1)]
    within = max((a.tsne[shown == c] - centre[c]).norm(dim=-1).max() for c in (0, 1))
    assert (centre[0] - centre[1]).norm() > 2 * within, "two tight clusters stay two clusters on the map"
    assert torch.equal(analyse(x, y, 2, seed=3, max_tsne=50).tsne, a.tsne)
    assert a.record() == {"kmeans_k": 2, "kmeans_ari": 1.0, "kmeans_points": 80, "tsne_points": 50, "seed": 3}


def test_samples_are_bounded_sorted_and_seeded() -> None:
    assert sample(5, 10, 0) == [0, 1, 2, 3, 4]
    rows = sample(1000, 100, 7)
    assert len(rows) == 100 == len(set(rows)) and rows == sorted(rows) and rows == sample(1000, 100, 7)
    assert rows != sample(1000, 100, 8)


def test_mismatched_or_too_few_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        analyse(torch.zeros(10, 4), [0] * 9, 2)
    with pytest.raises(ValueError, match="too few"):
        analyse(torch.zeros(3, 4), [0, 1, 0], 2)
