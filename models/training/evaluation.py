"""Classification metrics a person can act on: accuracy, macro-F1, per-class precision/recall,
confusion matrix and expected calibration error (ECE), computed from probabilities."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True, slots=True)
class ClassReport:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True, slots=True)
class Report:
    labels: tuple[str, ...]
    n: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassReport]
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    ece: float  # expected calibration error over 10 equal-width confidence bins

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def evaluate(labels: Sequence[str], y_true: Sequence[int], probs: torch.Tensor, bins: int = 10) -> Report:
    """``probs``: ``[n, len(labels)]`` probabilities; ``y_true``: label ids."""
    k = len(labels)
    truth = torch.as_tensor(list(y_true), dtype=torch.int64)
    if probs.shape != (len(truth), k):
        raise ValueError(f"probabilities have shape {tuple(probs.shape)}, expected ({len(truth)}, {k})")
    # float64 stays float64 (a float32 round trip can change the argmax and every mean); bf16/fp16/fp32
    # are compared in float32. Counts and means below are accumulated in float64.
    work = probs.double() if probs.dtype == torch.float64 else probs.float()
    confidence, pred = work.max(-1)
    confusion = torch.zeros(k, k, dtype=torch.int64)
    confusion.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
    per_class = {}
    for i, label in enumerate(labels):
        tp, predicted, actual = int(confusion[i, i]), int(confusion[:, i].sum()), int(confusion[i].sum())
        p, r = _ratio(tp, predicted), _ratio(tp, actual)
        per_class[label] = ClassReport(p, r, 2 * p * r / (p + r) if p + r else 0.0, actual)
    correct = (pred == truth).double()
    ece = 0.0
    # bins (m/bins, (m+1)/bins], edges rounded to the probabilities' precision (a float32 0.6 is on the edge)
    edges = (torch.arange(bins + 1, dtype=work.dtype) / bins).tolist()
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += float(inside.double().mean()) * abs(
                float(correct[inside].mean() - confidence[inside].double().mean())
            )
    return Report(
        labels=tuple(labels),
        n=len(truth),
        accuracy=float(correct.mean()) if len(truth) else 0.0,
        macro_f1=sum(c.f1 for c in per_class.values()) / k,
        per_class=per_class,
        confusion=confusion.tolist(),
        ece=ece,
    )


def format_report(report: Report) -> str:
    """The summary table printed at the end of ``train`` and by ``eval``."""
    width = max(8, *(len(label) for label in report.labels))
    lines = [
        f"{report.n} examples   accuracy {report.accuracy:.4f}   macro-F1 {report.macro_f1:.4f}   "
        f"ECE {report.ece:.4f}",
        "",
        f"{'label':<{width}}  precision  recall      f1  support",
    ]
    for label, c in report.per_class.items():
        lines.append(f"{label:<{width}}  {c.precision:9.4f}  {c.recall:6.4f}  {c.f1:6.4f}  {c.support:7d}")
    lines += [
        "",
        "confusion (rows: true, columns: predicted)",
        " " * width + "".join(f"{lb[:8]:>9}" for lb in report.labels),
    ]
    for label, row in zip(report.labels, report.confusion, strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{v:9d}" for v in row))
    return "\n".join(lines)
