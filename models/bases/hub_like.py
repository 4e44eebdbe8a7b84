"""``sentiment base tiny``: tiny random-weight bases laid out exactly like the hub's Qwen3 repositories.

For trying ``train lora`` / ``train head`` end to end without a download, and for the tests that
hold the loaders to the files users really bring. The layout, field values and tokenizer files
come from :mod:`models.bases.hub_layouts`; only the widths shrink (and the weights are random).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model
from transformers.utils import logging as hf_logging

from models.bases.hub_layouts import (
    EMBEDDING_POST_PROCESSOR,
    LAYOUTS,
    ST_CONFIG,
    ST_MODULES,
    Layout,
    qwen3_tokenizer_config,
    st_pooling,
)
from models.manifest import atomic_directory
from models.tokenizer import save_tokenizer
from schemas.errors import ConfigError

# The only fields changed from the published config.json.
TINY_WIDTHS: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "max_window_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
_NOT_CONFIG_ARGS = ("architectures", "model_type", "torch_dtype", "transformers_version")


def layout_for(like: str) -> Layout:
    if like not in LAYOUTS:
        raise ConfigError(f"--like must be one of {', '.join(LAYOUTS)}; got {like!r}")
    return LAYOUTS[like]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _weights(layout: Layout, config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """The state dict the hub's files hold, in bfloat16 (tied lm_head not stored, as on the hub)."""
    qwen3 = Qwen3Config(**{k: v for k, v in config.items() if k not in _NOT_CONFIG_ARGS})
    torch.manual_seed(seed)
    model = (Qwen3ForCausalLM if layout.architecture == "Qwen3ForCausalLM" else Qwen3Model)(qwen3)
    state = {k: v.detach().to(torch.bfloat16).contiguous().clone() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    return state


def _save_weights(directory: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    """``model.safetensors``, or ``shards`` files named as the hub names them plus the index."""
    meta = {"format": "pt"}
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"), metadata=meta)
        return
    keys = list(state)
    size = -(-len(keys) // shards)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * size : (i + 1) * size]}
        save_file(part, str(directory / name), metadata=meta)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(
        directory / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )


def build_tiny_base(like: str, out: Path, *, cache_dir: Path, seed: int = 0) -> Path:
    """Write a tiny look-alike of the hub repository ``like`` (e.g. ``Qwen/Qwen3-0.6B``) to ``out``."""
    layout = layout_for(like)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out or remove it")
    hf_logging.disable_progress_bar()
    config = {**layout.config, **TINY_WIDTHS}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out) as tmp:
        _save_weights(tmp, _weights(layout, config, seed), layout.shards)
        _write_json(tmp / "config.json", config)
        if layout.generation_config is not None:
            _write_json(tmp / "generation_config.json", layout.generation_config)
        save_tokenizer(
            cache_dir,
            tmp,
            appends_eos=layout.embedding,
            post_processor=EMBEDDING_POST_PROCESSOR if layout.embedding else None,
            config=qwen3_tokenizer_config(
                model_max_length=layout.model_max_length, padding_side="left" if layout.embedding else None
            ),
        )
        if layout.embedding:
            _write_json(tmp / "modules.json", ST_MODULES)
            _write_json(tmp / "1_Pooling" / "config.json", st_pooling(config["hidden_size"]))
            _write_json(tmp / "config_sentence_transformers.json", ST_CONFIG)
        (tmp / "README.md").write_text(
            f"# tiny look-alike of {layout.repo}\n\nRandom weights at toy widths ({TINY_WIDTHS}), laid out "
            f"as the hub repository's files; written by `sentiment base tiny --like {layout.repo}` "
            f"(seed {seed}). For trying the trainers and the worker without a download; it classifies "
            "nothing meaningfully until trained.\n",
            encoding="utf-8",
        )
    return out
