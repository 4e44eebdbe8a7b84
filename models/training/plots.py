"""PNG figures written beside a checkpoint: confusion matrix, learning curves, embedding map.

matplotlib with the Agg backend (no display needed); each function writes one file and returns
its path. matplotlib comes with the ``[train]`` extra and is imported when the first figure is drawn,
so importing this module (the trainers, ``sentiment eval``) never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.extras import require_extra
from models.training.evaluation import Report


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; a :class:`~models.extras.MissingExtraError` naming
    the ``[train]`` extra when matplotlib is not installed."""
    require_extra("drawing PNGs", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(report: Report, path: Path, title: str = "") -> Path:
    """Counts and row-normalised shading: rows are true labels, columns predictions."""
    counts = torch.tensor(report.confusion, dtype=torch.float64)
    share = counts / counts.sum(1, keepdim=True).clamp(min=1)
    k = len(report.labels)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * k, 1.2 + 1.2 * k), dpi=120)
    ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}\n{share[i, j]:.1%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.6 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(k), report.labels, rotation=30, ha="right")
    ax.set_yticks(range(k), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        title or f"accuracy {report.accuracy:.1%}, macro-F1 {report.macro_f1:.3f} (n={report.n})", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def learning_curves_png(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Train and dev loss, dev accuracy and macro-F1, per epoch."""
    epochs = [h["epoch"] for h in history]
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    left.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    left.plot(epochs, [h["dev_loss"] for h in history], "o-", label="dev loss")
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend()
    right.plot(epochs, [h["dev_accuracy"] for h in history], "o-", label="dev accuracy")
    right.plot(epochs, [h["dev_macro_f1"] for h in history], "o-", label="dev macro-F1")
    best = max(history, key=lambda h: h["dev_macro_f1"])
    right.axvline(best["epoch"], color="grey", linestyle=":", label=f"kept: epoch {best['epoch']}")
    right.set_xlabel("epoch")
    right.set_title("dev metrics")
    right.legend()
    for ax in (left, right):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def projection_png(
    features: torch.Tensor,
    labels: Sequence[int],
    names: Sequence[str],
    path: Path,
    max_points: int = 5000,
    tsne: tuple[torch.Tensor, Sequence[int]] | None = None,
    title: str = "",
) -> Path:
    """The embeddings' first two principal components, one colour per label; with ``tsne``
    (the map and the rows it shows), the t-SNE map beside it, coloured the same way."""
    x = features[:max_points].double()
    y = torch.as_tensor(list(labels)[:max_points])
    x = x - x.mean(0)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].T).numpy()
    explained = (s[:2] ** 2 / (s**2).sum()).tolist()
    plt = pyplot()
    panels = 2 if tsne is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5), dpi=120, squeeze=False)
    ax = axes[0][0]
    for i, name in enumerate(names):
        pick = (y == i).numpy()
        ax.scatter(xy[pick, 0], xy[pick, 1], s=4, alpha=0.5, label=f"{name} ({int(pick.sum())})")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)" if len(explained) > 1 else "PC2")
    ax.set_title("embeddings, first two principal components", fontsize=10)
    ax.legend(markerscale=3)
    if tsne is not None:
        coords, rows = tsne
        shown = torch.as_tensor([list(labels)[i] for i in rows])
        ax = axes[0][1]
        for i, name in enumerate(names):
            pick = (shown == i).numpy()
            ax.scatter(coords[pick, 0].numpy(), coords[pick, 1].numpy(), s=4, alpha=0.5,
                       label=f"{name} ({int(pick.sum())})")  # fmt: skip
        ax.set_title(f"t-SNE map of {len(rows):,} embeddings", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
