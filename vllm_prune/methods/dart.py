"""``dart``: pivot tokens plus the tokens least duplicated by them (DART).

DART (Wen et al., 2025, from the authors of the paper behind this project)
keeps a few pivot tokens and, for each pivot, the tokens least similar to it,
so the retained set holds little duplication. As the source: pivots are the
tokens with the largest L1 norm; each pivot in turn takes the not-yet-kept
tokens with the lowest cosine similarity to it.

Adapted to pruning before the KV cache: the source takes the L1 norm of the
keys and the similarity of the hidden states at LLM layer K (default 2), and
adds text pivots; here both use the visual tokens the LLM receives (the
projector output) and all pivots are visual (``prune_pivots``, default 8, the
source's 4 image + 4 text). The source's count is only close to the target
(pivots x a per-pivot quota); here the quota is split so the count is exactly
``keep``.
"""

from __future__ import annotations

import torch

from .base import Context, Param, PruneMethod, Reduced, check_inputs, select_rows
from .registry import register

PIVOTS = Param(
    name="prune_pivots",
    kind=int,
    default=8,
    minimum=1,
    maximum=64,
    description="Number of pivot tokens (largest L1 norm).",
)


def pivots_and_least_duplicated(features: torch.Tensor, keep: int, pivots: int) -> torch.Tensor:
    x = features.float()
    n = x.shape[0]
    pivots = min(pivots, keep)
    pivot_ids = torch.topk(torch.linalg.vector_norm(x, ord=1, dim=-1), pivots).indices
    taken = torch.zeros(n, dtype=torch.bool, device=x.device)
    taken[pivot_ids] = True
    # Every token's cosine to every pivot in one product (three reads of the features,
    # no normalised copy).
    norms = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12)
    cosines = (x @ x[pivot_ids].T) / (norms[:, None] * norms[pivot_ids][None, :])  # [n, pivots]
    remaining = keep - pivots
    quotas = [remaining // pivots + (1 if i < remaining % pivots else 0) for i in range(pivots)]
    picked = [pivot_ids]
    for column, quota in enumerate(quotas):
        if quota == 0:
            continue
        similarity = cosines[:, column].masked_fill(taken, float("inf"))
        least = torch.topk(similarity, quota, largest=False).indices
        taken[least] = True
        picked.append(least)
    return torch.cat(picked)


@register
class Dart(PruneMethod):
    name = "dart"
    summary = "Pivot tokens plus the tokens least similar to them (DART, duplication-aware)."
    params = (PIVOTS,)

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        pivots = ctx.param(PIVOTS)
        return select_rows(features, pivots_and_least_duplicated(features, keep, pivots).cpu())
