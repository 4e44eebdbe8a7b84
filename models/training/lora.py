"""``sentiment train lora``: LoRA sequence-classification fine-tuning of a Qwen3 base, merged.

The recipe our users know (peft ``LoraConfig(task_type=SEQ_CLS, r=8, lora_alpha=16,
lora_dropout=0.15, target_modules=[q,k,v])``, lr 3e-5, cosine schedule with warm-up), run by the
shared loop in :mod:`models.training.loop`: evaluation every epoch, the best epoch by dev macro-F1,
early stopping, resumable. The adapters are then merged (``merge_and_unload``) and the result is
saved as a plain ``sequence-classifier`` checkpoint: the worker never loads peft.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3ForSequenceClassification
from transformers.utils import logging as hf_logging

from models.engine.classifier import resolve_device
from models.engine.loading import (
    LM_HEAD,
    LOAD_ERRORS,
    WEIGHTS,
    base_reference,
    load_error,
    load_report_held,
    load_tokenizer,
    qwen3_config,
    require_file,
    warn_unexpected,
)
from models.manifest import Manifest, atomic_directory
from models.tokenizer import copy_tokenizer
from models.training.checkpoint_eval import data_digest
from models.training.data import Prepared
from models.training.loop import Encoded, LoopConfig, Trainer
from models.training.reporting import report_checkpoint
from schemas.errors import CheckpointError, ConfigError


@dataclass(frozen=True, slots=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.15
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")


LORA_LOOP = LoopConfig(
    epochs=3, lr=3e-5, batch_size=16, grad_accum=1, warmup=0.06, patience=2, head_lr=1e-3
)  # fmt: skip
# The automatic max_length never goes above this (a Qwen3 base allows 32,768 or 40,960 tokens,
# and activation memory grows with it); --max-length chooses more.
MAX_LENGTH_CAP = 512


def choose_max_length(
    lengths: Sequence[int], *, limit: int, percentile: float = 0.99
) -> tuple[int, dict[str, int]]:
    """Tokens per text (special tokens included) covering ``percentile`` of the training texts,
    rounded up to a multiple of 8 and at most ``limit``; also the percentiles it looked at."""
    ordered = sorted(lengths)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    stats = {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}
    chosen = min(limit, max(16, 8 * math.ceil(at(percentile) / 8)))
    return chosen, stats


def load_base_classifier(base: Path, labels: Sequence[str], pad_id: int) -> Qwen3ForSequenceClassification:
    """The base's weights under a fresh ``score`` head; every other tensor must be in the files."""
    require_file(base, *WEIGHTS)
    # transformers' LOAD REPORT would list the fresh score head as MISSING (and an untied base's
    # lm_head as UNEXPECTED) on every run: both are by design; anything else is said here.
    with load_report_held() as report:
        try:
            loaded: Any = Qwen3ForSequenceClassification.from_pretrained(
                base,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={lb: i for i, lb in enumerate(labels)},
                pad_token_id=pad_id,
                dtype=torch.float32,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,
                attn_implementation="sdpa",
                output_loading_info=True,
            )
        except LOAD_ERRORS as exc:
            raise load_error(base, exc, report) from None
    model, info = loaded
    missing = sorted(set(info["missing_keys"]) - {"score.weight"})
    if missing:
        raise CheckpointError(
            f"{base}: the weights lack {len(missing)} tensor(s) of a Qwen3 backbone, e.g. {missing[:3]}"
        )
    warn_unexpected(base, Qwen3ForSequenceClassification, info, dropped=LM_HEAD)
    return model


def train_lora(
    base: Path,
    data: Prepared,
    labels: Sequence[str],
    out: Path,
    *,
    lora: LoraSettings = LoraSettings(),
    loop: LoopConfig = LORA_LOOP,
    max_length: int | None = None,
    device: str = "auto",
    gradient_checkpointing: bool | None = None,
    fresh: bool = False,
    name: str | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Fine-tune ``base`` with LoRA on ``data`` and write the merged checkpoint to ``out``.

    ``gradient_checkpointing``: recompute activations in the backward pass (less memory, about a
    third more compute); default on for CUDA, where a real base's activations bound the batch.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    started = time.perf_counter()
    hf_logging.disable_progress_bar()
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out or remove it")
    config = qwen3_config(base)
    dev, _ = resolve_device(device, "float32")
    if gradient_checkpointing is None:
        gradient_checkpointing = dev.type == "cuda"
    parts = {"train": data.splits.train, "dev": data.splits.dev, "test": data.splits.test}
    # The serving tokenizer exactly (the checkpoint copies the base's files): the texts train as
    # the worker will see them, special tokens included, cut at the same max_length.
    stats: dict[str, int] = {}
    if max_length is None:
        full, _ = load_tokenizer(base, config.max_position_embeddings, append_eos=False)
        lengths = [len(e.ids) for e in full.encode_batch([x.text for x in parts["train"]])]
        max_length, stats = choose_max_length(
            lengths, limit=min(MAX_LENGTH_CAP, config.max_position_embeddings)
        )
        echo(
            f"max_length {max_length} (train token lengths: p50 {stats['p50']}, p90 {stats['p90']}, "
            f"p99 {stats['p99']}, max {stats['max']})"
        )
        if stats["p99"] > max_length:
            echo(
                f"note: more than 1% of the training texts are longer than {max_length} tokens "
                f"(p99 {stats['p99']}) and are cut there; --max-length N keeps more (memory grows with it)"
            )
    if max_length > config.max_position_embeddings:
        raise ConfigError(
            f"--max-length {max_length} is above the base's {config.max_position_embeddings} positions"
        )
    tokenizer, _ = load_tokenizer(base, max_length, append_eos=False)
    pad_id = (
        config.pad_token_id if config.pad_token_id is not None else tokenizer.token_to_id("<|endoftext|>")
    )
    if pad_id is None:
        raise CheckpointError(f"{base}: config.json has no pad_token_id and the tokenizer no <|endoftext|>")
    ids = {n: [e.ids for e in tokenizer.encode_batch([x.text for x in p])] for n, p in parts.items()}
    encoded = {n: Encoded(ids[n], [list(labels).index(x.label) for x in p]) for n, p in parts.items()}

    model = load_base_classifier(base, labels, pad_id)
    torch.manual_seed(loop.seed)
    model.score.reset_parameters()
    if gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.targets),
        ),
    ).to(dev)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    echo(
        f"LoRA r={lora.r} alpha={lora.alpha} dropout={lora.dropout} on {', '.join(lora.targets)}: "
        f"{trainable:,} trainable parameters; lr {loop.lr:g}, score head lr {loop.head_lr or loop.lr:g}; "
        f"device {dev}{', bf16 autocast' if dev.type == 'cuda' else ''}"
        f"{', gradient checkpointing' if gradient_checkpointing else ''}"
    )

    def logits(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return peft_model(input_ids=input_ids, attention_mask=mask).logits

    fingerprint = {
        "mode": "lora",
        "base": str(base.resolve()),
        "lora": asdict(lora),
        "loop": asdict(loop),
        "max_length": max_length,
        "data": {n: data_digest(p) for n, p in parts.items()},
    }
    state_dir = out.parent / f".{out.name}.state"
    if fresh:
        (state_dir / "train-state.pt").unlink(missing_ok=True)
    trainer = Trainer(
        peft_model,
        logits,
        loop,
        labels=labels,
        pad_id=pad_id,
        device=dev,
        state_dir=state_dir,
        fingerprint=fingerprint,
        autocast=torch.bfloat16 if dev.type == "cuda" else None,
        is_head=lambda name: ".score." in f".{name}",
        echo=echo,
    )
    fit, _ = trainer.fit(encoded["train"], encoded["dev"])
    merged: Any = peft_model.merge_and_unload()
    merged.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out) as tmp:
        merged.config.use_cache = True
        merged.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(base, tmp)  # byte for byte: loads wherever the base's tokenizer loads
        Manifest(
            kind="sequence-classifier",
            base_model=base_reference(base, out),
            labels=list(labels),
            max_length=max_length,
            name=name or out.name,
            version="1",
        ).save(tmp)
        training: dict[str, Any] = {
            "mode": "lora",
            "seed": loop.seed,
            "lora": asdict(lora),
            "loop": asdict(loop),
            "max_length": max_length,
            "token_lengths": stats,
            "gradient_checkpointing": gradient_checkpointing,
            "autocast": "bfloat16" if dev.type == "cuda" else None,
            "data": data.sources,
            "notes": data.notes,
            "fit": fit.to_dict(),
            "seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
            "device": str(dev),
            "machine": platform.machine(),
        }
        report_checkpoint(
            tmp,
            {n: (parts[n], data.sources.get(n, n)) for n in ("dev", "test")},
            training=training,
            device=str(dev),
            echo=echo,
        )
    trainer.finish()
    echo(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")
    return out
