"""``fastv_reverse``: the visual tokens the last token attends to least (paper Alg. 2).

As the paper's Reverse FastV: FastV's scores, the lowest ``keep`` kept. It is
the paper's probe of position bias (low-attention tokens sit early in the
sequence). Same adaptation as ``fastv``: scores from the scout pass.
"""

from __future__ import annotations

from .base import SCOUT, TEXT, ScoreRanking
from .params import LAYER_PARAM
from .registry import register


@register
class FastVReverse(ScoreRanking):
    name = "fastv_reverse"
    summary = "Lowest tokens by FastV's score (paper's Reverse FastV)."
    params = (LAYER_PARAM,)
    needs = frozenset({TEXT, SCOUT})
    score_field = "text_attention"
    largest = False
