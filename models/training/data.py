"""Labelled training data: read TSV / CSV / JSON lines, de-duplicate, check splits for leaks.

Formats (by extension): ``.tsv``/``.txt`` ``text<TAB>label`` per line (an optional header
``text<TAB>label``); ``.csv`` with a header naming ``text`` or ``sentence`` and ``label``;
``.jsonl``/``.json`` one object per line with ``text`` and ``label``. A label is a name from
the label set or an integer index into it; ``label_map`` renames raw labels first (e.g. star
ratings ``1``…``5`` to negative/neutral/positive). Every bad row is reported with its file and
line, and nothing is silently dropped: a bad row stops the read (:class:`BadRow`), or, when the
caller passes a :class:`Skipped`, is left out and counted there for a summary.

Files are decoded as UTF-8 one line at a time (:func:`models.text_lines.utf8_lines`), so a file in another
encoding is reported by file and line, not as a bare ``UnicodeDecodeError``.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from models.text_lines import BadRow, DataError, Skipped, utf8_lines


@dataclass(frozen=True, slots=True)
class LabelledText:
    text: str
    label: str


@dataclass(frozen=True, slots=True)
class Splits:
    train: list[LabelledText]
    dev: list[LabelledText]
    test: list[LabelledText]


def _raise(err: BadRow) -> None:
    raise err


def _rows(path: Path, bad: Callable[[BadRow], None] = _raise) -> Iterator[tuple[int, str, str]]:
    """(line number, text, raw label) for each data row of ``path``; each bad row goes to ``bad``."""
    suffix = path.suffix.lower()
    name = str(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    with f:
        if suffix == ".csv":
            where = [0]  # the line last given to the csv reader: where its row ends

            def lines() -> Iterator[str]:
                for n, line in utf8_lines(f, name, keepends=True, on_error=bad):
                    where[0] = n
                    yield line

            reader = csv.DictReader(lines())
            try:
                header = reader.fieldnames or []
                fields = [h.strip().lower() for h in header]
                text_col = next((c for c in ("text", "sentence", "review") if c in fields), None)
                if text_col is None or "label" not in fields:
                    raise DataError(f"{path}:1: a CSV needs a header with 'text' (or 'sentence') and 'label'")
                names = {h.strip().lower(): h for h in header}
                for row in reader:
                    yield where[0], row[names[text_col]] or "", row[names["label"]] or ""
            except csv.Error as exc:
                raise DataError(f"{path}:{where[0]}: not readable as CSV: {exc}") from None
        elif suffix in (".jsonl", ".json", ".ndjson"):
            for n, line in utf8_lines(f, name, on_error=bad):
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    bad(BadRow(name, n, "not valid JSON", f"not valid JSON: {exc}"))
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or "label" not in obj:
                    need = "needs an object with a string 'text' and a 'label'"
                    bad(BadRow(name, n, "not a text/label object", need))
                    continue
                yield n, obj["text"], str(obj["label"])
        else:
            for n, line in utf8_lines(f, name, on_error=bad):
                if not line.strip():
                    continue
                text, tab, label = line.rpartition("\t")
                if not tab:
                    bad(BadRow(name, n, "no tab", "expected 'text<TAB>label'"))
                    continue
                if (
                    n == 1
                    and text.strip().lower() in ("text", "sentence")
                    and label.strip().lower() == "label"
                ):
                    continue
                yield n, text, label


def read_labelled(
    path: Path,
    labels: Sequence[str],
    *,
    label_map: Mapping[str, str] | None = None,
    skipped: Skipped | None = None,
) -> list[LabelledText]:
    """Every row of ``path`` as a :class:`LabelledText` whose label is one of ``labels``.

    A bad row (not UTF-8, not valid JSON, no tab, an unknown label, an empty text) raises
    :class:`BadRow`; with ``skipped``, it is left out and counted there instead.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file")

    def bad(err: BadRow) -> None:
        if skipped is None:
            raise err
        skipped.add(err)

    name = str(path)
    out = []
    for n, text, raw in _rows(path, bad):
        raw = raw.strip()
        raw = (label_map or {}).get(raw, raw)
        if raw in labels:
            label = raw
        elif raw.lstrip("-").isdigit() and 0 <= int(raw) < len(labels):
            label = labels[int(raw)]
        else:
            known = f"{list(labels)} nor an index 0..{len(labels) - 1}"
            bad(BadRow(name, n, "unknown label", f"label {raw!r} is not one of {known}"))
            continue
        if not text.strip():
            bad(BadRow(name, n, "empty text", "empty text"))
            continue
        out.append(LabelledText(text.strip(), label))
    if not out:
        raise DataError(f"{path}: no examples" + (f" ({skipped.summary()})" if skipped else ""))
    return out


@dataclass(frozen=True, slots=True)
class Deduplicated:
    examples: list[LabelledText]
    duplicates: int  # repeats of a text with the same label, dropped
    conflicts: list[str]  # texts seen with different labels, all copies dropped


def deduplicate(examples: Sequence[LabelledText]) -> Deduplicated:
    """Keep the first copy of each text; drop texts that carry contradicting labels altogether."""
    first: dict[str, str] = {}
    conflicting: set[str] = set()
    for ex in examples:
        seen = first.setdefault(ex.text, ex.label)
        if seen != ex.label:
            conflicting.add(ex.text)
    kept, emitted = [], set()
    for ex in examples:
        if ex.text not in conflicting and ex.text not in emitted:
            emitted.add(ex.text)
            kept.append(ex)
    duplicates = len(examples) - len(kept) - sum(1 for ex in examples if ex.text in conflicting)
    return Deduplicated(kept, duplicates, sorted(conflicting))


def leaks(train: Sequence[LabelledText], other: Sequence[LabelledText]) -> list[str]:
    """Texts present in both splits (an evaluation on ``other`` would flatter the model)."""
    seen = {ex.text for ex in train}
    return sorted({ex.text for ex in other if ex.text in seen})


def split(examples: Sequence[LabelledText], *, dev: float = 0.1, test: float = 0.1, seed: int = 0) -> Splits:
    """A seeded, stratified train/dev/test split (each label keeps its share in every split)."""
    rng = random.Random(seed)
    parts: tuple[list[LabelledText], list[LabelledText], list[LabelledText]] = ([], [], [])
    for label in sorted({ex.label for ex in examples}):
        group = [ex for ex in examples if ex.label == label]
        rng.shuffle(group)
        n_test, n_dev = round(len(group) * test), round(len(group) * dev)
        parts[2].extend(group[:n_test])
        parts[1].extend(group[n_test : n_test + n_dev])
        parts[0].extend(group[n_test + n_dev :])
    for part in parts:
        rng.shuffle(part)
    return Splits(*parts)


@dataclass(frozen=True, slots=True)
class Prepared:
    """Splits ready to train on, where each came from, and what was removed on the way."""

    splits: Splits
    sources: dict[str, str]  # split name → file, or how it was made
    notes: list[str]


def prepare_splits(
    train: Path,
    dev: Path | None,
    test: Path | None,
    labels: Sequence[str],
    *,
    label_map: Mapping[str, str] | None = None,
    dev_share: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
) -> Prepared:
    """Read, de-duplicate and leak-check the data files of one training run.

    Without ``dev``, a stratified ``dev_share`` of ``train`` is held out (seeded). Texts of the
    dev or test split that also occur in train are reported and removed from that split, so its
    metrics are not flattered. A bad row raises :class:`BadRow`; with ``skip_bad`` it is left
    out, and a note says how many rows of which file were skipped and why.
    """
    notes: list[str] = []

    def load(path: Path) -> list[LabelledText]:
        skipped = Skipped(str(path)) if skip_bad else None
        d = deduplicate(read_labelled(path, labels, label_map=label_map, skipped=skipped))
        if skipped:
            notes.append(skipped.summary())
        if d.duplicates or d.conflicts:
            notes.append(
                f"{path}: dropped {d.duplicates} repeated text(s) and {len(d.conflicts)} text(s) "
                "that carry contradicting labels"
            )
        return d.examples

    train_set = load(train)
    sources = {"train": str(train)}
    if dev is None:
        held = split(train_set, dev=dev_share, test=0.0, seed=seed)
        train_set, dev_set = held.train, held.dev
        sources["dev"] = f"{dev_share:.0%} of {train} (stratified, seed {seed})"
    else:
        dev_set, sources["dev"] = load(dev), str(dev)
    test_set: list[LabelledText] = []
    if test is not None:
        test_set, sources["test"] = load(test), str(test)
    for name, part in (("dev", dev_set), ("test", test_set)):
        leaked = set(leaks(train_set, part))
        if leaked:
            example = next(iter(sorted(leaked)))
            notes.append(
                f"{len(leaked)} text(s) of the {name} split also occur in train (e.g. {example[:40]!r}); "
                f"removed from {name}"
            )
            part[:] = [ex for ex in part if ex.text not in leaked]
    if not dev_set:
        raise DataError(f"the dev split is empty (from {sources['dev']})")
    missing = sorted(set(labels) - {ex.label for ex in train_set})
    if missing:
        notes.append(f"train has no example of {missing}")
    return Prepared(Splits(train_set, dev_set, test_set), sources, notes)


def parse_label_map(spec: str | None) -> dict[str, str] | None:
    """``"1=negative,2=negative,3=neutral"`` → a dict; ``None`` stays ``None``."""
    if not spec:
        return None
    out = {}
    for item in spec.split(","):
        raw, eq, label = item.partition("=")
        if not eq or not raw.strip() or not label.strip():
            raise DataError(f"--label-map item {item!r} is not RAW=LABEL")
        out[raw.strip()] = label.strip()
    return out
