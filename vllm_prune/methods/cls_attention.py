"""``cls_attention``: the tokens the vision tower's [CLS] attends to most (FasterVLM).

As the source (FasterVLM, Zhang et al. 2024): the score of a visual token is
the attention of the [CLS] token to it in the vision tower's selected layer
(the one whose output feeds the projector), averaged over heads; the top
``keep`` tokens are kept, in raster order. The source also prunes before the
LLM, so nothing is adapted beyond reading only the [CLS] row of the attention,
computed from that layer's queries and keys, never the full map.
"""

from __future__ import annotations

import torch

from .base import VISION_ATTENTION, Context, PruneMethod, Reduced, check_inputs, keep_top
from .registry import register


def require_cls_attention(ctx: Context, n: int, method: str) -> torch.Tensor:
    if ctx.cls_attention is None or ctx.cls_attention.shape != (n,):
        raise ValueError(f"'{method}' needs the vision tower's [CLS] attention over {n} tokens")
    return ctx.cls_attention


@register
class ClsAttention(PruneMethod):
    name = "cls_attention"
    summary = "Top tokens by the vision tower's [CLS] attention (FasterVLM)."
    needs = frozenset({VISION_ATTENTION})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        return keep_top(features, require_cls_attention(ctx, features.shape[0], self.name), keep)
