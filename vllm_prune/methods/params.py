"""Parameters that several methods share, owned here rather than by one of them.

``prune_layer`` is FastV's K; the whole FastV family, ``balanced`` and ``sparsevlm``
read their scores in LLM layer K - 1 of the scout pass, and the vLLM glue checks
K against the model's depth. Each method still lists it in its own ``params``.
"""

from __future__ import annotations

from .base import Param

LAYER_FIELD = "prune_layer"
LAYER_PARAM = Param(
    name=LAYER_FIELD,
    kind=int,
    default=2,
    minimum=1,
    maximum=128,
    description="K: scores come from attention in LLM layer K - 1 (FastV's K).",
)
