"""``none``: every visual token goes to the LLM (the unpruned baseline)."""

from __future__ import annotations

import torch

from .base import Context, PruneMethod, Reduced, check_inputs
from .registry import register


@register
class NoPruning(PruneMethod):
    name = "none"
    summary = "Keep every visual token (the unpruned baseline)."

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n = features.shape[0]
        if keep != n:
            raise ValueError(f"'none' keeps all {n} tokens, got keep={keep}")
        return Reduced(features=features, indices=torch.arange(n))
