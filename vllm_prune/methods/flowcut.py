"""``flowcut``: tokens cut inside the vision tower by their information flow (FlowCut).

As the source (FlowCut, Tong et al., NeurIPS 2025; TungChintao/FlowCut,
``modeling_clip_flowcut.py`` and ``utils_flowcut.py``): from the tower's first
layer on, each layer scores every patch by

    s = (A / sum A + S / sum S) * |mean_h V|_1

with A the [CLS] query's attention to the patch, S the softmax over all tokens of the
[CLS] value's unscaled dot product with the patch's value (both averaged over heads)
and the L1 norm of the patch's value averaged over heads; the flow is ``s`` in the
first layer and ``(flow + s) / 2`` after. Every other layer, counting back from the
one before the selected layer, the lowest-flow patches are dropped from the tower's
sequence, so the later layers run on fewer tokens:
``r = round((n - keep) / sqrt(remaining) * (1 - (H / log n) ** 2))`` of the ``n``
patches, H the entropy of the normalised [CLS] attention and ``remaining`` the layers
left before the last cut, which keeps exactly ``keep``. The selected layer then runs
on the ``keep`` patches and [CLS]; the survivors stay in raster order, with the
position embeddings they got at the start. No text, no merging.

Adapted: on a tower too shallow for a layer before the selected one, the last cut
is made after the selected layer itself; ``r`` is held to ``[0, n - keep]`` and
``log 0`` taken as 0 in the entropy (the source's NaN). ``reduce`` itself does not
select: the integration runs its ``tower_cut`` inside the tower, and ``reduce``
receives the ``keep`` rows the tower returned with the tokens they are
(``tower_kept``).
"""

from __future__ import annotations

import math

import torch

from .base import (
    GRID,
    IN_TOWER,
    Context,
    PruneMethod,
    Reduced,
    TowerCut,
    TowerLayer,
    require,
)
from .registry import register


def layer_scores(
    cls_attention: torch.Tensor, semantic: torch.Tensor, value_norm: torch.Tensor
) -> torch.Tensor:
    """One layer's score of each patch: attention and semantic shares times value norm."""
    return (cls_attention / cls_attention.sum() + semantic / semantic.sum()) * value_norm


def drop_count(cls_attention: torch.Tensor, remaining: int, keep: int) -> int:
    """Patches to drop now: more where the [CLS] attention is concentrated (low entropy)."""
    n = cls_attention.numel()
    if remaining == 0 or n <= 1:
        return n - keep
    p = cls_attention.double() / cls_attention.double().sum()
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum()
    ratio = float(entropy) / math.log(n)
    r = round((n - keep) / math.sqrt(remaining) * (1 - ratio**2))
    return min(max(r, 0), n - keep)


class FlowCutState(TowerCut):
    """One image's cut through the tower: the patches still in it and their flow."""

    def __init__(self, patches: int, keep: int, selected_layer: int) -> None:
        """``selected_layer``: 0-based index of the tower layer whose output is used."""
        if not 1 <= keep <= patches:
            raise ValueError(f"keep must be in [1, {patches}], got {keep}")
        self.patches, self.keep = patches, keep
        self.last_cut = max(selected_layer - 1, 0)
        self.kept = torch.arange(patches)  # the original patch of each position
        self.flow: torch.Tensor | None = None

    def step(self, layer: int, measured: TowerLayer) -> torch.Tensor | None:
        cls_attention = measured.cls_attention.float()
        semantic, value_norm = measured.value_attention.float(), measured.value_norm.float()
        n = self.kept.numel()
        if n <= self.keep or layer > self.last_cut:
            return None
        scores = layer_scores(cls_attention, semantic, value_norm).cpu()
        self.flow = scores if self.flow is None else 0.5 * self.flow + 0.5 * scores
        remaining = self.last_cut - layer
        if remaining % 2:
            return None
        survivors = n - drop_count(cls_attention.cpu(), remaining, self.keep)
        if survivors == n:
            return None
        positions = torch.sort(torch.topk(self.flow, survivors).indices).values
        self.flow, self.kept = self.flow[positions], self.kept[positions]
        return positions


@register
class FlowCut(PruneMethod):
    name = "flowcut"
    summary = "Patches dropped inside the vision tower by their information flow (FlowCut)."
    needs = frozenset({IN_TOWER, GRID})

    def tower_cut(self, patches: int, keep: int, selected_layer: int) -> FlowCutState:
        return FlowCutState(patches, keep, selected_layer)

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        kept = require(ctx, "tower_kept", self, shape=(keep,)).to(torch.long).cpu()
        if features.dim() != 2 or features.shape[0] != keep:
            raise ValueError(
                f"'{self.name}' prunes inside the vision tower: features must be the [{keep}, D] "
                f"rows it kept, got {tuple(features.shape)}"
            )
        if keep and not (
            bool((kept.diff() > 0).all()) and 0 <= kept[0] and kept[-1] < grid[0] * grid[1]
        ):
            raise ValueError(f"'{self.name}': tower_kept must be ascending tokens of the grid")
        return Reduced(features=features, indices=kept)
