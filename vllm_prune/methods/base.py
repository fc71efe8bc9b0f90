"""The contract every pruning method follows.

A method turns the ``N`` visual tokens of one image into exactly ``keep`` rows.
The processor decides ``keep`` (and so the prompt length and the KV cache) before
the model runs; the method only decides *which* rows, so the two can never
disagree about the count. This module imports torch only, never vLLM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Param:
    """A per-request parameter a method accepts (sent as a top-level request field)."""

    name: str
    kind: type  # int or float
    default: int | float
    minimum: int | float
    maximum: int | float
    description: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind.__name__,
            "default": self.default,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "description": self.description,
        }


@dataclass
class Context:
    """What a method may use besides the features.

    ``params``: its own request parameters, by name. The model fills the other
    fields only for methods that list them in ``PruneMethod.needs``.
    """

    params: dict[str, int | float] = field(default_factory=dict)
    # Attention of the vision tower's [CLS] token to each visual token in the
    # selected layer, averaged over heads: [N].
    cls_attention: torch.Tensor | None = None
    # That layer's keys of each visual token, averaged over heads: [N, head_dim].
    vision_keys: torch.Tensor | None = None
    # Attention each visual token receives in a vision-tower layer, averaged over
    # heads and over every query (the [CLS] query included): [N]. In the selected
    # layer, and in HiPrune's "object" layer (the 9th of CLIP-L's 24, the same share
    # of the depth on other towers).
    received_attention: torch.Tensor | None = None
    object_attention: torch.Tensor | None = None
    # For methods that prune inside the vision tower: the token each of the rows
    # the tower returned stands for, ascending: [keep].
    tower_kept: torch.Tensor | None = None

    # From the scout pass (the first ``prune_layer`` LLM layers over the visual
    # tokens followed by the question), read at layer ``prune_layer - 1``:
    # attention of the question's last token to each visual token [N] ...
    text_attention: torch.Tensor | None = None
    # ... attention of every question token to each visual token [T, N] ...
    question_attention: torch.Tensor | None = None
    # ... attention of the last visual token to each visual token [N] ...
    visual_attention: torch.Tensor | None = None
    # ... the visual tokens' hidden states entering that layer [N, D] and the
    # question's last token's [D].
    visual_hidden: torch.Tensor | None = None
    last_hidden: torch.Tensor | None = None
    # The question's token embeddings in the LLM's input space [T, D].
    text_embeddings: torch.Tensor | None = None


# What a method may declare in ``PruneMethod.needs``:
VISION_ATTENTION = "vision_attention"  # cls_attention and vision_keys
TOWER_ATTENTION = "tower_attention"  # received_attention and object_attention
# Prunes inside the vision tower; ``reduce`` gets the rows it kept and tower_kept.
IN_TOWER = "in_tower"
TEXT = "text"  # text_embeddings (the request must carry its question)
# text_attention, question_attention, visual_attention, visual_hidden, last_hidden:
SCOUT = "scout"


def require(
    ctx: Context, name: str, method: str, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """A context field a method declared it needs; a clear error if the model left it out."""
    value = getattr(ctx, name)
    if value is None:
        raise ValueError(f"prune method '{method}' needs '{name}', which was not provided")
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(
            f"prune method '{method}' needs '{name}' of shape {shape}, got {tuple(value.shape)}"
        )
    return value


@dataclass(frozen=True)
class Reduced:
    """The ``keep`` rows that go to the LLM, in raster order.

    ``indices`` names, for each row, the visual token it stands for (the token
    itself for selection methods, the token nearest the cell centre for merging
    methods), so later stages (position ids, overlays) know where it sits.
    """

    features: torch.Tensor  # [keep, D]
    indices: torch.Tensor  # [keep], int64, strictly ascending


class PruneMethod(ABC):
    """One visual-token reduction method; subclasses register themselves by name."""

    name: str
    summary: str
    params: tuple[Param, ...] = ()
    needs: frozenset[str] = frozenset()

    @abstractmethod
    def reduce(
        self,
        features: torch.Tensor,
        grid: tuple[int, int],
        keep: int,
        ctx: Context,
    ) -> Reduced:
        """Return exactly ``keep`` rows of ``features`` ([h * w, D], raster order).

        An ``IN_TOWER`` method gets the ``keep`` rows the tower already kept instead.
        """

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "params": [p.describe() for p in self.params],
            "needs": sorted(self.needs),
        }


def proportional_quotas(sizes: Sequence[int], keep: int) -> list[int]:
    """``keep`` shared out in proportion to ``sizes``, summing exactly.

    Largest remainder, in integer arithmetic: each part gets the floor of its
    share, and the parts with the largest remainders (lowest index first on
    ties) get one more.
    """
    total = sum(sizes)
    if total == 0:
        return [0] * len(sizes)
    quotas = [keep * size // total for size in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(keep * sizes[i] % total), i))
    for i in by_remainder[: keep - sum(quotas)]:
        quotas[i] += 1
    return quotas


def check_inputs(features: torch.Tensor, grid: tuple[int, int], keep: int) -> None:
    """Fail loudly on a count mismatch instead of silently returning wrong rows."""
    h, w = grid
    if features.dim() != 2 or features.shape[0] != h * w:
        raise ValueError(f"features must be [h * w, D] = [{h * w}, D], got {tuple(features.shape)}")
    if not 1 <= keep <= h * w:
        raise ValueError(f"keep must be in [1, {h * w}], got {keep}")


class ScoreRanking(PruneMethod):
    """A method that keeps the best ``keep`` tokens by one per-token score of the context."""

    score_field: str  # a Context field of shape [N]
    largest: bool = True  # False keeps the lowest scores

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        scores = require(ctx, self.score_field, self.name, shape=(features.shape[0],))
        return keep_top(features, scores, keep, largest=self.largest)


def keep_top(
    features: torch.Tensor, scores: torch.Tensor, keep: int, largest: bool = True
) -> Reduced:
    """Reduced output of a score-ranking method: the ``keep`` best-scoring rows."""
    return select_rows(features, torch.topk(scores.float(), keep, largest=largest).indices.cpu())


def select_rows(features: torch.Tensor, indices: torch.Tensor) -> Reduced:
    """Reduced output of a selection method: the rows at ``indices``, ascending."""
    indices = torch.sort(indices.to(torch.long)).values
    return Reduced(features=features[indices.to(features.device)], indices=indices)
