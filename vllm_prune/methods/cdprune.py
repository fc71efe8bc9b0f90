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


def dpp_greedy_map(kernel: torch.Tensor, keep: int) -> torch.Tensor:
    """Fast greedy MAP inference for a DPP (incremental Cholesky), exactly ``keep`` picks.

    When the kernel's rank runs out (feature dimension below ``keep``), no
    token adds volume any more; the source stops there with fewer tokens, here
    the rest are filled by quality (the kernel's diagonal), best first.
    """
    n = kernel.shape[0]
    quality = torch.diagonal(kernel).clone()
    gains = quality.clone()  # marginal gains d_i^2
    directions = torch.zeros(keep, n, dtype=kernel.dtype, device=kernel.device)
    chosen = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    order: list[int] = []
    floor = 1e-6 * float(quality.max())
    while len(order) < keep:
        j = int(torch.argmax(gains))
        if float(gains[j]) <= floor:
            break
        step = len(order)
        order.append(j)
        chosen[j] = True
        e = (kernel[j] - directions[:step, j] @ directions[:step]) / gains[j].sqrt()
        directions[step] = e
        gains = (gains - e.square()).masked_fill(chosen, float("-inf"))
    if len(order) < keep:
        rest = torch.topk(quality.masked_fill(chosen, float("-inf")), keep - len(order)).indices
        order.extend(rest.tolist())
    return torch.tensor(order, dtype=torch.long)


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
        return select_rows(features, dpp_greedy_map(kernel, keep).cpu())
