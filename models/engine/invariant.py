"""Batch-invariant linear layers: a row's output must not depend on how many rows share the call.

BLAS libraries pick kernels (and summation orders) by the matrix shape, so ``x @ W.T`` over 37
rows and over 4,000 rows can round a given row differently. Running every product in tiles of a
fixed row count makes each row's arithmetic the same whatever batch it is in, so in fp32 a text
scores bit for bit the same alone and inside any batch. Tiling costs throughput, so the engine
uses it for fp32 (where exactness is promised) and not for bf16 (where a tolerance is stated).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

ROW_TILE = 256


def tiled_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn`` (row-wise over the last dimension) applied to ``ROW_TILE``-row tiles of ``x``."""
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if n % ROW_TILE:
        rows = torch.cat([rows, rows.new_zeros(ROW_TILE - n % ROW_TILE, rows.shape[1])])
    out = torch.cat([fn(tile) for tile in rows.split(ROW_TILE)])[:n]
    return out.reshape(*x.shape[:-1], out.shape[-1])


class RowTiledLinear(nn.Linear):
    """An ``nn.Linear`` whose product runs in fixed ``ROW_TILE``-row tiles (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_rows(lambda t: F.linear(t, self.weight, self.bias), x)


class RowTiledRMSNorm(Qwen3RMSNorm):
    """Qwen3's RMSNorm in fixed row tiles: CUDA picks its reduction layout by the row count."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return tiled_rows(super().forward, hidden_states)


def make_batch_invariant(module: nn.Module, *, reductions: bool = False) -> nn.Module:
    """Switch every ``nn.Linear`` (and with ``reductions``, every Qwen3 RMSNorm) to fixed row tiles.

    In place; the parameters stay where they are. CPU reductions over a row were measured
    invariant already, so there only the products need tiles; on CUDA the norms do too.
    """
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = RowTiledLinear
        elif reductions and type(sub) is Qwen3RMSNorm:
            sub.__class__ = RowTiledRMSNorm
    return module
