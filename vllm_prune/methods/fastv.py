"""``fastv``: the visual tokens the question's last token attends to most (FastV, paper Alg. 1).

As the source (FastV, Chen et al. 2024; the paper's Algorithm 1): the score of
a visual token is the attention of the last token to it in LLM layer K - 1,
averaged over heads; the top ``keep`` are kept (parameter ``prune_layer`` = K,
default 2).

Adapted to pruning before the KV cache: the source prunes inside the LLM at
layer K, so layers below K still see every visual token; here the scores come
from a scout pass (the model's first K layers, no KV cache) over the visual
tokens followed by the question's tokens, and the pruned tokens never enter
the LLM at all. The "last token" is the question's last token rather than the
chat template's last token.
"""

from __future__ import annotations

from .base import SCOUT, TEXT, ScoreRanking
from .params import LAYER_PARAM
from .registry import register


@register
class FastV(ScoreRanking):
    name = "fastv"
    summary = "Top tokens by the question's last-token attention in LLM layer K - 1 (FastV)."
    params = (LAYER_PARAM,)
    needs = frozenset({TEXT, SCOUT})
    score_field = "text_attention"
