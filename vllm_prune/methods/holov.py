"""``holov``: the budget shared over regions by attention and diversity, then the most
attended tokens of each region (HoloV).

As the source (HoloV, NeurIPS 2025, arXiv 2510.02912, ``llava/model/utils.py::HoloV``): the
tokens, in raster order, are cut into ``R`` contiguous regions (sizes ``N // R``, the
first ``N % R`` one more). In each region of ``n`` tokens with [CLS] attention ``a``
(the vision tower's selected layer, averaged over heads) and unit rows ``F`` of the
projector's output (``X / (||X|| + 1e-6)``): ``S = F F^T`` with its diagonal zeroed,
each token's mean ``mu_i = sum_j S_ij / (n - 1)`` and variance
``var_i = sum_j (S_ij - mu_i)^2 / (n - 1)`` of its similarities (the zeroed diagonal
counted, as the source); ``a' = 1000 a``, ``var' = var * mean|a'| / (mean|var| + 1e-6)``
and the token's score ``a' + beta var'`` (``prune_diversity``, the source's 0.09). A
region's score is the mean of its tokens'. The budget is shared in proportion to the
region scores (each region the floor of its share, the leftovers one each to the
regions of largest share), and each region keeps its most attended tokens.

Since the variance is rescaled to each region's own attention level, a region's score
is in effect ``mean(a') (1 + beta v / (v + 1e-6))``, ``v`` its mean variance: as in the
source, the diversity term moves the shares only between regions whose similarities
spread and regions where they barely do.

The source fixes ``R = 16`` for 64 of LLaVA-1.5's 576 tokens; its Qwen2.5-VL port
scales the count of regions as ``(1024 / 576) N / keep``. Here ``R = 16 N // (9 keep)``
(the same in integers: 16 at N = 576, keep = 64), at least 1 and at most ``keep``, so
every region can get a token.

Adapted: exactly ``keep`` tokens always. Where a region's share exceeds its size the
source keeps the whole region and pads the output with zero rows; here the surplus
goes to the regions with room, by the same rule (floor of the share among them, the
leftovers to the largest shares), until every token is placed. Region scores that
are negative are taken as zero, and if none is positive and finite the budget is
shared by region size. A region of one token scores ``1000 a`` (its variance is
zero; the source takes the unscaled attention there, on a scale of its own). Ties in
attention go to the earlier token, and the rows come back in raster order (the
source lists each region's kept tokens by attention). The regions' similarities are
one batched product over regions padded to the largest, not a loop over regions.
"""

from __future__ import annotations

import torch

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

DIVERSITY = Param(
    name="prune_diversity",
    kind=float,
    default=0.09,
    minimum=0.0,
    maximum=10.0,
    description="Weight of the similarity-variance (diversity) term against attention "
    "in each region's score (HoloV's 0.09).",
)
EPS = 1e-6  # the source's
ATTENTION_SCALE = 1e3  # the source's


def region_count(n: int, keep: int) -> int:
    """Regions of ``n`` tokens for ``keep`` kept: (1024 / 576) n / keep, in [1, keep]."""
    return max(1, min(keep, 16 * n // (9 * keep)))


def region_sizes(n: int, regions: int) -> list[int]:
    """``n`` tokens in ``regions`` contiguous runs, the first ``n % regions`` one longer."""
    return [n // regions + (1 if r < n % regions else 0) for r in range(regions)]


def region_scores(
    features: torch.Tensor, attention: torch.Tensor, sizes: list[int], beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each region's score [R], and the regions padded to the largest: the token indices
    [R, m] and which of them are real [R, m]."""
    device = features.device
    n = features.shape[0]
    size = torch.tensor(sizes, device=device)
    start = torch.cumsum(size, 0) - size
    width = int(max(sizes))
    offsets = torch.arange(width, device=device)
    valid = offsets[None, :] < size[:, None]  # [R, m]
    index = (start[:, None] + offsets[None, :]).clamp(max=n - 1)  # [R, m]

    x = features.float()
    unit = x / (x.norm(dim=-1, keepdim=True) + EPS)
    unit = unit[index] * valid[..., None]  # [R, m, D], padded rows zero
    similarity = unit @ unit.transpose(1, 2)  # [R, m, m]
    similarity.diagonal(dim1=1, dim2=2).zero_()
    denominator = (size - 1).clamp(min=1).float()[:, None]  # [R, 1]
    mean = similarity.sum(dim=-1) / denominator  # padded columns are zero
    spread = (similarity - mean[..., None]).square() * valid[:, None, :]
    variance = spread.sum(dim=-1) / denominator  # [R, m]

    scaled = ATTENTION_SCALE * attention.float()[index] * valid  # [R, m]
    count = size.float()
    attention_level = scaled.abs().sum(dim=-1) / count
    variance_level = (variance * valid).abs().sum(dim=-1) / count
    variance = variance * (attention_level / (variance_level + EPS))[:, None]
    token = (scaled + beta * variance) * valid
    return token.sum(dim=-1) / count, index, valid


def largest_remainder(weights: list[float], total: int) -> list[int]:
    """``total`` shared by ``weights``: the floor of each share, the leftovers one each
    to the largest weights (the earlier on ties)."""
    whole = sum(weights)
    shares = [int(total * w / whole) for w in weights]
    order = sorted(range(len(weights)), key=lambda r: (-weights[r], r))
    for r in order[: total - sum(shares)]:
        shares[r] += 1
    return shares


def allocate(scores: list[float], sizes: list[int], keep: int) -> list[int]:
    """Tokens per region: the source's share of ``keep`` by score, capped at each region's
    size, the surplus shared the same way among the regions with room."""
    weights = [max(s, 0.0) for s in scores]
    total = sum(weights)
    if not (total > 0 and total < float("inf")):
        weights = [float(s) for s in sizes]
    quotas = [0] * len(sizes)
    left = keep
    while left > 0:
        room = [r for r in range(len(sizes)) if quotas[r] < sizes[r]]
        open_weights = [weights[r] for r in room]
        if sum(open_weights) <= 0:  # only weightless regions have room: share by room
            open_weights = [float(sizes[r] - quotas[r]) for r in room]
        for r, extra in zip(room, largest_remainder(open_weights, left), strict=True):
            quotas[r] += extra
        quotas = [min(q, s) for q, s in zip(quotas, sizes, strict=True)]
        left = keep - sum(quotas)
    return quotas


def holov_select(
    features: torch.Tensor, attention: torch.Tensor, keep: int, beta: float
) -> torch.Tensor:
    """The ``keep`` tokens HoloV keeps, unsorted, on the features' device."""
    n = features.shape[0]
    sizes = region_sizes(n, region_count(n, keep))
    attention = attention.to(features.device)
    scores, index, valid = region_scores(features, attention, sizes, beta)
    quotas = allocate(scores.double().cpu().tolist(), sizes, keep)
    padded = attention.float()[index].masked_fill(~valid, float("-inf"))
    ranked = torch.argsort(padded, dim=-1, descending=True, stable=True)  # [R, m]
    quota = torch.tensor(quotas, device=features.device)
    taken = torch.arange(index.shape[1], device=features.device)[None, :] < quota[:, None]
    return index.gather(1, ranked)[taken]


@register
class HoloV(PruneMethod):
    name = "holov"
    summary = (
        "Budget shared over image regions by attention and diversity, then each "
        "region's most attended tokens (HoloV)."
    )
    needs = frozenset({VISION_ATTENTION})
    params = (DIVERSITY,)

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n = features.shape[0]
        attention = require(ctx, "cls_attention", self, shape=(n,))
        beta = ctx.param(DIVERSITY)
        return select_rows(features, holov_select(features, attention, keep, beta).cpu())
