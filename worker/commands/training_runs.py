"""What ``sentiment train …`` and ``sentiment eval`` do, behind their click options in ``cli.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from models.text_lines import BadRow, Skipped
from models.training.data import Prepared, parse_label_map, prepare_splits, read_labelled
from schemas.errors import ConfigError

SKIP_BAD_HINT = "; --skip-bad leaves such rows out"


def echo(line: str) -> None:
    click.echo(line, err=True)


def labels_option(spec: str) -> list[str]:
    labels = [s.strip() for s in spec.split(",") if s.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"--labels needs at least two distinct names, got {spec!r}")
    return labels


def prepared(
    train: Path,
    dev: Path | None,
    test: Path | None,
    labels: list[str],
    label_map: str | None,
    seed: int,
    skip_bad: bool = False,
) -> Prepared:
    """The run's splits, its notes (skipped rows among them) and sizes echoed to stderr.

    A bad row stops the run with its file, line and reason, and says that ``--skip-bad`` would
    leave it out."""
    try:
        data = prepare_splits(
            train, dev, test, labels, label_map=parse_label_map(label_map), seed=seed, skip_bad=skip_bad
        )
    except BadRow as exc:
        raise ConfigError(f"{exc}{SKIP_BAD_HINT}") from None
    for note in data.notes:
        echo(f"note: {note}")
    s = data.splits
    echo(f"data: {len(s.train)} train, {len(s.dev)} dev, {len(s.test)} test examples; labels {labels}")
    return data


def demo_out(home: Path) -> Path:
    from models.demo.default import default_path

    return default_path(home)


def run_demo_preset(home: Path, out: Path | None, epochs: int | None, limit: int | None) -> Path:
    from models.demo.model import train_demo

    target = out or demo_out(home)
    if target.exists():
        raise ConfigError(f"{target} already exists; remove it to train again, or pass --out")
    return train_demo(target, cache_dir=home / "cache", echo=echo, epochs=epochs, limit=limit)


def run_eval(
    checkpoint: Path,
    data: Path,
    label_map: str | None,
    device: str,
    dtype: str | None,
    plots: Path | None,
    as_json: bool,
    skip_bad: bool = False,
) -> None:
    from models.manifest import load_manifest

    manifest = load_manifest(checkpoint)
    skipped = Skipped(str(data)) if skip_bad else None
    try:
        examples = read_labelled(data, manifest.labels, label_map=parse_label_map(label_map), skipped=skipped)
    except BadRow as exc:
        raise ConfigError(f"{exc}{SKIP_BAD_HINT}") from None
    if skipped:
        echo(f"note: {skipped.summary()}")

    from models.training.checkpoint_eval import (  # torch: after the data is read
        evaluate_checkpoint,
        recorded_for,
    )
    from models.training.evaluation import format_report
    from models.training.plots import confusion_png
    from worker.settings import load_settings

    key = load_settings().engine_options()["embedding_api_key"]  # a checkpoint behind a server
    report, _ = evaluate_checkpoint(checkpoint, examples, device=device, dtype=dtype, embedding_api_key=key)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        echo(f"wrote {confusion_png(report, plots / 'confusion.png')}")
    recorded = recorded_for(checkpoint, examples)
    if as_json:
        click.echo(orjson.dumps({"data": str(data), **report.to_dict()}).decode())
    else:
        click.echo(f"{checkpoint} on {data}\n{format_report(report)}")
    if recorded is not None:
        split, entry = recorded
        same = entry.get("accuracy") == report.accuracy and entry.get("macro_f1") == report.macro_f1
        echo(
            f"\nthe checkpoint recorded its '{split}' evaluation on this same data: accuracy "
            f"{entry.get('accuracy'):.4f}, macro-F1 {entry.get('macro_f1'):.4f} "
            f"({'reproduced exactly' if same else 'NOT reproduced: different device or software?'})"
        )


def lora_run(options: dict[str, Any], data: Prepared, labels: list[str]) -> Path:
    from models.training.loop import LoopConfig
    from models.training.lora import LORA_LOOP, LoraSettings, train_lora

    lora = LoraSettings(
        r=options["r"],
        alpha=options["alpha"],
        dropout=options["dropout"],
        targets=tuple(t.strip() for t in options["targets"].split(",") if t.strip()),
    )
    loop = LoopConfig(
        epochs=options["epochs"],
        lr=options["lr"],
        batch_size=options["batch_size"],
        grad_accum=options["grad_accum"],
        warmup=options["warmup"],
        weight_decay=LORA_LOOP.weight_decay,
        patience=options["patience"],
        seed=options["seed"],
        save_every=options["save_every"],
        head_lr=options["head_lr"],
    )
    return train_lora(
        options["base"],
        data,
        labels,
        options["out"],
        lora=lora,
        loop=loop,
        max_length=options["max_length"],
        device=options["device"],
        gradient_checkpointing=options["gradient_checkpointing"],
        fresh=options["fresh"],
        name=options["name"],
        echo=echo,
    )
