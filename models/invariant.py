"""Batch-invariant linear layers: a row's output must not depend on how many rows share the call.

BLAS libraries pick kernels (and summation orders) by the matrix shape, so ``x @ W.T`` over 37
rows and over 4,000 rows can round a given row differently. Running every product in tiles of a
fixed row count makes each row's arithmetic the same whatever batch it is in, so in fp32 a text
scores bit for bit the same alone and inside any batch. Tiling costs throughput, so the engine
uses it for fp32 (where exactness is promised) and not for bf16 (where a tolerance is stated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROW_TILE = 64


def tiled_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if n % ROW_TILE:
        rows = torch.cat([rows, rows.new_zeros(ROW_TILE - n % ROW_TILE, rows.shape[1])])
    out = torch.cat([F.linear(tile, weight, bias) for tile in rows.split(ROW_TILE)])[:n]
    return out.reshape(*x.shape[:-1], weight.shape[0])


class RowTiledLinear(nn.Linear):
    """An ``nn.Linear`` whose product runs in fixed ``ROW_TILE``-row tiles (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_linear(x, self.weight, self.bias)


def make_batch_invariant(module: nn.Module) -> nn.Module:
    """Switch every ``nn.Linear`` inside ``module`` to :class:`RowTiledLinear`, in place."""
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = RowTiledLinear
    return module
