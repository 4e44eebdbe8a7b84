"""The last step of every trainer: evaluate the written checkpoint, record it, draw it, print it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from models.training.checkpoint_eval import evaluate_checkpoint, evaluation_entry, record
from models.training.data import LabelledText
from models.training.evaluation import Report, format_report
from models.training.plots import confusion_png, learning_curves_png


def report_checkpoint(
    directory: Path,
    splits: Mapping[str, tuple[Sequence[LabelledText], str]],
    *,
    training: dict[str, Any],
    device: str,
    echo: Callable[[str], None],
    embedding_api_key: str | None = None,
) -> dict[str, Report]:
    """Evaluate ``directory`` on each named split through the serving engine (fp32), write the
    metrics and ``training`` into its manifest, and the PNGs beside it; returns the reports.

    ``splits``: name → (examples, where they came from).
    """
    reports: dict[str, Report] = {}
    for name, (examples, _source) in splits.items():
        if examples:
            echo(f"evaluating the checkpoint on {name} ({len(examples)} examples)…")
            reports[name], _ = evaluate_checkpoint(
                directory, examples, device=device, embedding_api_key=embedding_api_key
            )
    record(
        directory,
        evaluation={n: evaluation_entry(r, splits[n][0], splits[n][1]) for n, r in reports.items()},
        training=training,
    )
    last = "test" if "test" in reports else next(reversed(reports), None)
    if last is not None:
        confusion_png(reports[last], directory / f"confusion-{last}.png")
    history = training.get("fit", {}).get("history")
    if history:
        learning_curves_png(history, directory / "learning-curves.png")
    for name, report in reports.items():
        echo(f"\n── {name} ──\n{format_report(report)}")
    return reports
