"""Loading bases and checkpoints prints nothing: no transformers LOAD REPORT table.

transformers logs a table of every key it did not pair (UNEXPECTED, MISSING), with terminal escape
codes even into a file. Our loaders leave keys out on purpose (the fresh score head of `train lora`,
the lm_head of an untied causal-LM base under a backbone) and check the keys themselves, so nothing
of it may reach stdout or stderr: not while training (a head trainer loads its base three times),
not on `predict`. The bases: the hub look-alikes of `sentiment base tiny` (tied, as Qwen3-0.6B and
Qwen3-Embedding-0.6B are) and an untied one with an lm_head, as Qwen3-8B and up are published.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3ForSequenceClassification, Qwen3Model

from models.bases.hub_like import build_tiny_base
from models.demo.splits import LABELS, demo_splits, write_tsv
from models.engine.classifier import load_classifier
from models.engine.heads import build_head, save_embedding_head_checkpoint
from models.engine.loading import LM_HEAD, load_model
from models.manifest import Manifest
from models.training.data import Prepared, prepare_splits
from models.training.head_training import train_head
from models.training.loop import LoopConfig
from models.training.lora import train_lora

NOISE = ("LOAD REPORT", "UNEXPECTED", "MISSING", "\x1b[")
quiet = lambda _: None  # noqa: E731


@pytest.fixture(autouse=True)
def transformers_to_this_stderr(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """transformers' log handler keeps the stderr of the moment it was set up (under pytest, a capture
    of the collection); point it at this test's stderr, so that capfd sees what a user would."""
    # its own StreamHandler, not pytest's (a _FileHandler is a StreamHandler too)
    handlers = [h for h in logging.getLogger("transformers").handlers if type(h) is logging.StreamHandler]
    before = [(h, h.setStream(sys.stderr)) for h in handlers]
    yield
    for handler, stream in before:
        if stream is not None:
            handler.setStream(stream)


def assert_quiet(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, what: str) -> None:
    out, err = capfd.readouterr()
    for word in NOISE:
        assert word not in out + err, f"{what} printed {word!r}:\n{out}{err}"
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warned, f"{what} warned: {warned}"  # the report too, where the logger propagates
    caplog.clear()


def untie(base: Path, out: Path) -> Path:
    """``base`` (a Qwen3ForCausalLM look-alike) with its own lm_head stored, as the untied models ship."""
    out.mkdir(parents=True)
    for f in base.iterdir():
        if f.is_file():
            out.joinpath(f.name).write_bytes(f.read_bytes())
    config = json.loads((out / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config, indent=2))
    state = load_file(str(out / "model.safetensors"))
    state["lm_head.weight"] = torch.randn(config["vocab_size"], config["hidden_size"]).to(torch.bfloat16)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("noise")


@pytest.fixture(scope="module")
def bases(root: Path, cache_dir: Path) -> dict[str, Path]:
    out = {
        like: build_tiny_base(like, root / "bases" / like.split("/")[1], cache_dir=cache_dir)
        for like in ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-Embedding-0.6B")
    }
    out["untied"] = untie(out["Qwen/Qwen3-0.6B"], root / "bases" / "untied")
    return out


@pytest.fixture(scope="module")
def data(root: Path) -> Prepared:
    splits = demo_splits()
    files = {}
    for name, part in (("train", splits.train[:48]), ("dev", splits.dev[:16]), ("test", splits.test[:16])):
        files[name] = root / f"{name}.tsv"
        write_tsv(files[name], part)
    return prepare_splits(files["train"], files["dev"], files["test"], LABELS)


def test_the_capture_sees_transformers_report(
    bases: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """The control: loaded plainly, the untied base does print the report that the loaders keep out."""
    capfd.readouterr()
    Qwen3ForSequenceClassification.from_pretrained(bases["untied"], num_labels=2)
    _, err = capfd.readouterr()
    assert "LOAD REPORT" in err and "UNEXPECTED" in err and "MISSING" in err, err


@pytest.mark.parametrize("base", ["Qwen/Qwen3-Embedding-0.6B", "untied"])
def test_train_head_and_its_checkpoint_load_quietly(
    base: str,
    bases: dict[str, Path],
    data: Prepared,
    root: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    capfd.readouterr()
    checkpoint = train_head(
        bases[base], data, LABELS, root / "ckpt" / f"head-{base.split('/')[-1]}", cache_dir=root / "cache",
        max_length=48, device="cpu", dtype="float32", echo=quiet,
    )  # fmt: skip
    assert_quiet(capfd, caplog, f"train head on {base}")
    load_classifier(checkpoint, device="cpu", dtype="float32").infer(["好"])
    assert_quiet(capfd, caplog, f"loading the head checkpoint on {base}")


@pytest.mark.parametrize("base", ["Qwen/Qwen3-0.6B", "untied"])
def test_train_lora_and_its_checkpoint_load_quietly(
    base: str,
    bases: dict[str, Path],
    data: Prepared,
    root: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    capfd.readouterr()
    checkpoint = train_lora(
        bases[base], data, LABELS, root / "ckpt" / f"lora-{base.split('/')[-1]}",
        loop=LoopConfig(epochs=1, batch_size=16), max_length=48, device="cpu", echo=quiet,
    )  # fmt: skip
    assert_quiet(capfd, caplog, f"train lora on {base}")
    load_classifier(checkpoint, device="cpu", dtype="float32").infer(["好"])
    assert_quiet(capfd, caplog, f"loading the LoRA checkpoint on {base}")


def test_predict_with_a_head_on_an_untied_base_prints_only_results(
    root: Path, bases: dict[str, Path]
) -> None:
    """The command line as users run it, stderr captured as into a file: the results, nothing else."""
    manifest = Manifest(
        kind="embedding-head", base_model=str(bases["untied"]), labels=list(LABELS), max_length=48
    )
    checkpoint = save_embedding_head_checkpoint(
        root / "ckpt" / "head-random", build_head("linear", 64, 2), manifest
    )
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "predict", "--checkpoint", str(checkpoint), "--text", "好"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["label"] in LABELS
    assert proc.stderr == ""


def test_a_tensor_without_a_place_is_one_warning_line(
    tiny_checkpoint: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """What is not left out on purpose is still said, in one line of our own: here a classifier
    checkpoint loaded as a backbone (a head's base), whose score head a Qwen3Model has no place for."""
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="models.engine.loading"):
        load_model(Qwen3Model, tiny_checkpoint, torch.float32, torch.device("cpu"), dropped=LM_HEAD)
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err
    assert [r.getMessage() for r in caplog.records] == [
        f"{tiny_checkpoint}: the weights hold 1 tensor(s) that a Qwen3Model has no place for, not loaded: "
        "e.g. ['score.weight']"
    ]
