"""``hiprune``: object anchors with their neighbours, then global registers (HiPrune).

As the source (HiPrune, 2025; Danielement321/HiPrune, ``llava_arch.encode_images``):
scores are the attention each patch receives, averaged over heads and over every
query ([CLS] included). ``a = round(keep * prune_object_share / 5)`` anchors are the
top patches in the tower's object layer (the 9th of CLIP-L's 24); each brings its
4 neighbours (buffers), duplicates counted once; the rest of the budget, the
registers, are the top patches by the same score in the selected (deep) layer among
those not chosen yet. ``prune_object_share`` defaults to the source's 0.1.

Adapted: the source finds neighbours as index +-1 and +-24 clamped to the grid, so a
patch at a row's end takes the next row's first patch (and the top and bottom rows
take patches 0 and 575); here only neighbours inside the grid count. On a tower of
other depth than 24 layers, the object layer sits at the same share of the depth.
"""

from __future__ import annotations

import torch

from .base import (
    GRID,
    TOWER_ATTENTION,
    Context,
    Param,
    PruneMethod,
    Reduced,
    check_inputs,
    require,
    select_rows,
)
from .registry import register

OBJECT_SHARE = Param(
    "prune_object_share",
    float,
    0.1,
    0.0,
    1.0,
    "share of the kept tokens spent on object anchors and their 4 neighbours",
)


def anchors_with_neighbours(anchors: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The anchors and their up/down/left/right neighbours inside the grid, ascending."""
    h, w = grid
    row, col = anchors // w, anchors % w
    found = [anchors]
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = row + dr, col + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        found.append((r * w + c)[inside])
    return torch.unique(torch.cat(found))


@register
class HiPrune(PruneMethod):
    name = "hiprune"
    summary = "Object anchors and their neighbours, then global registers, by tower attention."
    needs = frozenset({TOWER_ATTENTION, GRID})
    params = (OBJECT_SHARE,)

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n = features.shape[0]
        objects = require(ctx, "object_attention", self, shape=(n,)).float()
        deep = require(ctx, "received_attention", self, shape=(n,)).float().clone()
        share = ctx.param(OBJECT_SHARE)
        anchors = torch.topk(objects, round(keep * share / 5)).indices
        chosen = anchors_with_neighbours(anchors, grid)[:keep]
        deep[chosen] = -torch.inf
        registers = torch.topk(deep, keep - chosen.numel()).indices
        return select_rows(features, torch.cat([chosen, registers]).cpu())
