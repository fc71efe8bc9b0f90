"""What a method declared it needs, measured on one image inside the model.

Shared by every family: the question's embeddings (``text``), the scout pass
(``scout``) and what the vision tower measured (``vision_attention``,
``tower_attention``: captured by the family itself with ``signals.tower`` and
passed in). The result is a dict of ``Context`` fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..methods.base import SCOUT, TEXT, TOKEN_AXIS, fields_of
from ..methods.params import LAYER_FIELD
from .heads import SumOverRanks, one_rank
from .scout import scout

if TYPE_CHECKING:
    from ..plan import PrunePlan


def observe(
    llm: nn.Module,
    features: torch.Tensor,
    plan: PrunePlan,
    tower: Mapping[str, torch.Tensor] | None = None,
    scout_positions: torch.Tensor | None = None,
    sum_over_ranks: SumOverRanks = one_rank,
    deepstack: Sequence[torch.Tensor] = (),
) -> dict[str, torch.Tensor]:
    """``llm``: the decoder (``embed_input_ids``, ``layers``); ``features``: the image's rows;
    ``tower``: the image's fields from ``signals.tower``.

    ``scout_positions``: rotary positions of the image's rows followed by the
    question for the scout pass; by default 0 .. L - 1. ``sum_over_ranks``: the
    sum over the tensor-parallel group, which holds the scout's other heads.
    ``deepstack``: the image's DeepStack rows per level (Qwen3-VL), for the scout pass.
    """
    needs = plan.needs
    observed: dict[str, torch.Tensor] = {}
    observed.update(tower or {})  # measured for every method of the batch
    if TEXT in needs or SCOUT in needs:
        # The model's own text embedding (Gemma's scaled by its normalizer).
        text = llm.embed_input_ids(plan.text_ids.to(features.device))
        observed["text_embeddings"] = text
        if SCOUT in needs:
            result = scout(
                llm.layers,
                features,
                text,
                int(plan.params[LAYER_FIELD]),
                scout_positions,
                sum_over_ranks,
                deepstack,
            )
            found = {
                "text_attention": result.text_attention,
                "question_attention": result.question_attention,
                "visual_attention": result.visual_attention,
                "visual_hidden": result.visual_hidden,
                "last_hidden": result.last_hidden,
            }
            observed.update({k: v for k, v in found.items() if v is not None})
    declared = fields_of(needs)
    return {name: value for name, value in observed.items() if name in declared}


def rows_of(observed: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The observations of a subset of the visual tokens (one grid of a multi-grid image)."""
    return {
        name: value.index_select(TOKEN_AXIS[name], rows.to(value.device))
        if name in TOKEN_AXIS
        else value
        for name, value in observed.items()
    }
