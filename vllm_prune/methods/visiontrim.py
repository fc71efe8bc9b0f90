"""``visiontrim``: dominant tokens by two attentions, the rest merged around the question.

As the source (VisionTrim, Yu et al., ICLR 2026; hanxunyu/VisionTrim at 360ce81,
``clip_encoder.py::token_prune_visiontrim``), for ``keep`` = K:

1. Dominant vision token selection (DVTS): a token's score is
   ``0.5 * cls / ||cls|| + 0.5 * recv / ||recv||``, the [CLS] attention it gets in the
   tower's selected layer and the attention it receives from the image tokens there
   (both averaged over heads, each L2-normalised over the tokens); the top ``K_D`` are
   kept as they are.
2. Text-guided vision complement (TGVC): of the other tokens (raster order), each is
   scored by its mean over the question's tokens of ``100 * cos(text, token)``; the
   ``K_T`` best (in raster order) become centres, the rest are merged into them, 3
   times: each rest token goes to the centre maximising ``(100 cos(token, T))
   (100 cos(T, centre))`` summed over the question tokens T, and each centre adds the
   mean of the tokens it got (nothing when it got none). The centres accumulate: each
   pass adds to the previous one's centres, the rest tokens stay as they are, as in the
   source (so a merged row is its token plus up to three means).

The split is the source's 48 + 16 of 64: ``K_T = floor(K * prune_text_share)``
(default 0.25), ``K_D = K - K_T``. Each merged row stands for its centre's own token;
the output is sorted by token (the source appends the centres after the dominant ones).

Adapted:

- The source matches CLIP's text tower outputs against CLIP's visual projection of
  the tower's hidden states; here the question's LLM input embeddings
  (``text_embeddings``) are matched against the projector's outputs, both in the LLM's
  input space, and the merged rows are projector outputs.
- Received attention: the source averages over the image queries with the diagonal
  left out; here it is averaged over every query, [CLS] and self included
  (``received_attention``). Each signal is L2-normalised before the sum, so only this
  difference, not the scale, changes the ranking.
- An empty question (no text tokens) has nothing to guide the complement: all K are
  dominant tokens (the source skips TGVC when it has no complement tokens, but then
  keeps only its DVTS count; here DVTS takes the whole budget, so the count is exact).
- ``K_T`` is held to ``K - 1`` (at least one dominant token); it never exceeds the
  ``N - K_D`` tokens left, since ``K <= N``.
- Ties in a ranking go to the lower index (the source's ``topk`` leaves them open).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (
    TEXT,
    TOWER_ATTENTION,
    VISION_ATTENTION,
    Context,
    Param,
    PruneMethod,
    Reduced,
    check_inputs,
    in_raster_order,
    require,
    select_rows,
)
from .registry import register

TEXT_SHARE = Param(
    "prune_text_share",
    float,
    0.25,
    0.0,
    1.0,
    "share of the kept tokens that are text-guided merged tokens (the rest by attention)",
)
LOGIT_SCALE = 100.0  # CLIP's logit_scale.exp(), as the source scales the cosines
MERGE_PASSES = 3  # the source's vtc_times


def text_count(keep: int, share: float) -> int:
    """Merged (text-guided) tokens of ``keep``: at least one dominant token is kept."""
    return max(0, min(int(keep * share), keep - 1))


def complement(
    features: torch.Tensor,
    rest: torch.Tensor,
    text: torch.Tensor,
    count: int,
    passes: int = MERGE_PASSES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TGVC on the non-dominant tokens ``rest`` (indices into ``features`` [N, D]) and the
    question ``text`` [T, D]: (the centres' positions in ``rest``, ascending [count];
    their merged rows [count, D], float32).

    Each token's scaled cosine to the words is one product over the features; each pass
    adds the members' rows to their centres straight from the features (a spare centre
    takes every other token), so no copy of the rest is made."""
    x = features.float()
    words = F.normalize(text, dim=-1)
    inverse = 1.0 / torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12)
    to_words = LOGIT_SCALE * (x @ words.T) * inverse[:, None]  # [N, T]
    scores = to_words[rest].mean(dim=1)  # [M]
    chosen = torch.argsort(scores, descending=True, stable=True)[:count]
    centres = torch.sort(chosen).values
    others = torch.ones(rest.shape[0], dtype=torch.bool, device=rest.device)
    others[centres] = False
    merging = rest[others]  # raster order
    owner = torch.full((x.shape[0],), count, dtype=torch.long, device=x.device)
    rows = x.index_select(0, rest[centres])
    for _ in range(passes):
        from_words = LOGIT_SCALE * words @ F.normalize(rows, dim=-1).T  # [T, count]
        owner[merging] = torch.argmax(to_words[merging] @ from_words, dim=1)
        sums = torch.zeros(count + 1, x.shape[1], device=x.device).index_add_(0, owner, x)
        counts = torch.bincount(owner, minlength=count + 1)[:count].clamp(min=1)
        rows = rows + sums[:count] / counts[:, None]
    return centres, rows


@register
class VisionTrim(PruneMethod):
    name = "visiontrim"
    summary = (
        "Dominant tokens by [CLS] and received attention, the rest merged into "
        "question-relevant tokens (VisionTrim)."
    )
    needs = frozenset({VISION_ATTENTION, TOWER_ATTENTION, TEXT})
    params = (TEXT_SHARE,)

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n, d = features.shape
        device = features.device
        cls = require(ctx, "cls_attention", self, shape=(n,)).to(device, torch.float32)
        received = require(ctx, "received_attention", self, shape=(n,))
        text = require(ctx, "text_embeddings", self)
        if text.dim() != 2 or text.shape[1] != d:
            raise ValueError(
                f"prune method '{self.name}' needs 'text_embeddings' of shape [T, {d}], got "
                f"{tuple(text.shape)}"
            )
        score = 0.5 * F.normalize(cls, dim=0) + 0.5 * F.normalize(
            received.to(device, torch.float32), dim=0
        )
        merged = text_count(keep, ctx.param(TEXT_SHARE)) if text.shape[0] else 0
        ranked = torch.argsort(score, descending=True, stable=True)
        dominant = ranked[: keep - merged]
        if merged == 0:
            return select_rows(features, dominant.cpu())

        left = torch.ones(n, dtype=torch.bool, device=device)
        left[dominant] = False
        rest = torch.nonzero(left).squeeze(1)  # raster order
        centres, rows = complement(features, rest, text.to(device, torch.float32), merged)
        indices = torch.cat([dominant, rest[centres]])
        rows = torch.cat([features.index_select(0, dominant), rows.to(features.dtype)])
        return in_raster_order(rows, indices)
