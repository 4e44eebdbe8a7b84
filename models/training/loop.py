"""The fine-tuning loop shared by ``train lora`` and ``train --preset demo``.

Both train a sequence classifier on padded, length-bucketed batches: AdamW, linear warm-up then
cosine decay, gradient accumulation, gradient clipping, an evaluation on the dev split after every
epoch, the best epoch kept by macro-F1, early stopping after ``patience`` epochs without a gain.
Optionally the loss mixes in a teacher's probabilities (knowledge distillation).

Resumable: every ``save_every`` optimizer steps and at the end of each epoch the loop writes its
whole state (trainable weights, optimizer, step, best so far, history) to ``state_dir``. All
randomness is derived from ``(seed, epoch)`` and ``(seed, step)``, so a resumed run replays the
same batches and dropout masks that an uninterrupted one would have used.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from models.training.evaluation import evaluate
from schemas.errors import ConfigError

STATE_FILE = "train-state.pt"
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class LoopConfig:
    epochs: int = 3
    lr: float = 3e-5
    batch_size: int = 16
    grad_accum: int = 1
    warmup: float = 0.06  # share of all optimizer steps spent warming up
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    patience: int = 2  # epochs without a better dev macro-F1 before stopping
    seed: int = 0
    save_every: int = 200  # optimizer steps between resumable snapshots
    distill: float = 0.0  # weight of the KL term towards a teacher's probabilities (0: hard labels only)
    head_lr: float | None = None  # peak learning rate of the head's parameters (None: lr)


@dataclass(frozen=True, slots=True)
class Encoded:
    """Token ids (no special tokens) and label ids of one split."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(slots=True)
class EpochRecord:
    epoch: int
    step: int
    train_loss: float
    dev_loss: float
    dev_accuracy: float
    dev_macro_f1: float
    lr: float
    seconds: float


@dataclass(slots=True)
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = -1
    best_macro_f1: float = -1.0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": [asdict(r) for r in self.history],
            "best_epoch": self.best_epoch,
            "best_dev_macro_f1": self.best_macro_f1,
            "stopped_early": self.stopped_early,
        }


def length_buckets(lengths: Sequence[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Batches of similar length (little padding); with ``rng``, shuffled within and across chunks."""
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` ([rows, longest])."""
    longest = max(1, *(len(s) for s in seqs))
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), longest), dtype=torch.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
        mask[row, : len(seq)] = 1
    return ids, mask


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear from 0 to 1 over ``warmup_steps``, then cosine down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def predict_logits(
    logits_fn: LogitsFn, data: Encoded, *, pad_id: int, device: torch.device, batch_size: int = 128
) -> torch.Tensor:
    """Logits for every example of ``data`` (float32, CPU, in input order)."""
    out = torch.empty(len(data), 0)
    for batch in length_buckets([len(s) for s in data.ids], batch_size, None):
        ids, mask = pad_batch([data.ids[i] for i in batch], pad_id)
        logits = logits_fn(ids.to(device), mask.to(device)).float().cpu()
        if out.shape[1] == 0:
            out = torch.empty(len(data), logits.shape[1])
        out[batch] = logits
    return out


class Trainer:
    """Runs :class:`LoopConfig` over a model whose trainable parameters have ``requires_grad``."""

    def __init__(
        self,
        model: nn.Module,
        logits_fn: LogitsFn,
        config: LoopConfig,
        *,
        labels: Sequence[str],
        pad_id: int,
        device: torch.device,
        state_dir: Path,
        fingerprint: dict[str, Any],
        autocast: torch.dtype | None = None,
        is_head: Callable[[str], bool] = lambda name: False,
        echo: Callable[[str], None] = print,
    ) -> None:
        """``is_head``: which trainable parameters (by name) train at ``config.head_lr``."""
        self.model, self.logits_fn, self.config = model, logits_fn, config
        self.labels, self.pad_id, self.device = list(labels), pad_id, device
        self.state_path = state_dir / STATE_FILE
        self.fingerprint = fingerprint
        self.autocast = autocast
        self.echo = echo
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        groups = []
        for head in (False, True):
            peak = config.head_lr if head and config.head_lr is not None else config.lr
            for decay in (True, False):
                chosen = [p for n, p in self.params.items() if is_head(n) == head and (p.ndim >= 2) == decay]
                if chosen:
                    wd = config.weight_decay if decay else 0.0
                    groups.append({"params": chosen, "weight_decay": wd, "peak_lr": peak, "lr": peak})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr)

    def _logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.autocast is None:
            return self.logits_fn(ids, mask)
        with torch.autocast(self.device.type, dtype=self.autocast):
            return self.logits_fn(ids, mask)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in state.items():
                self.params[name].copy_(tensor)

    def _save(self, snapshot: dict[str, Any]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(snapshot, tmp)
        os.replace(tmp, self.state_path)

    def _resume(self) -> dict[str, Any] | None:
        if not self.state_path.is_file():
            return None
        snapshot: dict[str, Any] = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if snapshot.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"{self.state_path} is the state of a run with other data or settings; "
                "delete it to start over (`train lora` does that with --fresh)"
            )
        return snapshot

    def evaluate(self, data: Encoded) -> tuple[float, Any]:
        """Mean cross-entropy and the :class:`~models.training.evaluation.Report` on ``data``."""
        self.model.eval()
        logits = predict_logits(self._logits, data, pad_id=self.pad_id, device=self.device)
        self.model.train()
        truth = torch.as_tensor(data.labels)
        loss = float(nn.functional.cross_entropy(logits, truth))
        return loss, evaluate(self.labels, data.labels, logits.softmax(-1))

    def fit(
        self, train: Encoded, dev: Encoded, teacher: torch.Tensor | None = None
    ) -> tuple[FitResult, dict[str, torch.Tensor]]:
        """Train; returns the history and the best epoch's trainable weights (also loaded).

        With ``teacher`` (log-probabilities, one row per training example) the loss is
        ``(1 - distill) · cross-entropy + distill · KL(teacher ‖ model)``.
        """
        cfg = self.config
        if (teacher is None) != (cfg.distill == 0):
            raise ValueError("teacher log-probabilities go with distill > 0, and only with it")
        if teacher is not None and teacher.shape[0] != len(train):
            raise ValueError(f"{teacher.shape[0]} teacher rows for {len(train)} training examples")
        lengths = [len(s) for s in train.ids]
        per_epoch = math.ceil(math.ceil(len(train) / cfg.batch_size) / cfg.grad_accum)
        total = per_epoch * cfg.epochs
        schedule = warmup_cosine(total, max(1, round(cfg.warmup * total)))
        result, best_state = FitResult(), self.trainable_state()
        step, start_epoch, skip_batches, stale = 0, 0, 0, 0
        snapshot = self._resume()
        if snapshot is not None:
            self.load_trainable(snapshot["weights"])
            self.optimizer.load_state_dict(snapshot["optimizer"])
            step, start_epoch, skip_batches = snapshot["step"], snapshot["epoch"], snapshot["batch"]
            result = FitResult(
                [EpochRecord(**r) for r in snapshot["history"]], snapshot["best_epoch"], snapshot["best_f1"]
            )
            best_state, stale = snapshot["best_weights"], snapshot["stale"]
            self.echo(f"resuming from {self.state_path}: epoch {start_epoch + 1}, optimizer step {step}")

        def save(epoch: int, batch: int) -> None:
            self._save(
                {
                    "fingerprint": self.fingerprint,
                    "weights": self.trainable_state(),
                    "optimizer": self.optimizer.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "batch": batch,
                    "history": [asdict(r) for r in result.history],
                    "best_epoch": result.best_epoch,
                    "best_f1": result.best_macro_f1,
                    "best_weights": best_state,
                    "stale": stale,
                }
            )

        self.model.train()
        for epoch in range(start_epoch, cfg.epochs):
            if stale >= cfg.patience:
                result.stopped_early = True
                self.echo(f"stopped early: no better dev macro-F1 for {cfg.patience} epoch(s)")
                break
            began = time.perf_counter()
            batches = length_buckets(lengths, cfg.batch_size, random.Random(cfg.seed * 1_000_003 + epoch))
            losses: list[float] = []
            bar = tqdm(
                total=len(batches),
                initial=skip_batches,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                unit="batch",
                leave=False,
                disable=None,
            )
            for b in range(skip_batches, len(batches)):
                if b % cfg.grad_accum == 0:
                    torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks replay on resume
                ids, mask = pad_batch([train.ids[i] for i in batches[b]], self.pad_id)
                truth = torch.as_tensor([train.labels[i] for i in batches[b]], device=self.device)
                logits = self._logits(ids.to(self.device), mask.to(self.device)).float()
                loss = nn.functional.cross_entropy(logits, truth)
                if teacher is not None:
                    target = teacher[batches[b]].to(self.device)
                    kl = nn.functional.kl_div(
                        logits.log_softmax(-1), target, log_target=True, reduction="batchmean"
                    )
                    loss = (1 - cfg.distill) * loss + cfg.distill * kl
                (loss / cfg.grad_accum).backward()
                losses.append(loss.item())
                bar.update(1)
                if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
                    for group in self.optimizer.param_groups:
                        group["lr"] = group["peak_lr"] * schedule(step)
                    torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    step += 1
                    if step % cfg.save_every == 0 and b + 1 < len(batches):
                        save(epoch, b + 1)
                    bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            bar.close()
            skip_batches = 0
            dev_loss, report = self.evaluate(dev)
            record = EpochRecord(
                epoch=epoch + 1,
                step=step,
                train_loss=sum(losses) / max(1, len(losses)),
                dev_loss=dev_loss,
                dev_accuracy=report.accuracy,
                dev_macro_f1=report.macro_f1,
                lr=cfg.lr * schedule(max(0, step - 1)),
                seconds=time.perf_counter() - began,
            )
            result.history.append(record)
            better = report.macro_f1 > result.best_macro_f1
            if better:
                result.best_epoch, result.best_macro_f1 = epoch + 1, report.macro_f1
                best_state, stale = self.trainable_state(), 0
            else:
                stale += 1
            self.echo(
                f"epoch {epoch + 1}/{cfg.epochs}  train loss {record.train_loss:.4f}  "
                f"dev loss {dev_loss:.4f}  dev acc {report.accuracy:.4f}  "
                f"dev macro-F1 {report.macro_f1:.4f}  "
                f"{record.seconds:.0f} s{'  (best)' if better else ''}"
            )
            save(epoch + 1, 0)
        self.load_trainable(best_state)
        return result, best_state

    def finish(self) -> None:
        """Drop the resumable state once the checkpoint is written."""
        self.state_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else lives there
            self.state_path.parent.rmdir()
