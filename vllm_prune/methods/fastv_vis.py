"""``fastv_vis``: FastV scored by the last visual token instead of the text (paper Sec. 5).

As the paper's FastV_VIS: the score of a visual token is the attention of the
last visual token to it in LLM layer K - 1 (mean over heads), so the selection
does not depend on the question. Same adaptation as ``fastv``: the scout pass
runs the visual tokens followed by the question, and the last visual token's
causal row covers exactly the visual tokens.
"""

from __future__ import annotations

from .base import SCOUT, TEXT, ScoreRanking
from .fastv import LAYER_PARAM
from .registry import register


@register
class FastVVis(ScoreRanking):
    name = "fastv_vis"
    summary = "Top tokens by the last visual token's attention in layer K - 1 (FastV_VIS)."
    params = (LAYER_PARAM,)
    needs = frozenset({TEXT, SCOUT})
    score_field = "visual_attention"
