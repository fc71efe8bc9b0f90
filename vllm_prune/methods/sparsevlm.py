"""``sparsevlm``: question tokens rate the visual tokens; the best of the rest are recycled.

As the source (SparseVLM, Zhang et al., ICML 2025): the raters are the question
tokens most related to the image (softmax over the question of the visual-text
similarity of the input embeddings, averaged over visual tokens, above its
mean); a visual token's score is the raters' attention to it in an LLM layer,
averaged over heads and raters; the top tokens are kept. Recycling: of the
deleted tokens, the best-scoring 30% (+1) are grouped by density-peak
clustering (DPC-kNN) into ``candidates // 10 + 1`` clusters, and each cluster
becomes one token, the mean of its members.

Adapted to pruning before the KV cache: the source prunes in three stages
inside the LLM (layers 2, 6 and 15) with an adaptive, rank-based count; here
there is one stage, scored by the scout pass in layer K - 1 (``prune_layer``,
default 2 like FastV; the source's first stage is ``prune_layer`` = 3), and the
count is exact: the recycled clusters are part of ``keep`` (kept tokens = keep -
clusters). Clusters average projector outputs (what the LLM receives) rather
than layer-2 hidden states, and their centres' indices stand for them. The
source breaks density ties with random noise; here ties go to the lower index.
"""

from __future__ import annotations

import torch

from .base import (
    SCOUT,
    TEXT,
    Context,
    PruneMethod,
    Reduced,
    check_inputs,
    in_raster_order,
    require,
    select_rows,
)
from .params import LAYER_PARAM
from .registry import register

RECYCLE_SHARE = 0.3  # the source's "top 30%" of deleted tokens
TOKENS_PER_CLUSTER = 10


def rater_mask(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The question tokens most related to the image: [T] booleans, at least one True."""
    relation = (visual.float() @ text.float().T).softmax(dim=-1).mean(dim=0)  # [T]
    raters = relation > relation.mean()
    if not bool(raters.any()):  # all equal (e.g. one question token): everyone rates
        raters = torch.ones_like(raters)
    return raters


def cluster_count(n: int, keep: int) -> int:
    """Recycled clusters for ``keep`` rows out of ``n``, as the source sizes them."""
    if keep <= 1 or keep >= n:
        return 0
    deleted = n - keep
    candidates = min(deleted, int(deleted * RECYCLE_SHARE) + 1)
    return min(keep - 1, candidates // TOKENS_PER_CLUSTER + 1)


def density_peak_clusters(x: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN: (centre row of each cluster [c], cluster of each row [m])."""
    m, dim = x.shape
    distance = torch.cdist(x, x) / dim**0.5
    k = min(clusters, m)
    nearest = torch.topk(distance, k=k, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    # Deterministic tie-break instead of the source's random noise.
    density = density - torch.arange(m, device=x.device, dtype=density.dtype) * 1e-9
    denser = density[None, :] > density[:, None]
    parent_distance = distance.masked_fill(~denser, float(distance.max())).min(dim=-1).values
    centres = torch.topk(parent_distance * density, k=clusters).indices
    owner = distance[:, centres].argmin(dim=-1)
    owner[centres] = torch.arange(clusters, device=x.device)
    return centres, owner


@register
class SparseVLM(PruneMethod):
    name = "sparsevlm"
    summary = "Question tokens rate visual tokens in LLM layer K - 1; pruned ones are recycled."
    params = (LAYER_PARAM,)
    needs = frozenset({TEXT, SCOUT})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n = features.shape[0]
        text = require(ctx, "text_embeddings", self)
        attention = require(ctx, "question_attention", self, shape=(text.shape[0], n))
        scores = attention[rater_mask(features, text)].float().mean(dim=0)

        clusters = cluster_count(n, keep)
        kept = torch.topk(scores, keep - clusters).indices
        if clusters == 0:
            return select_rows(features, kept.cpu())

        deleted_mask = torch.ones(n, dtype=torch.bool, device=features.device)
        deleted_mask[kept] = False
        deleted = torch.nonzero(deleted_mask).squeeze(1)
        candidates = min(deleted.numel(), int(deleted.numel() * RECYCLE_SHARE) + 1)
        recycled = deleted[torch.topk(scores[deleted], candidates).indices]
        x = features[recycled].float()
        centres, owner = density_peak_clusters(x, clusters)
        sums = torch.zeros(clusters, x.shape[1], device=x.device).index_add_(0, owner, x)
        counts = torch.zeros(clusters, device=x.device).index_add_(
            0, owner, torch.ones_like(owner, dtype=torch.float)
        )
        merged = (sums / counts[:, None]).to(features.dtype)

        indices = torch.cat([kept, recycled[centres]])
        rows = torch.cat([features[kept], merged])
        return in_raster_order(rows, indices)
