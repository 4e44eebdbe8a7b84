"""The files of the hub's Qwen3 repositories, as published, for building look-alike tiny bases.

No hub is reachable from our machines, so these are the published field values, each with where
it was read (public copies of the hub files, found by code search; the hub itself was not read).
:mod:`models.bases.hub_like` shrinks only the widths (hidden size, layers, heads, intermediate size)
and keeps everything a loader can trip on: key prefixes, tied embeddings, the padded vocabulary,
no pad id in ``config.json``, the tokenizer's post-processor and padding side, shard layout, the
sentence-transformers files.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Any

from models.tokenizer import SPECIAL_TOKENS

# Qwen/Qwen3-0.6B config.json, verbatim: quoted in a public Rust test (`QWEN3_06B_CONFIG`, "parse
# the Qwen3-0.6B config") and in a model-info dump headed "# Qwen/Qwen3-0.6B ## model config";
# the two copies agree field for field.
QWEN3_06B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "model_type": "qwen3",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

# Qwen/Qwen3-4B config.json: the 0.6B file with the 4B widths. Widths, rope_theta and the 40,960
# positions as a public re-implementation's `Qwen3Config` defaults for Qwen3-4B list them (hidden
# 2560, intermediate 9728, 36 layers, 32 heads, 8 kv heads, tied, vocab 151936); the later
# Qwen3-4B-2507 differs (262,144 positions, rope_theta 5e6), as akougkas/warpio-cli's
# warpio-docs/ai-docs/model_cards/qwen3:4b.md shows.
QWEN3_4B_CONFIG: dict[str, Any] = {
    **QWEN3_06B_CONFIG,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "max_window_layers": 36,
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
}

# Qwen/Qwen3-Embedding-0.6B config.json: a public copy inlined in a model's text-backbone builder
# (`qwen_config = {... "architectures": ["Qwen3ForCausalLM"], "eos_token_id": 151643,
# "max_position_embeddings": 32768, "vocab_size": 151669, "tie_word_embeddings": true ...}`).
# That copy was re-saved from a loaded model (torch_dtype float32, _attn_implementation_autoset);
# the published file's bfloat16 and transformers_version are restored here.
QWEN3_EMBEDDING_06B_CONFIG: dict[str, Any] = {
    **QWEN3_06B_CONFIG,
    "eos_token_id": 151643,
    "max_position_embeddings": 32768,
    "transformers_version": "4.51.3",
    "vocab_size": 151669,
}

# generation_config.json of Qwen/Qwen3-0.6B and -4B (the sampling defaults of their model cards:
# temperature 0.6, top_p 0.95, top_k 20; eos = <|im_end|>, <|endoftext|>).
QWEN3_GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}

# Which of the 26 special tokens tokenizer_config.json marks "special": the first 14
# (<|endoftext|> … <|video_pad|>); tool, FIM and think tokens are not. As in the published
# tokenizer_config.json quoted in akougkas/warpio-cli warpio-docs/ai-docs/model_cards/qwen3:4b.md.
_SPECIAL_COUNT = 14


def qwen3_tokenizer_config(*, model_max_length: int, padding_side: str | None) -> dict[str, Any]:
    """tokenizer_config.json of the Qwen3 repositories (same keys and order as the published one).

    The chat template is Qwen3's original one (with the ``enable_thinking`` switch), recovered
    from a public copy of the Qwen3 tokenizer_config's ``chat_template`` string.
    """
    decoder = {
        str(151643 + i): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": i < _SPECIAL_COUNT,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }  # fmt: skip
    config: dict[str, Any] = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(SPECIAL_TOKENS[1:_SPECIAL_COUNT]),  # <|im_start|> … <|video_pad|>
        "bos_token": None,
        "chat_template": chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
        "add_bos_token": False,
    }
    if padding_side is not None:
        config["padding_side"] = padding_side
    return config


def chat_template() -> str:
    path = importlib.resources.files("models.bases") / "hub_files" / "qwen3-chat-template.jinja"
    return path.read_text("utf-8")


# Qwen3-Embedding's tokenizer.json post-processor: <|endoftext|> after every text (the pooled token).
_EOT = "<|endoftext|>"
EMBEDDING_POST_PROCESSOR: dict[str, Any] = {
    "type": "TemplateProcessing",
    "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": _EOT, "type_id": 0}}],
    "pair": [
        {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": _EOT, "type_id": 0}},
        {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": _EOT, "type_id": 1}},
    ],
    "special_tokens": {_EOT: {"id": _EOT, "ids": [151643], "tokens": [_EOT]}},
}  # fmt: skip

# sentence-transformers files of Qwen/Qwen3-Embedding-0.6B. 1_Pooling/config.json verbatim as
# quoted in a public test ("Its real 1_Pooling/config.json"); modules.json as the public
# fixtures that copy it (Transformer, 1_Pooling, 2_Normalize); the prompts as the model card
# uses them (`model.encode(queries, prompt_name="query")`).
ST_MODULES: list[dict[str, Any]] = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def st_pooling(dimension: int) -> dict[str, Any]:
    return {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True,
        "include_prompt": True,
    }


ST_CONFIG: dict[str, Any] = {
    "prompts": {
        "query": (
            "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
        ),
        "document": "",
    },
    "default_prompt_name": None,
    "similarity_fn_name": "cosine",
}


@dataclass(frozen=True)
class Layout:
    """One hub repository's shape: what :func:`models.bases.hub_like.build_tiny_base` reproduces."""

    repo: str
    config: dict[str, Any]
    architecture: str  # the class whose state dict the weights file holds
    shards: int  # model.safetensors (1) or model-0000k-of-0000n.safetensors + index
    embedding: bool  # Qwen3-Embedding: appends <|endoftext|>, pads left, sentence-transformers files
    model_max_length: int
    generation_config: dict[str, Any] | None = None


LAYOUTS: dict[str, Layout] = {
    # Qwen3-0.6B: one model.safetensors of a Qwen3ForCausalLM ("model."-prefixed keys).
    "Qwen/Qwen3-0.6B": Layout(
        "Qwen/Qwen3-0.6B", QWEN3_06B_CONFIG, "Qwen3ForCausalLM", 1, False, 131072, QWEN3_GENERATION_CONFIG
    ),
    # Qwen3-4B: three shards model-00001-of-00003.safetensors … with model.safetensors.index.json.
    "Qwen/Qwen3-4B": Layout(
        "Qwen/Qwen3-4B", QWEN3_4B_CONFIG, "Qwen3ForCausalLM", 3, False, 131072, QWEN3_GENERATION_CONFIG
    ),
    # Qwen3-Embedding-0.6B: unprefixed Qwen3Model keys (embed_tokens.weight, layers.0…), although
    # config.json names Qwen3ForCausalLM.
    "Qwen/Qwen3-Embedding-0.6B": Layout(
        "Qwen/Qwen3-Embedding-0.6B", QWEN3_EMBEDDING_06B_CONFIG, "Qwen3Model", 1, True, 131072
    ),
}
