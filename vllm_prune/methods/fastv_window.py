"""``fastv_window``: FastV's top-k inside each window of the grid (paper Alg. 3).

As the paper's Window FastV: the token grid is split into windows of
``prune_window`` x ``prune_window`` tokens and each window keeps its own top
tokens by FastV's score, so the retained tokens cover the image evenly. The
paper keeps a fixed number per window; here the ``keep`` tokens are shared out
in proportion to window size (largest remainder), so edge windows of a grid
the window does not divide get their fair share and the total is exactly
``keep``. Scores come from the scout pass, as in ``fastv``.
"""

from __future__ import annotations

import torch

from .base import (
    GRID,
    SCOUT,
    TEXT,
    Context,
    Param,
    PruneMethod,
    Reduced,
    check_inputs,
    proportional_quotas,
    require,
    select_rows,
)
from .params import LAYER_PARAM
from .registry import register

WINDOW = Param(
    name="prune_window",
    kind=int,
    default=4,
    minimum=1,
    maximum=64,
    description="Window side in tokens; each window keeps its share of tokens.",
)


def window_members(h: int, w: int, size: int) -> list[torch.Tensor]:
    """Raster indices of the tokens in each size x size window."""
    rows = torch.arange(h * w).reshape(h, w)
    return [
        rows[top : top + size, left : left + size].flatten()
        for top in range(0, h, size)
        for left in range(0, w, size)
    ]


@register
class FastVWindow(PruneMethod):
    name = "fastv_window"
    summary = "FastV's top tokens within each window of the grid (paper's Window FastV)."
    params = (LAYER_PARAM, WINDOW)
    needs = frozenset({TEXT, SCOUT, GRID})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        scores = require(ctx, "text_attention", self).float().cpu()
        windows = window_members(*grid, ctx.param(WINDOW))
        quotas = proportional_quotas([len(m) for m in windows], keep)
        picked = [
            members[torch.topk(scores[members], quota).indices]
            for members, quota in zip(windows, quotas, strict=True)
            if quota
        ]
        return select_rows(features, torch.cat(picked))
