"""``vispruner``: important tokens by [CLS] attention, then diverse ones (VisPruner).

As the source (VisPruner, Zhang et al., ICCV 2025): ``floor(keep * prune_important)``
important tokens are the top tokens by the [CLS] attention of the vision tower's
selected layer (averaged over heads); the rest of the budget goes to diverse tokens.
Of the remaining tokens, in descending attention order, duplicates are removed by
rounds of matching: each round splits them alternately into A (even places) and B (odd
places), scores each A token by its highest cosine similarity to any B token, and drops
the ``r = min(8, remaining - diverse)`` A tokens that score highest, the A tokens left
(most distinct first) followed by B becoming the next round's order; until ``diverse``
remain. ``prune_important`` defaults to the source's 0.5.

Layouts: the rounds follow the whole order of the cosines, and a flat background gives
many that are equal up to their last digits, which two tensor-parallel ranks add in
another order than one. So under ``--tensor-parallel-size`` every rank keeps the same
tokens as the others and as many as one rank, but may keep other duplicates of the
background than one rank does (on shapes-llava, 107 of 144 tokens in common, nearly
all others uniform background patches). Rounding the scores does not help: in a dense
run of cosines some gap always falls at the rounding step.

Adapted: the source compares the vision tower's outputs before the projector; here
the similarities are of the rows the LLM receives (the projector's outputs), and the
[CLS] row is computed from the layer's queries and keys, as for ``visionzip``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (
    VISION_ATTENTION,
    Context,
    Param,
    PruneMethod,
    Reduced,
    check_inputs,
    require,
    select_rows,
)
from .registry import register

IMPORTANT = Param(
    "prune_important",
    float,
    0.5,
    0.0,
    1.0,
    "share of the kept tokens chosen by [CLS] attention (the rest for diversity)",
)
ROUND = 8  # the source's most A tokens dropped per round


def remove_duplicates(features: torch.Tensor, order: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` tokens of ``order`` left by the source's rounds of matching.

    ``features``: every token's row; ``order``: candidate indices, in order.
    The candidates' similarities are computed once and each round reads its A x B block;
    the source multiplies the block anew each round (9.9 s instead of 1.4 s at N = 2880,
    D = 4096 on 2 CPU cores).
    """
    candidates = F.normalize(features.index_select(0, order).float(), dim=-1)
    similarity = candidates @ candidates.T
    places = torch.arange(order.numel(), device=order.device)  # into ``order``
    while True:
        r = min(ROUND, places.numel() - count)
        if r <= 0 or count == 0:
            return order[places[:count]]
        if 4 * places.numel() < 3 * similarity.shape[0]:
            # Fewer than 3/4 of the rows left: keep only theirs, so a round reads little
            # beyond its own A x B block (the same values, renumbered).
            similarity = similarity.index_select(0, places).index_select(1, places)
            order, places = order[places], torch.arange(places.numel(), device=order.device)
        a, b = places[::2], places[1::2]
        scores = similarity.index_select(0, a).index_select(1, b).max(dim=1).values
        distinct = torch.argsort(scores, descending=True, stable=True)[r:]
        places = torch.cat([a[distinct], b])


@register
class VisPruner(PruneMethod):
    name = "vispruner"
    summary = (
        "Important tokens by [CLS] attention plus diverse ones, duplicates removed (VisPruner)."
    )
    needs = frozenset({VISION_ATTENTION})
    params = (IMPORTANT,)

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n = features.shape[0]
        scores = require(ctx, "cls_attention", self, shape=(n,)).float()
        share = ctx.param(IMPORTANT)
        important = int(keep * share)
        ranked = torch.argsort(scores, descending=True, stable=True)
        diverse = remove_duplicates(
            features, ranked[important:].to(features.device), keep - important
        )
        return select_rows(features, torch.cat([ranked[:important], diverse]).cpu())
