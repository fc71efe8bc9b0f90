"""``cls_attention``: the tokens the vision tower's [CLS] attends to most (FasterVLM).

As the source (FasterVLM, Zhang et al. 2024): the score of a visual token is
the attention of the [CLS] token to it in the vision tower's selected layer
(the one whose output feeds the projector), averaged over heads; the top
``keep`` tokens are kept, in raster order. The source also prunes before the
LLM, so nothing is adapted beyond reading only the [CLS] row of the attention,
computed from that layer's queries and keys, never the full map.
"""

from __future__ import annotations

from .base import VISION_ATTENTION, ScoreRanking
from .registry import register


@register
class ClsAttention(ScoreRanking):
    name = "cls_attention"
    summary = "Top tokens by the vision tower's [CLS] attention (FasterVLM)."
    needs = frozenset({VISION_ATTENTION})
    score_field = "cls_attention"
