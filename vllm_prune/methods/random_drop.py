"""``random``: a uniform random subset of the visual tokens (paper baseline "Random").

Exactly as the paper's baseline: ``keep`` tokens drawn uniformly without
replacement, kept in raster order. The draw is seeded per request
(``prune_seed``) so a result can be reproduced; the same seed and image size
always select the same positions.
"""

from __future__ import annotations

import torch

from .base import Context, Param, PruneMethod, Reduced, check_inputs, select_rows
from .registry import register

SEED = Param(
    name="prune_seed",
    kind=int,
    default=0,
    minimum=0,
    maximum=2**32 - 1,
    description="Seed of the random draw; same seed, same tokens.",
)


@register
class RandomDrop(PruneMethod):
    name = "random"
    summary = "Uniform random subset of the visual tokens, seeded."
    params = (SEED,)

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(ctx.param(SEED))
        order = torch.randperm(features.shape[0], generator=generator)
        return select_rows(features, order[:keep])
