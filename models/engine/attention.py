"""Packed (variable-length) causal attention, registered as a transformers attention backend.

transformers' own Qwen3 modules (projections, q/k RMSNorm, RoPE, MLP) run unchanged; only the
attention call is ours. With ``attn_implementation=PACKED`` the model takes one packed row of
texts plus ``cu_seq_lens_q``/``max_length_q`` (transformers' FlashAttention keyword names) and
each text attends to itself alone:

- CUDA, bf16/fp16: PyTorch's FlashAttention varlen kernel, split-KV off (``num_splits=1``) where
  the installed PyTorch has that switch, so a text's result does not depend on its neighbours'
  lengths.
- anything else (CPU, fp32): one ``scaled_dot_product_attention`` per distinct text length, over
  the texts of that length stacked without padding: each row is the computation a text alone gets.

No mask function is registered for the name, so transformers builds no ``[T, T]`` mask.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED = "sentiment_packed"

_VarlenFn = Callable[..., Any]


def _varlen() -> tuple[_VarlenFn | None, frozenset[str]]:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # PyTorch without the varlen API
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


_VARLEN, _VARLEN_PARAMS = _varlen()


def _repeat_kv(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=dim)


def varlen_available(device: torch.device, dtype: torch.dtype) -> bool:
    return _VARLEN is not None and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)


def _flash_varlen(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float
) -> torch.Tensor:
    assert _VARLEN is not None
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, heads, D]
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in _VARLEN_PARAMS:
        kwargs["window_size"] = (-1, 0)  # causal
    else:
        kwargs["is_causal"] = True
    if "enable_gqa" in _VARLEN_PARAMS:
        kwargs["enable_gqa"] = True
    else:
        groups = q.shape[1] // k.shape[1]
        k, v = _repeat_kv(k, groups, 1), _repeat_kv(v, groups, 1)
    if "num_splits" in _VARLEN_PARAMS:
        kwargs["num_splits"] = 1  # batch invariance
    out = _VARLEN(q, k, v, cu, cu, max_len, max_len, **kwargs)
    return out[None]  # [1, T, heads, D]


def _per_length(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor, scale: float
) -> torch.Tensor:
    """One ``scaled_dot_product_attention`` per distinct text length, over all texts of that length.

    Texts of equal length stack into an unpadded ``[k, heads, L, D]`` batch whose rows are
    computed independently, so each text gets the arithmetic it would get alone.
    """
    groups = query.shape[1] // key.shape[1]
    starts, lengths = cu[:-1].long(), (cu[1:] - cu[:-1]).long()
    out = torch.empty_like(query)
    for length in torch.unique(lengths).tolist():
        tokens = starts[lengths == length, None] + torch.arange(length, device=cu.device)  # [k, L]
        q, k, v = (x[0][:, tokens].transpose(0, 1) for x in (query, key, value))  # [k, heads, L, D]
        k, v = _repeat_kv(k, groups, 1), _repeat_kv(v, groups, 1)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        out[0][:, tokens] = attended.transpose(0, 1)
    return out.transpose(1, 2)  # [1, T, heads, D]


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """``query`` ``[1, heads, T, D]``, ``key``/``value`` ``[1, kv_heads, T, D]`` → ``[1, T, heads, D]``."""
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError(f"the {PACKED!r} attention needs cu_seq_lens_q and max_length_q (a packed batch)")
    if sliding_window is not None or dropout:
        raise ValueError(f"the {PACKED!r} attention supports neither sliding windows nor dropout")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if varlen_available(query.device, query.dtype):
        return _flash_varlen(query, key, value, cu_seq_lens_q, max_length_q, scale), None
    return _per_length(query, key, value, cu_seq_lens_q, scale), None


AttentionInterface.register(PACKED, packed_attention)
