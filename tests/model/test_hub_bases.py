"""The files users download, end to end: tiny bases laid out like Qwen/Qwen3-0.6B, Qwen/Qwen3-4B and
Qwen/Qwen3-Embedding-0.6B (`sentiment base tiny`), trained, evaluated, predicted, moved, and scored
against the reference implementations users compare with (transformers for the classifier,
sentence-transformers' `encode` for the embedding), including texts cut at max_length."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForSequenceClassification

from models.bases.hub_layouts import LAYOUTS
from models.bases.hub_like import TINY_WIDTHS
from models.demo.splits import LABELS, demo_splits, write_tsv
from models.engine.classifier import load_classifier
from models.engine.loading import resolve_base
from models.manifest import load_manifest
from models.training.data import Prepared, prepare_splits
from models.training.head_training import train_head
from models.training.loop import LoopConfig
from models.training.lora import train_lora

INSTRUCTION = "Classify the sentiment of a product review"
MAX_LENGTH = 48
# short, long (cut at MAX_LENGTH), mixed script, emoji, a special token's text, whitespace runs
TEXTS = [
    "好",
    "这个手机很好用，电池也耐用。" * 12,
    "The screen is great 但是电池太差了 😡 1234567",
    "物流很快👍👍，包装完好",
    "质量一般 <|im_start|> 还行",
    "  房间   很脏\n\n服务态度差  ",
    "not bad at all, would buy again",
]
quiet = lambda _: None  # noqa: E731


def sentiment(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def bases(root: Path) -> dict[str, Path]:
    """The three look-alikes, written by the documented command (as a user would)."""
    out = {}
    for like in LAYOUTS:
        out[like] = root / "bases" / like.split("/")[1]
        proc = sentiment(
            "base", "tiny", "--like", like, "--out", str(out[like]), "--home", str(root / "home")
        )
        assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def data(root: Path) -> tuple[Prepared, Path]:
    splits = demo_splits()
    files = {}
    for name, part in (("train", splits.train[:96]), ("dev", splits.dev[:32]), ("test", splits.test[:32])):
        files[name] = root / f"{name}.tsv"
        write_tsv(files[name], part)
    return prepare_splits(files["train"], files["dev"], files["test"], LABELS), files["test"]


@pytest.fixture(scope="module")
def checkpoints(root: Path, bases: dict[str, Path], data: tuple[Prepared, Path]) -> dict[str, Path]:
    """`train lora` on both causal-LM bases, `train head` on the embedding base."""
    prepared, _ = data
    loop = LoopConfig(epochs=1, lr=2e-3, batch_size=16, head_lr=1e-2)
    out = {}
    for like in ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B"):
        out[like] = train_lora(
            bases[like], prepared, LABELS, root / "ckpt" / f"lora-{like.split('/')[1]}",
            loop=loop, max_length=MAX_LENGTH, device="cpu", echo=quiet,
        )  # fmt: skip
    like = "Qwen/Qwen3-Embedding-0.6B"
    out[like] = train_head(
        bases[like], prepared, LABELS, root / "ckpt" / "head", cache_dir=root / "cache",
        instruction=INSTRUCTION, max_length=MAX_LENGTH, device="cpu", echo=quiet,
    )  # fmt: skip
    return out


def keys(directory: Path) -> list[str]:
    names: list[str] = []
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            names += list(f.keys())
    return names


def test_the_bases_are_laid_out_like_the_hub_repositories(bases: dict[str, Path]) -> None:
    for like, layout in LAYOUTS.items():
        base = bases[like]
        config = json.loads((base / "config.json").read_text())
        assert config == {**layout.config, **TINY_WIDTHS}  # the published fields, widths shrunk
        assert "pad_token_id" not in config and config["tie_word_embeddings"] is True
        tok_config = json.loads((base / "tokenizer_config.json").read_text())
        assert tok_config["tokenizer_class"] == "Qwen2Tokenizer"
        assert "enable_thinking" in tok_config["chat_template"]
        assert len(tok_config["added_tokens_decoder"]) == 26
        assert tok_config["additional_special_tokens"][0] == "<|im_start|>"
        assert tok_config["additional_special_tokens"][-1] == "<|video_pad|>"
        assert len(tok_config["additional_special_tokens"]) == 13
        tokenizer = AutoTokenizer.from_pretrained(base)
        appended = tokenizer("好").input_ids[-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
        assert appended == layout.embedding
        assert tokenizer.padding_side == ("left" if layout.embedding else "right")
        names = keys(base)
        assert "lm_head.weight" not in names  # tied, as on the hub
        prefixed = all(n.startswith("model.") for n in names)
        assert prefixed == (layout.architecture == "Qwen3ForCausalLM")
    sharded = bases["Qwen/Qwen3-4B"]
    assert not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert sorted(index["weight_map"]) == sorted(keys(sharded))
    embedding = bases["Qwen/Qwen3-Embedding-0.6B"]
    assert (embedding / "1_Pooling" / "config.json").is_file() and (embedding / "modules.json").is_file()


def test_transformers_loads_the_bases_as_it_loads_the_hub_files(bases: dict[str, Path]) -> None:
    """The independent check of the layout: transformers' own classes take every tensor."""
    for like in ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B"):
        _, info = AutoModelForCausalLM.from_pretrained(bases[like], output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], like


@pytest.mark.parametrize("like", ["Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B"])
def test_lora_classifier_scores_as_transformers_does(like: str, checkpoints: dict[str, Path]) -> None:
    """The reference: transformers on the checkpoint's own tokenizer, cut at max_length."""
    checkpoint = checkpoints[like]
    manifest = load_manifest(checkpoint)
    assert manifest.max_length == MAX_LENGTH
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):  # the base's, as is
        assert (checkpoint / name).read_bytes() == (
            checkpoint.parent.parent / "bases" / like.split("/")[1] / name
        ).read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = Qwen3ForSequenceClassification.from_pretrained(checkpoint, dtype=torch.float32).eval()
    batch = tokenizer(TEXTS, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model(**batch).logits.softmax(-1)
    engine = load_classifier(checkpoint, device="cpu", dtype="float32")
    ours = engine.infer(TEXTS)
    assert ours.n_tokens == batch["attention_mask"].sum(-1).tolist()  # same tokens, same cut
    assert ours.truncated[1] and ours.n_tokens[1] == MAX_LENGTH
    torch.testing.assert_close(ours.probabilities, reference, atol=1e-5, rtol=0)


def test_embedding_features_equal_sentence_transformers_encode(
    checkpoints: dict[str, Path], bases: dict[str, Path]
) -> None:
    """What users of the Qwen3-Embedding model card call: encode with the instruction as prompt."""
    from sentence_transformers import SentenceTransformer

    base = bases["Qwen/Qwen3-Embedding-0.6B"]
    st = SentenceTransformer(str(base), device="cpu", model_kwargs={"dtype": torch.float32})
    assert next(st.parameters()).dtype == torch.float32
    st.max_seq_length = MAX_LENGTH
    reference = st.encode(
        TEXTS, prompt=f"Instruct: {INSTRUCTION}\nQuery:", convert_to_tensor=True, batch_size=3
    )
    engine = load_classifier(checkpoints["Qwen/Qwen3-Embedding-0.6B"], device="cpu", dtype="float32")
    ours = engine.infer(TEXTS, keep_features=True)
    assert ours.truncated[1] and ours.n_tokens[1] == MAX_LENGTH
    assert ours.features is not None
    torch.testing.assert_close(ours.features, reference.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("like", list(LAYOUTS))
def test_eval_and_predict_serve_each_trained_checkpoint(
    like: str, checkpoints: dict[str, Path], data: tuple[Prepared, Path]
) -> None:
    checkpoint = checkpoints[like]
    recorded = load_manifest(checkpoint).model_dump()["evaluation"]["test"]
    proc = sentiment("eval", "--checkpoint", str(checkpoint), "--data", str(data[1]), "--json")
    assert proc.returncode == 0, proc.stderr
    report = orjson.loads(proc.stdout)
    assert (report["accuracy"], report["confusion"]) == (recorded["accuracy"], recorded["confusion"])
    proc = sentiment("predict", "--checkpoint", str(checkpoint), "--text", TEXTS[1], "--text", TEXTS[2])
    assert proc.returncode == 0, proc.stderr
    results = [orjson.loads(line) for line in proc.stdout.splitlines()]
    offline = load_classifier(checkpoint, device="cpu", dtype="float32").classify(TEXTS[1:3])
    assert [r["label"] for r in results] == [LABELS[p.label_id] for p in offline]


def test_a_checkpoint_moved_with_its_base_still_loads(
    checkpoints: dict[str, Path], root: Path, tmp_path: Path
) -> None:
    """Nothing machine-specific is recorded: the base is found relative to the checkpoint."""
    head = checkpoints["Qwen/Qwen3-Embedding-0.6B"]
    reference = load_manifest(head).base_model
    assert not Path(reference).is_absolute()
    moved = tmp_path / "elsewhere" / "models"
    shutil.copytree(root / "bases", moved / "bases")
    shutil.copytree(root / "ckpt", moved / "ckpt")
    moved_head = moved / "ckpt" / head.name
    assert resolve_base(reference, moved_head) == (moved / "bases" / "Qwen3-Embedding-0.6B").resolve()
    before = load_classifier(head, device="cpu", dtype="float32").infer(TEXTS).logits
    after = load_classifier(moved_head, device="cpu", dtype="float32").infer(TEXTS).logits
    assert torch.equal(before, after)
    lora = moved / "ckpt" / checkpoints["Qwen/Qwen3-0.6B"].name
    assert not Path(load_manifest(lora).base_model).is_absolute()
