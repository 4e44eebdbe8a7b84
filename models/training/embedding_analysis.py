"""The embedding recipes' look at the vectors before a head is fitted: k-means and a t-SNE map.

``sentiment train head`` runs it on the train split's embeddings: k-means with one cluster per
label, scored by the adjusted Rand index (ARI) of the clusters against the labels (1: the
clusters are the labels; about 0: no better than chance), and a 2-D t-SNE map that the trainer
draws beside the PCA projection (``embeddings-train.png``). Both come from scikit-learn (the
``[train]`` extra), on a fixed-seed sample so a run is reproducible and bounded in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from models.extras import require_extra

MAX_KMEANS = 20_000  # points clustered (k-means is linear in them: seconds on a CPU)
MAX_TSNE = 2_000  # points mapped (t-SNE is the slow one: ~10-20 s on 2 cores at 2,000)


@dataclass(frozen=True)
class EmbeddingAnalysis:
    k: int
    ari: float  # adjusted Rand index of the k-means clusters against the labels
    kmeans_points: int
    tsne: torch.Tensor  # [m, 2]: the t-SNE map of the rows in ``tsne_index``
    tsne_index: list[int]
    seed: int

    def record(self) -> dict[str, Any]:
        """What the manifest keeps (under ``training.embedding_analysis``)."""
        return {
            "kmeans_k": self.k,
            "kmeans_ari": round(self.ari, 4),
            "kmeans_points": self.kmeans_points,
            "tsne_points": len(self.tsne_index),
            "seed": self.seed,
        }


def sample(n: int, m: int, seed: int) -> list[int]:
    """``min(n, m)`` row indices, drawn with ``seed``, in ascending order (all rows when ``n <= m``)."""
    if n <= m:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:m].tolist())


def analyse(
    features: torch.Tensor,
    labels: Sequence[int],
    k: int,
    *,
    seed: int = 0,
    max_kmeans: int = MAX_KMEANS,
    max_tsne: int = MAX_TSNE,
) -> EmbeddingAnalysis:
    """k-means (``k`` clusters) with its ARI against ``labels``, and a t-SNE map, of ``features``."""
    require_extra("the embedding analysis of sentiment train head", "sklearn")
    from sklearn.cluster import KMeans
    from sklearn.manifold import TSNE
    from sklearn.metrics import adjusted_rand_score

    x = features.float().numpy()
    y = list(labels)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    if len(x) < max(k, 4):
        raise ValueError(f"too few embeddings to analyse ({len(x)})")
    rows = sample(len(x), max_kmeans, seed)
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x[rows])
    ari = float(adjusted_rand_score([y[i] for i in rows], clusters))
    shown = sample(len(x), max_tsne, seed)
    # perplexity must stay below the number of points; 30 (scikit-learn's default) when there are enough
    perplexity = min(30.0, (len(shown) - 1) / 3)
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x[shown])
    return EmbeddingAnalysis(k, ari, len(rows), torch.from_numpy(tsne).float(), shown, seed)
