"""``balanced``: importance and uniqueness in one score, weighted by alpha (paper Eq. 6).

As the paper's Section 4 experiment: ``score = alpha * importance + (1 - alpha)
* uniqueness``, both min-max normalised, where importance is FastV's attention
score and uniqueness is one minus the cosine similarity of a visual token to the
last token; the top ``keep`` are kept. ``prune_alpha`` = 1 is FastV, 0 keeps the
tokens least like the last token. The paper finds perception tasks best near
alpha 0-0.1 and knowledge tasks near 0.8-0.9.

Adapted: both terms come from the scout pass (attention in layer K - 1 and the
hidden states entering it), with the question's last token as the last token.
"""

from __future__ import annotations

import torch

from .base import (
    SCOUT,
    TEXT,
    Context,
    Param,
    PruneMethod,
    Reduced,
    check_inputs,
    keep_top,
    require,
)
from .params import LAYER_PARAM
from .registry import register

ALPHA = Param(
    name="prune_alpha",
    kind=float,
    default=0.5,
    minimum=0.0,
    maximum=1.0,
    description="Weight of importance (FastV attention) against uniqueness.",
)


def min_max(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


@register
class Balanced(PruneMethod):
    name = "balanced"
    summary = "alpha * importance + (1 - alpha) * uniqueness (paper Eq. 6)."
    params = (LAYER_PARAM, ALPHA)
    needs = frozenset({TEXT, SCOUT})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        alpha = ctx.param(ALPHA)
        importance = require(ctx, "text_attention", self).float()
        hidden = require(ctx, "visual_hidden", self).float()
        last = require(ctx, "last_hidden", self).float()
        # Cosine to the last token as one product and one norm pass (no normalised copy).
        norms = torch.linalg.vector_norm(hidden, dim=-1) * torch.linalg.vector_norm(last)
        uniqueness = 1.0 - (hidden @ last) / norms.clamp_min(1e-8)
        score = alpha * min_max(importance) + (1.0 - alpha) * min_max(uniqueness)
        return keep_top(features, score, keep)
