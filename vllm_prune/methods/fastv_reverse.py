"""``fastv_reverse``: the visual tokens the last token attends to least (paper Alg. 2).

As the paper's Reverse FastV: FastV's scores, the lowest ``keep`` kept. It is
the paper's probe of position bias (low-attention tokens sit early in the
sequence). Same adaptation as ``fastv``: scores from the scout pass.
"""

from __future__ import annotations

import torch

from .base import SCOUT, TEXT, Context, PruneMethod, Reduced, check_inputs, keep_top, require
from .fastv import LAYER_PARAM
from .registry import register


@register
class FastVReverse(PruneMethod):
    name = "fastv_reverse"
    summary = "Lowest tokens by FastV's score (paper's Reverse FastV)."
    params = (LAYER_PARAM,)
    needs = frozenset({TEXT, SCOUT})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        return keep_top(features, require(ctx, "text_attention", self.name), keep, largest=False)
