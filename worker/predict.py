"""``sentiment predict``: classify texts from options, a file or stdin, without Kafka."""

from __future__ import annotations

import sys
from typing import TextIO

import click
import orjson
from tqdm import tqdm

from schemas.errors import ConfigError
from worker.settings import Settings


def read_texts(file: TextIO) -> list[str]:
    """One text per line; a line that is a JSON object contributes its ``text`` field."""
    texts = []
    for n, line in enumerate(file, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{file.name}:{n}: not valid JSON: {exc}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ConfigError(f"{file.name}:{n}: JSON line has no string 'text' field")
            line = obj["text"]
        texts.append(line)
    return texts


def run_predict(settings: Settings, texts: list[str], file: TextIO | None, fmt: str) -> None:
    from models.default import default_checkpoint
    from models.engine import load_classifier

    if file is not None:
        texts = texts + read_texts(file)
    if not texts:
        raise ConfigError("nothing to classify: give --text, --file or lines on stdin")
    checkpoint = settings.checkpoint or default_checkpoint(settings.home)
    engine = load_classifier(
        checkpoint,
        device=settings.device,
        dtype=settings.dtype,
        max_batch_tokens=settings.max_batch_tokens,
        compile=settings.compile == "on",  # a compile costs more than a few texts take
    )
    labels = engine.info.labels
    chunk = 256
    preds = []
    show = file is not None and sys.stderr.isatty()  # a bar for files, on a terminal only
    with tqdm(total=len(texts), unit="text", desc="classifying", disable=not show) as bar:
        for start in range(0, len(texts), chunk):
            preds.extend(engine.classify(texts[start : start + chunk]))
            bar.update(min(chunk, len(texts) - start))
    if fmt == "table":
        width = max(len(label) for label in labels)
        click.echo(f"{'label':<{width}}  {'score':>6}  trunc  text")
        for text, p in zip(texts, preds, strict=True):
            short = text if len(text) <= 40 else text[:39] + "…"
            click.echo(
                f"{labels[p.label_id]:<{width}}  {p.probabilities[p.label_id]:6.3f}  "
                f"{'yes' if p.truncated else 'no':>5}  {short}"
            )
        return
    for text, p in zip(texts, preds, strict=True):
        line = {
            "text": text,
            "label": labels[p.label_id],
            "label_id": p.label_id,
            "scores": dict(zip(labels, p.probabilities, strict=True)),
            "truncated": p.truncated,
        }
        click.echo(orjson.dumps(line).decode())
