"""``mustdrop``: merge flat windows, keep key tokens, filter by the question (MustDrop).

As the source (MustDrop, Liu et al., 2024; liuting20/MustDrop), in its three pre-LLM
steps:

1. Local spatial merging: the grid is cut into 3 x 3 windows; a window whose 9 tokens
   have a mean pairwise cosine similarity (self-pairs left out) of at least 0.8 is
   merged into one token, the mean of its 9, most similar windows first.
2. Key tokens: the top ``ceil(0.08 * N')`` of the ``N'`` tokens left, by the vision
   tower's [CLS] attention, are always kept.
3. Dual-attention filtering: question tokens attend to the visual tokens in an LLM
   layer; a token's global score is the attention it gets summed over the question,
   its individual score the largest it gets from one question token, and it survives
   when either is high.

Adapted, so that the count is exact and nothing runs inside the LLM:

- The source merges after the tower's first layer and runs the later tower layers on
  the merged tokens; here the projector's outputs are merged, and only as many
  windows as leave at least ``keep`` tokens. A merged token stands for its window's
  centre (its position); its [CLS] attention and global score are its tokens' sums,
  its individual score their largest.
- The source filters with two thresholds at LLM layers 2, 6, 10 and 14 and keeps what
  passes either (a count that varies per image); here one scout pass gives the
  attention in layer ``prune_layer - 1``, and tokens are taken by the better of their
  two ranks (global, individual) until ``keep``: passing either threshold, with both
  moved together.
- The source's decode-stage cache policy is left out: vLLM's KV cache holds only the
  kept tokens from the start.
"""

from __future__ import annotations

import math

import torch

from .base import (
    GRID,
    SCOUT,
    TEXT,
    VISION_ATTENTION,
    Context,
    PruneMethod,
    Reduced,
    check_inputs,
    require,
)
from .params import LAYER_PARAM
from .registry import register

WINDOW = 3  # the source's merge windows, 3 x 3 tokens
MERGE_SIMILARITY = 0.8  # the source's threshold on a window's mean pairwise cosine
KEY_SHARE = 0.08  # the source's share of key tokens by [CLS] attention


def windows(grid: tuple[int, int]) -> torch.Tensor:
    """Token indices of each whole 3 x 3 window, raster order: [windows, 9]."""
    h, w = grid
    rows = torch.arange(h // WINDOW * WINDOW).view(-1, WINDOW)  # [h // 3, 3]
    cols = torch.arange(w // WINDOW * WINDOW).view(-1, WINDOW)  # [w // 3, 3]
    cells = rows[:, None, :, None] * w + cols[None, :, None, :]  # [h//3, w//3, 3, 3]
    return cells.reshape(-1, WINDOW * WINDOW)


def window_similarity(features: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Each window's mean cosine similarity over its pairs of distinct tokens: [windows].

    Of unit rows u, the pairs of a window sum to ``|sum u|^2 - sum |u|^2``: the window sums
    of the unit rows are one sparse product over the features (no normalised copy, no
    gathered windows).
    """
    x = features.float()
    norms = torch.linalg.vector_norm(x, dim=-1)
    inverse = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-12), torch.zeros_like(norms))
    count, k = members.shape
    window = torch.arange(count).repeat_interleave(k)
    weights = torch.sparse_coo_tensor(
        torch.stack([window, members.reshape(-1)]).to(x.device),
        inverse[members.reshape(-1).to(x.device)],
        (count, x.shape[0]),
        check_invariants=False,  # built here: one entry per window member
    )
    sums = torch.sparse.mm(weights, x)  # [windows, D]
    own = (norms * inverse).square()[members.to(x.device)].sum(1)  # sum |u|^2: 1 per nonzero row
    return ((sums.square().sum(1) - own) / (k * (k - 1))).cpu()


def best_of_two_ranks(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Indices ordered by the better of their ranks in ``first`` and ``second`` (both
    highest first); ties by the other rank, then by index."""
    n = first.numel()
    rank_first = torch.empty(n, dtype=torch.long)
    rank_second = torch.empty(n, dtype=torch.long)
    rank_first[torch.argsort(first.cpu(), descending=True, stable=True)] = torch.arange(n)
    rank_second[torch.argsort(second.cpu(), descending=True, stable=True)] = torch.arange(n)
    better = torch.minimum(rank_first, rank_second)
    other = torch.maximum(rank_first, rank_second)
    key = (better * n + other) * n + torch.arange(n)
    return torch.argsort(key)


@register
class MustDrop(PruneMethod):
    name = "mustdrop"
    summary = "Flat windows merged, key tokens by [CLS] attention, the rest by the question."
    params = (LAYER_PARAM,)
    needs = frozenset({VISION_ATTENTION, TEXT, SCOUT, GRID})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n = features.shape[0]
        cls = require(ctx, "cls_attention", self, shape=(n,)).float().cpu()
        text = require(ctx, "text_embeddings", self)
        attention = require(ctx, "question_attention", self, shape=(text.shape[0], n))
        attention = attention.float().cpu()

        # 1. Merge the flattest windows, as many as leave ``keep`` tokens.
        members = windows(grid)
        similarity = window_similarity(features.cpu(), members)
        order = torch.argsort(similarity, descending=True, stable=True)
        flat = order[similarity[order] >= MERGE_SIMILARITY][: (n - keep) // (WINDOW**2 - 1)]
        merged = members[flat]  # [m, 9]
        alone = torch.ones(n, dtype=torch.bool)
        alone[merged.reshape(-1)] = False
        singles = torch.nonzero(alone).squeeze(1)
        # Every token left: a single token or a merged window (standing for its centre).
        index = torch.cat([singles, merged[:, WINDOW**2 // 2]])
        key_score = torch.cat([cls[singles], cls[merged].sum(1)])
        global_score = torch.cat([attention[:, singles].sum(0), attention[:, merged].sum((0, 2))])
        individual = torch.cat(
            [attention[:, singles].amax(0), attention[:, merged].amax(0).amax(1)]
        )

        # 2. Key tokens, then 3. the better of the two question ranks.
        left = index.numel()
        keys = torch.topk(key_score, math.ceil(KEY_SHARE * left)).indices[:keep]
        taken = torch.zeros(left, dtype=torch.bool)
        taken[keys] = True
        ranked = best_of_two_ranks(global_score, individual)
        rest = ranked[~taken[ranked]][: keep - keys.numel()]
        chosen = torch.cat([keys, rest])

        # Only the chosen rows are gathered: single tokens as they are, windows averaged.
        order = torch.argsort(index[chosen])
        chosen = chosen[order]
        is_single = chosen < singles.numel()
        rows = torch.empty(keep, features.shape[1], dtype=torch.float32, device=features.device)
        device = features.device
        rows[is_single.to(device)] = features[singles[chosen[is_single]].to(device)].float()
        windows_kept = merged[chosen[~is_single] - singles.numel()]
        rows[(~is_single).to(device)] = features[windows_kept.to(device)].float().mean(1)
        return Reduced(features=rows.to(features.dtype), indices=index[chosen])
