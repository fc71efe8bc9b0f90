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


def window_of(h: int, w: int, size: int) -> torch.Tensor:
    """The size x size window of each token (windows in raster order), raster order: [h * w]."""
    rows, cols = torch.arange(h)[:, None] // size, torch.arange(w)[None, :] // size
    return (rows * -(-w // size) + cols).flatten()


def top_in_windows(
    scores: torch.Tensor, window: torch.Tensor, quotas: torch.Tensor
) -> torch.Tensor:
    """The ``quotas[i]`` best-scoring tokens of each window ``i``, by one sort: tokens by
    window, best first within it, then each one's rank in its window against the quota."""
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(window[by_score], stable=True)]
    sizes = torch.bincount(window, minlength=quotas.numel())
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(order.numel()) - starts[window[order]]
    return order[rank < quotas[window[order]]]


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
        window = window_of(*grid, ctx.param(WINDOW))
        quotas = proportional_quotas(torch.bincount(window).tolist(), keep)
        return select_rows(features, top_in_windows(scores, window, torch.tensor(quotas)))
