"""``visionzip``: dominant tokens by [CLS] attention plus merged contextual tokens (VisionZip).

As the source (VisionZip, Yang et al., CVPR 2025): dominant tokens are the
top tokens by the [CLS] attention of the vision tower's selected layer
(averaged over heads); of the rest, evenly spaced ones become contextual
targets, every other remaining token is merged (averaged) into the target whose
key is most similar (cosine, keys averaged over heads), and each target becomes
the mean of itself and its merged tokens. The split follows the source's
settings, dominant:contextual = 54:10 of 64 (108:20 of 128, 162:30 of 192),
i.e. ``contextual = round(keep * 10 / 64)``.

Adapted: the source merges vision-tower outputs before the projector; here the
rows are the projector's outputs (the method sees what the LLM receives), and
the [CLS] row of the attention is computed from the layer's queries and keys
rather than read from a materialised attention map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import (
    VISION_ATTENTION,
    Context,
    PruneMethod,
    Reduced,
    check_inputs,
    in_raster_order,
    require,
    select_rows,
)
from .registry import register


def contextual_count(keep: int) -> int:
    return min(keep - 1, round(keep * 10 / 64)) if keep > 1 else 0


@register
class VisionZip(PruneMethod):
    name = "visionzip"
    summary = "Dominant tokens by [CLS] attention plus merged contextual tokens (VisionZip)."
    needs = frozenset({VISION_ATTENTION})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n = features.shape[0]
        scores = require(ctx, "cls_attention", self, shape=(n,)).float()
        if ctx.vision_keys is None or ctx.vision_keys.shape[0] != n:
            raise ValueError("'visionzip' needs the vision tower's keys of every token")
        contextual = contextual_count(keep)
        dominant = torch.topk(scores, keep - contextual).indices
        if contextual == 0:
            return select_rows(features, dominant.cpu())

        rest_mask = torch.ones(n, dtype=torch.bool, device=features.device)
        rest_mask[dominant] = False
        rest = torch.nonzero(rest_mask).squeeze(1)  # raster order
        step = max(1, rest.numel() // contextual)
        targets = rest[torch.arange(contextual, device=rest.device) * step]
        others_mask = rest_mask.clone()
        others_mask[targets] = False
        others = torch.nonzero(others_mask).squeeze(1)

        keys = F.normalize(ctx.vision_keys.float(), dim=-1)
        # The context token each row adds to: a target its own, every other rest token its
        # most similar target's, a dominant token a spare row left out: one pass over
        # the features, no gathered copy of the rest.
        owner = torch.full((n,), contextual, dtype=torch.long, device=features.device)
        owner[targets] = torch.arange(contextual, device=features.device)
        owner[others] = torch.argmax(keys[others] @ keys[targets].T, dim=1)
        x = features.float()
        sums = torch.zeros(contextual + 1, x.shape[1], device=x.device).index_add_(0, owner, x)
        counts = torch.bincount(owner, minlength=contextual + 1).to(x.dtype)
        merged = (sums[:contextual] / counts[:contextual, None]).to(features.dtype)

        indices = torch.cat([dominant, targets])
        rows = torch.cat([features[dominant], merged])
        return in_raster_order(rows, indices)
