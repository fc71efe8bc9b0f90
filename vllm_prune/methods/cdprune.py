"""``cdprune``: conditional DPP, diverse tokens weighted by relevance to the question (CDPruner).

As the source (CDPruner, Zhang et al., NeurIPS 2025): the kernel is
``L = diag(q) S diag(q)`` with S the cosine similarity of the visual tokens
(projector output) and ``q = exp(theta / (2 (1 - theta)) * r)`` from the
min-max-normalised relevance r of each visual token to the question (mean
cosine over the question's tokens); the ``keep`` tokens are chosen by the fast
greedy MAP inference of the DPP (Chen et al., 2018). ``prune_theta`` defaults
to the source's 0.5.

Adapted: the source measures relevance between CLIP image embeddings and the
CLIP text encoder's embedding of the instruction (and negates it for
LLaVA-1.5); LLaVA checkpoints carry no CLIP text tower, so here relevance is
the cosine between the projector output and the question's LLM input
embeddings, in the LLM's own input space, with no sign flip. The kernel and the
greedy inference run in float64: once ``keep`` exceeds the features' rank (the
gains are then zero up to rounding), float32's rounding picked the remaining tokens,
so the last digits of the features (two tensor-parallel ranks add them in another
order than one) changed the selection; in float64 they fall below the stopping
floor and the rest is filled by quality, the same on any layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TEXT, Context, Param, PruneMethod, Reduced, check_inputs, require, select_rows
from .registry import register

THETA = Param(
    name="prune_theta",
    kind=float,
    default=0.5,
    minimum=0.0,
    maximum=0.99,
    description="Weight of relevance against diversity (0: diversity only).",
)


def dpp_greedy_map(kernel: torch.Tensor, keep: int, floor: float | None = None) -> torch.Tensor:
    """Fast greedy MAP inference for a DPP (Chen et al., 2018: incremental Cholesky, each
    step the token of largest marginal gain): up to ``keep`` picks, in order.

    ``floor``: stop before a pick whose gain is at most this (the kernel's rank has run
    out, no token adds volume); None runs all ``keep`` steps (a kernel >= I always has a
    gain). Sequential by nature: a Python loop over the picks, each on the kernel's device.
    """
    n = kernel.shape[0]
    gains = torch.diagonal(kernel).clone()  # marginal gains d_i^2
    directions = torch.zeros(keep, n, dtype=kernel.dtype, device=kernel.device)
    order = torch.empty(keep, dtype=torch.long, device=kernel.device)
    for step in range(keep):
        j = torch.argmax(gains)
        if floor is not None and float(gains[j]) <= floor:
            return order[:step]
        order[step] = j
        if step == keep - 1:
            break
        row = kernel.index_select(0, j.view(1)).squeeze(0)
        past = directions[:step].index_select(1, j.view(1)).squeeze(1)  # c[:t, j]
        e = (row - past @ directions[:step]) / gains[j].sqrt()
        directions[step] = e
        gains = gains - e.square()
        gains.index_fill_(0, j.view(1), float("-inf"))  # chosen ones stay -inf
    return order


def picks_then_quality(kernel: torch.Tensor, keep: int) -> torch.Tensor:
    """``keep`` tokens: the DPP's picks until the kernel's rank runs out (feature dimension
    below ``keep``), then the rest by quality (the kernel's diagonal), best first. The
    source stops there with fewer tokens."""
    quality = torch.diagonal(kernel)
    picks = dpp_greedy_map(kernel, keep, floor=1e-6 * float(quality.max()))
    if picks.numel() == keep:
        return picks
    rest = quality.clone().index_fill_(0, picks, float("-inf"))
    return torch.cat([picks, torch.topk(rest, keep - picks.numel()).indices])


@register
class CDPrune(PruneMethod):
    name = "cdprune"
    summary = "Conditional DPP: diverse visual tokens weighted by relevance to the question."
    params = (THETA,)
    needs = frozenset({TEXT})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        text = F.normalize(require(ctx, "text_embeddings", self).double(), dim=-1)
        visual = F.normalize(features.double(), dim=-1)
        relevance = (visual @ text.T).mean(dim=-1)
        span = relevance.max() - relevance.min()
        relevance = (relevance - relevance.min()) / (span + 1e-6)
        theta = ctx.param(THETA)
        quality = torch.exp(theta / (2 * (1 - theta)) * relevance)
        kernel = quality[:, None] * (visual @ visual.T) * quality[None, :]
        return select_rows(features, picks_then_quality(kernel, keep).cpu())
