"""The shared fine-tuning loop: schedule, batching, best epoch, early stopping, exact resume."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from models.training.loop import (
    Encoded,
    LoopConfig,
    Trainer,
    length_buckets,
    pad_batch,
    predict_logits,
    warmup_cosine,
)
from models.training.lora import choose_max_length


def test_warmup_then_cosine_to_zero() -> None:
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)  # half-way through the decay
    assert f(99) < 0.001
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_length_buckets_cover_every_example_once_and_group_lengths() -> None:
    lengths = [random.Random(i).randint(1, 300) for i in range(1000)]
    batches = length_buckets(lengths, 32, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    # within a batch the lengths are close (sorted chunks), far closer than at random
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 30
    assert length_buckets(lengths, 32, random.Random(0)) == batches  # seeded
    assert length_buckets(lengths, 32, random.Random(1)) != batches


def test_pad_batch_right_pads_with_a_mask() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_max_length_follows_the_99th_percentile() -> None:
    lengths = [10] * 98 + [40, 500]
    chosen, stats = choose_max_length(lengths, limit=4096)
    assert stats == {"p50": 10, "p90": 10, "p99": 40, "max": 500}
    assert chosen == 40  # special tokens are in the lengths already; a multiple of 8
    assert choose_max_length([41] * 100, limit=4096)[0] == 48  # rounded up to a multiple of 8
    assert choose_max_length(lengths, limit=32)[0] == 32


class BagModel(nn.Module):
    """A unit-test stand-in for a sequence classifier: mean of token embeddings, dropout, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 8)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, 2)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = (self.emb(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.out(self.drop(x))


def toy_data(n: int, seed: int) -> Encoded:
    """Label 1 when token 7 occurs: learnable, with some length variety."""
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        seq = [rng.randint(1, 49) for _ in range(rng.randint(2, 9))]
        labels.append(int(7 in seq))
        ids.append(seq)
    return Encoded(ids, labels)


def make_trainer(tmp_path: Path, config: LoopConfig, echo: object = None) -> tuple[Trainer, BagModel]:
    model = BagModel()
    trainer = Trainer(
        model, model.logits, config, labels=["no", "yes"], pad_id=0, device=torch.device("cpu"),
        state_dir=tmp_path, fingerprint={"test": 1}, echo=echo or (lambda _: None),  # type: ignore[arg-type]
    )  # fmt: skip
    return trainer, model


def test_fit_learns_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    train, dev = toy_data(400, 0), toy_data(200, 1)
    trainer, model = make_trainer(tmp_path, LoopConfig(epochs=6, lr=0.05, batch_size=16, patience=6))
    result, best = trainer.fit(train, dev)
    assert len(result.history) == 6
    f1s = [h.dev_macro_f1 for h in result.history]
    assert result.best_macro_f1 == max(f1s) > 0.65 > f1s[0]  # it learned
    assert result.best_epoch == f1s.index(max(f1s)) + 1
    # the model holds the best epoch's weights, not the last epoch's
    assert torch.equal(model.out.weight, best["out.weight"])
    _, report = trainer.evaluate(dev)
    assert report.macro_f1 == pytest.approx(result.best_macro_f1)


def test_early_stopping_after_patience_epochs_without_gain(tmp_path: Path) -> None:
    train, dev = toy_data(200, 0), toy_data(100, 1)
    trainer, _ = make_trainer(tmp_path, LoopConfig(epochs=20, lr=0.0, batch_size=16, patience=2))
    result, _ = trainer.fit(train, dev)  # lr 0: nothing ever improves after epoch 1
    assert result.stopped_early
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert result.best_epoch == 1


def test_distillation_learns_what_the_teacher_says(tmp_path: Path) -> None:
    train, dev = toy_data(400, 0), toy_data(200, 1)
    # the teacher follows another rule than the labels: "yes" when token 9 occurs
    says = torch.tensor([int(9 in seq) for seq in train.ids])
    teacher = torch.log(torch.full((len(train), 2), 0.05).scatter(1, says[:, None], 0.95))
    config = LoopConfig(epochs=6, lr=0.05, batch_size=16, patience=6, distill=1.0)
    trainer, model = make_trainer(tmp_path, config)
    trainer.fit(train, dev, teacher)
    model.eval()
    predicted = predict_logits(model.logits, dev, pad_id=0, device=torch.device("cpu")).argmax(-1)
    teacher_rule = torch.tensor([int(9 in seq) for seq in dev.ids])
    differ = teacher_rule != torch.tensor(dev.labels)  # token 7 or token 9, not both
    assert differ.sum() > 20
    assert (predicted[differ] == teacher_rule[differ]).float().mean() > 0.75  # the labels were ignored


def test_distillation_needs_a_teacher_row_per_example(tmp_path: Path) -> None:
    train, dev = toy_data(40, 0), toy_data(20, 1)
    trainer, _ = make_trainer(tmp_path, LoopConfig(epochs=1, distill=0.5))
    with pytest.raises(ValueError, match="go with distill"):
        trainer.fit(train, dev)
    with pytest.raises(ValueError, match="39 teacher rows for 40"):
        trainer.fit(train, dev, torch.zeros(39, 2))
    plain, _ = make_trainer(tmp_path, LoopConfig(epochs=1))
    with pytest.raises(ValueError, match="go with distill"):
        plain.fit(train, dev, torch.zeros(40, 2))


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [5, 13, 15], ids=["mid-epoch", "epoch-end", "next-epoch"])
def test_resume_replays_exactly_what_an_uninterrupted_run_does(tmp_path: Path, stop_at: int) -> None:
    train, dev = toy_data(200, 0), toy_data(100, 1)
    config = LoopConfig(epochs=3, lr=0.05, batch_size=16, grad_accum=2, save_every=2, patience=9, seed=3)
    # 13 batches per epoch, 7 optimizer steps; snapshots every 2 steps and after each epoch
    reference, _ = make_trainer(tmp_path / "ref", config)
    expected, expected_best = reference.fit(train, dev)

    trainer, model = make_trainer(tmp_path / "run", config)
    calls = 0
    plain = model.logits

    def failing(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        if model.training:  # a training batch, not an evaluation
            calls += 1
            if calls == stop_at:
                raise Interrupt
        return plain(ids, mask)

    trainer.logits_fn = failing
    with pytest.raises(Interrupt):
        trainer.fit(train, dev)
    assert trainer.state_path.is_file()

    messages: list[str] = []
    resumed, _ = make_trainer(tmp_path / "run", config, echo=messages.append)
    result, best = resumed.fit(train, dev)
    assert any(m.startswith("resuming from") for m in messages)
    assert [h.epoch for h in result.history] == [h.epoch for h in expected.history]
    for got, want in zip(result.history, expected.history, strict=True):
        assert got.dev_loss == pytest.approx(want.dev_loss, abs=1e-6)
    for name, tensor in expected_best.items():
        torch.testing.assert_close(best[name], tensor, rtol=0, atol=1e-6)


def test_resume_refuses_state_of_another_run(tmp_path: Path) -> None:
    train, dev = toy_data(100, 0), toy_data(50, 1)
    trainer, _ = make_trainer(tmp_path, LoopConfig(epochs=1, lr=0.05, batch_size=16))
    trainer.fit(train, dev)
    other = Trainer(
        BagModel(), BagModel().logits, LoopConfig(epochs=1), labels=["no", "yes"], pad_id=0,
        device=torch.device("cpu"), state_dir=tmp_path, fingerprint={"test": 2},
    )  # fmt: skip
    with pytest.raises(Exception, match="state of a run with other data or settings"):
        other.fit(train, dev)


def test_the_head_trains_at_its_own_learning_rate(tmp_path: Path) -> None:
    """A freshly initialised head next to pretrained weights: its own peak rate, same schedule."""
    model = BagModel()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(
        model, model.logits, LoopConfig(epochs=1, lr=0.0, head_lr=0.05, batch_size=16), labels=["no", "yes"],
        pad_id=0, device=torch.device("cpu"), state_dir=tmp_path, fingerprint={"test": 3},
        is_head=lambda name: name.startswith("out."),
    )  # fmt: skip
    peaks = sorted(g["peak_lr"] for g in trainer.optimizer.param_groups)
    assert peaks == [0.0, 0.05, 0.05]  # body (weights only: an embedding has no bias), head weight + bias
    trainer.fit(toy_data(100, 0), toy_data(50, 1))
    after = dict(model.named_parameters())
    assert torch.equal(after["emb.weight"], before["emb.weight"])  # lr 0: the body stays
    assert not torch.equal(after["out.weight"], before["out.weight"])  # the head moved
