"""``divprune``: the most diverse subset, by greedy max-min cosine distance (DivPrune).

As the source (Alvar et al., CVPR 2025): distances are ``1 - cosine similarity``
between the visual tokens the LLM receives (the projector output); the first
token is the one farthest from its nearest neighbour, and each next token is the
one whose distance to the closest already-selected token is largest. The result
is sorted back into raster order.

Adapted: selected tokens are excluded explicitly (the source relies on their
zero self-distance, which ties with exact duplicates), and the minimum distance
to the selected set is updated incrementally, O(N x keep) instead of re-reducing
the selected rows each step. Nothing else changes: it needs no text and no
attention, so it runs before the KV cache exists exactly as published.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Context, PruneMethod, Reduced, check_inputs, select_rows
from .registry import register


def max_min_diverse(features: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of ``keep`` rows chosen greedily to maximise the minimum cosine distance."""
    unit = F.normalize(features.float(), dim=-1)
    distance = 1.0 - unit @ unit.T  # [N, N]
    n = distance.shape[0]
    chosen = torch.empty(keep, dtype=torch.long, device=features.device)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=features.device)
    # Distance to the nearest other token (the smallest is the token itself).
    nearest = distance.topk(2, dim=0, largest=False).values[1]
    first = int(torch.argmax(nearest))
    chosen[0] = first
    taken[first] = True
    closest = distance[first].clone()  # distance of every token to the selected set
    for step in range(1, keep):
        scores = closest.masked_fill(taken, float("-inf"))
        nxt = int(torch.argmax(scores))
        chosen[step] = nxt
        taken[nxt] = True
        closest = torch.minimum(closest, distance[nxt])
    return chosen


@register
class DivPrune(PruneMethod):
    name = "divprune"
    summary = "Greedy max-min diversity of the visual tokens (DivPrune)."

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        return select_rows(features, max_min_diverse(features, keep).cpu())
