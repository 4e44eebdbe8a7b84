"""Training-side throughput, side by side in one run: LoRA fine-tuning and head-mode embedding.

- ``lora``: one optimizer step = one batch of 16 reviews, peft LoRA (r=8, alpha 16, dropout
  0.15 on q/k/v) on ``Qwen3ForSequenceClassification`` with bf16 autocast (CUDA), AdamW and
  gradient clipping, exactly what ``models.training.loop.Trainer`` runs per step. Two batchings:
  ``seed-style`` (the published recipes: ``padding="max_length"``, 160 tokens, reviews in arrival
  order, longer ones truncated) and ``bucketed`` (ours: length-bucketed batches padded to the
  longest in the batch, nothing truncated below 512 tokens). Reported: samples/s, real
  (non-pad) tokens/s, peak GPU memory.
- ``embed``: the frozen base embedding reviews for ``train head``: ``seed-style`` (Qwen3-Embedding's
  model card: batches of 16, ``padding=True``, ``last_token_pool``) vs our engine (sorted, packed,
  16k-token budget), reviews/s.

Random weights with the real Qwen3 configs (no model hub here); compute does not depend on them.

    python bench/train.py                         # CPU: the tiny config
    python bench/train.py --sizes 0.6B --data D   # CUDA; D from `python bench/engine.py --prepare D`

Results: ``bench/results/train-<device>.json`` (or ``$OUT``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine import RESULTS, build_model, load_texts, sync, tokenizer_file
from models.engine.classifier import EmbeddingHeadEngine
from models.engine.heads import build_head
from models.engine.loading import load_tokenizer
from models.manifest import Manifest
from models.tokenizer import ENDOFTEXT, ENDOFTEXT_ID
from models.training.loop import length_buckets, pad_batch

BATCH, SEED_PAD, MAX_TOKENS = 16, 160, 512


def seed_batches(ids: list[list[int]]) -> list[list[list[int]]]:
    """Arrival order, every text cut or padded to 160 tokens (pad added by pad_batch to the max)."""
    cut = [s[:SEED_PAD] for s in ids]
    return [cut[i : i + BATCH] for i in range(0, len(cut), BATCH)]


def bucketed_batches(ids: list[list[int]]) -> list[list[list[int]]]:
    order = length_buckets([len(s) for s in ids], BATCH, random.Random(0))
    return [[ids[i][:MAX_TOKENS] for i in b] for b in order]


def lora_case(
    size: str, device: torch.device, ids: list[list[int]], batching: str, steps: int
) -> dict[str, Any]:
    from peft import LoraConfig, TaskType, get_peft_model

    model = build_model(size, device, torch.float32)
    model.config.pad_token_id = ENDOFTEXT_ID
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=8,
            lora_alpha=16,
            lora_dropout=0.15,
            target_modules=["q_proj", "k_proj", "v_proj"],
        ),
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-5)
    batches = seed_batches(ids) if batching == "seed-style" else bucketed_batches(ids)
    labels = torch.randint(0, 2, (BATCH,), generator=torch.Generator().manual_seed(0))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(batch: list[list[int]]) -> None:
        pad_to = SEED_PAD if batching == "seed-style" else 0
        seqs = [s + [ENDOFTEXT_ID] * (pad_to - len(s)) for s in batch] if pad_to else batch
        input_ids, mask = pad_batch(seqs, ENDOFTEXT_ID)
        if pad_to:  # the recipe's attention mask covers only the real tokens
            mask = torch.tensor([[1] * len(s) + [0] * (pad_to - len(s)) for s in batch])
        with autocast:
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        loss = nn.functional.cross_entropy(logits.float(), labels[: len(batch)].to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:3]:  # warm-up: kernels, allocator
        step(b)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    timed = batches[3 : 3 + steps]
    for b in timed:
        step(b)
    sync(device)
    seconds = time.perf_counter() - start
    samples = sum(len(b) for b in timed)
    real = sum(len(s) for b in timed for s in b)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "samples_per_s": samples / seconds,
        "real_tokens_per_s": real / seconds,
        "steps": len(timed),
        "seconds": seconds,
        "peak_gib": peak,
    }


@torch.inference_mode()
def embed_seed_style(model: Any, hf_tok: Any, texts: list[str], device: torch.device) -> torch.Tensor:
    """The Qwen3-Embedding model card: batches of 16, padding=True, last_token_pool, normalise."""
    out = []
    for i in range(0, len(texts), BATCH):
        enc = hf_tok(
            texts[i : i + BATCH],
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS + 1,
            return_tensors="pt",
        ).to(device)
        hidden = model(**enc).last_hidden_state
        lengths = enc["attention_mask"].sum(1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=device), lengths]
        out.append(nn.functional.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", help="tiny, 0.6B, 4B (default: tiny on CPU, 0.6B on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, help="reviews (default: 4096 on CUDA, 512 on CPU)")
    parser.add_argument("--steps", type=int, help="timed LoRA steps (default: 60 on CUDA, 20 on CPU)")
    parser.add_argument("--data", help="a `bench/engine.py --prepare` directory")
    parser.add_argument("--cache-dir", default="~/.cache/qwen3-sentiment/cache")
    parser.add_argument("--out", help="result file (default: bench/results/train-<device>.json)")
    args = parser.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    args.n = args.n or (4096 if cuda else 512)
    steps = args.steps or (60 if cuda else 20)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)"
    texts = load_texts(args)
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file(args)),
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        padding_side="right",
    )
    tmpdir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-train-tok"
    hf_tok.save_pretrained(tmpdir)
    rust_tok, _ = load_tokenizer(tmpdir, MAX_TOKENS + 1, append_eos=True)
    ids = [e.ids[:-1] for e in rust_tok.encode_batch(texts)]  # without the appended EOS
    records: list[dict[str, Any]] = []
    command = "python bench/train.py " + " ".join(sys.argv[1:])

    def record(size: str, bench: str, case: str, metric: str, value: float, unit: str, **extra: Any) -> None:
        rec = {
            "bench": bench,
            "case": case,
            "model": f"qwen3-{size.lower()}",
            "device": name,
            "metric": metric,
            "value": round(value, 3),
            "unit": unit,
            "command": command,
            "date": dt.date.today().isoformat(),
            "n_reviews": len(texts),
            **extra,
        }
        records.append(rec)
        print(
            json.dumps({k: v for k, v in rec.items() if k not in ("command", "date", "device")}), flush=True
        )

    print(f"torch {torch.__version__} on {name}; {len(texts)} reviews", flush=True)
    for size in (args.sizes or ("0.6B" if cuda else "tiny")).split(","):
        base: dict[str, float] = {}
        for batching in ("seed-style", "bucketed"):
            r = lora_case(size, device, ids, batching, steps)
            if cuda:
                torch.cuda.empty_cache()
            ratio = None if batching == "seed-style" else round(r["samples_per_s"] / base["samples_per_s"], 2)
            if batching == "seed-style":
                base = r
            record(
                size,
                "train-lora",
                batching,
                "samples_per_s",
                r["samples_per_s"],
                "samples/s",
                baseline="seed-style" if ratio else None,
                ratio=ratio,
                batch=BATCH,
                steps=r["steps"],
                real_tokens_per_s=round(r["real_tokens_per_s"]),
                peak_gib=r["peak_gib"] and round(r["peak_gib"], 2),
                dtype="bf16 autocast, fp32 weights" if cuda else "float32",
            )
        dtype = torch.bfloat16 if cuda else torch.float32
        backbone = build_model(size, device, dtype).model
        embed_seed_style(backbone, hf_tok, texts[:64], device)  # warm-up
        sync(device)
        start = time.perf_counter()
        embed_seed_style(backbone, hf_tok, texts, device)
        sync(device)
        seed_rate = len(texts) / (time.perf_counter() - start)
        record(size, "embed", "seed-style", "reviews_per_s", seed_rate, "reviews/s", dtype=str(dtype)[6:])
        # the engine switches the backbone to packed attention: timed after the seed-style case
        manifest = Manifest(
            kind="embedding-head",
            base_model="random",
            labels=["negative", "positive"],
            max_length=MAX_TOKENS + 1,
        )
        head = build_head("linear", backbone.config.hidden_size, 2)
        engine = EmbeddingHeadEngine(backbone, head, rust_tok, manifest, name="bench", max_batch_tokens=16384)
        engine.infer(texts[:64], keep_features=True)  # warm-up
        sync(device)
        start = time.perf_counter()
        engine.infer(texts, keep_features=True)
        sync(device)
        rate = len(texts) / (time.perf_counter() - start)
        record(
            size,
            "embed",
            "engine",
            "reviews_per_s",
            rate,
            "reviews/s",
            baseline="seed-style",
            ratio=round(rate / seed_rate, 2),
            dtype=str(dtype)[6:],
        )
        del engine, backbone, head
        if cuda:
            torch.cuda.empty_cache()
    tag = "h100" if "H100" in name else device.type
    out = Path(args.out) if args.out else RESULTS / f"train-{tag}.json"
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / out.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
