"""``fastv_vis``: FastV scored by the last visual token instead of the text (paper Sec. 5).

As the paper's FastV_VIS: the score of a visual token is the attention of the
last visual token to it in LLM layer K - 1 (mean over heads), so the selection
does not depend on the question. Same adaptation as ``fastv``, with a scout
pass over the visual tokens alone: the last visual token's causal row covers
exactly them, so the question is not needed, not sent into the multimodal
hash, and the same image gets the same selection (and encoder-cache hits)
whatever is asked.
"""

from __future__ import annotations

from .base import SCOUT, ScoreRanking
from .params import LAYER_PARAM
from .registry import register


@register
class FastVVis(ScoreRanking):
    name = "fastv_vis"
    summary = "Top tokens by the last visual token's attention in layer K - 1 (FastV_VIS)."
    params = (LAYER_PARAM,)
    needs = frozenset({SCOUT})
    score_field = "visual_attention"
