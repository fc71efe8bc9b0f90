"""The contract every pruning method follows.

A method turns the ``N`` visual tokens of one image into exactly ``keep`` rows.
The processor decides ``keep`` (and so the prompt length and the KV cache) before
the model runs; the method only decides *which* rows, so the two can never
disagree about the count. This module imports torch only, never vLLM.

A video is ``T`` frames (Qwen: temporal patches of two frames) of ``h x w`` tokens.
The processor also fixes how many tokens each frame keeps (``frame_keeps``, at least
one each: Qwen3-VL writes every frame's count into the prompt, between its
timestamps). A spatial method gets an even split and prunes each frame as an image;
a temporal method (``temporal = True``) spends the budget over the frames from their
pixels in ``frame_keeps`` and picks each frame's tokens in ``reduce_video``.
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

    ``params``: its own request parameters, by name (read them with ``param``). The
    model fills the other fields only for methods that list the need that fills them
    (``NEEDS``) in ``PruneMethod.needs``.
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

    @classmethod
    def for_needs(
        cls, needs: frozenset[str], params: dict[str, int | float], observed: dict
    ) -> Context:
        """The context of a method with ``needs``: of what the model ``observed`` (for
        every method of a batch), only the fields those needs fill."""
        declared = fields_of(needs)
        return cls(params=dict(params), **{k: v for k, v in observed.items() if k in declared})

    def param(self, param: Param) -> int | float:
        """A method's parameter: the request's value, else its default, as its kind."""
        return param.kind(self.params.get(param.name, param.default))


# What a method may declare in ``PruneMethod.needs``:
VISION_ATTENTION = "vision_attention"  # the selected tower layer's [CLS] row and keys
TOWER_ATTENTION = "tower_attention"  # attention received in two tower layers
# Prunes inside the vision tower (``tower_cut``); ``reduce`` gets the rows it kept.
IN_TOWER = "in_tower"
TEXT = "text"  # the question's embeddings (the request must carry its question)
SCOUT = "scout"  # the scout pass's attention and hidden states
# Reads the image's token grid (neighbours, windows): refused where the model's grid is unknown.
GRID = "grid"

# Need -> the ``Context`` fields it fills -> the axis of their visual tokens (None: not
# one entry per visual token). ``observe`` fills by it, ``require`` checks against it,
# and a family that splits an image into parts cuts each field on its axis.
NEEDS: dict[str, dict[str, int | None]] = {
    VISION_ATTENTION: {"cls_attention": 0, "vision_keys": 0},
    TOWER_ATTENTION: {"received_attention": 0, "object_attention": 0},
    IN_TOWER: {"tower_kept": None},
    TEXT: {"text_embeddings": None},
    SCOUT: {
        "text_attention": 0,
        "question_attention": 1,
        "visual_attention": 0,
        "visual_hidden": 0,
        "last_hidden": None,
    },
    GRID: {},
}
# What only a model can measure (not the grid, which comes with the image).
MODEL_SIGNALS = frozenset(need for need, fields in NEEDS.items() if fields)
# Each per-token field's token axis.
TOKEN_AXIS = {
    field: axis for fields in NEEDS.values() for field, axis in fields.items() if axis is not None
}


OBJECT_LAYER, SOURCE_DEPTH = 9, 24  # HiPrune's object layer on CLIP-L


def object_layer(depth: int) -> int:
    """The 1-based tower layer whose received attention is ``object_attention``, in a
    tower of ``depth`` layers: HiPrune's share of the depth."""
    return max(1, round(OBJECT_LAYER * depth / SOURCE_DEPTH))


def fields_of(needs: frozenset[str]) -> frozenset[str]:
    """The ``Context`` fields that ``needs`` fill."""
    return frozenset(field for need in needs for field in NEEDS[need])


def require(
    ctx: Context, name: str, method: PruneMethod, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """A context field a method declared it needs; a clear error if the model left it out."""
    if name not in fields_of(method.needs):
        raise TypeError(
            f"prune method '{method.name}' reads '{name}' but declares no need that fills it"
        )
    value = getattr(ctx, name)
    if value is None:
        raise ValueError(f"prune method '{method.name}' needs '{name}', which was not provided")
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(
            f"prune method '{method.name}' needs '{name}' of shape {shape}, got "
            f"{tuple(value.shape)}"
        )
    return value


@dataclass(frozen=True)
class TowerLayer:
    """What one vision-tower layer measured, for a method that cuts inside the tower:
    per patch still in the tower ([CLS] left out), heads averaged over every rank's."""

    cls_attention: torch.Tensor  # [n]: the [CLS] query's attention (softmax over [CLS] + patches)
    # [n]: softmax over [CLS] + patches of the [CLS] value's unscaled dot product with
    # each value (FlowCut's semantic attention).
    value_attention: torch.Tensor
    value_norm: torch.Tensor  # [n]: L1 norm of each patch's head-averaged value
    hidden: torch.Tensor  # [n, D]: the layer's output


class TowerCut(ABC):
    """One image's cut through the vision tower, made as the tower runs.

    ``kept``: the original patch each position still in the tower stands for, ascending.
    """

    kept: torch.Tensor

    @abstractmethod
    def step(self, layer: int, measured: TowerLayer) -> torch.Tensor | None:
        """After tower layer ``layer`` (0-based): the positions of the patches to go on
        with, ascending, or None to go on with all."""


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
    temporal: bool = False  # reads a video's frames together (``frame_keeps``, ``reduce_video``)

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

    def tower_cut(self, patches: int, keep: int, selected_layer: int) -> TowerCut:
        """An ``IN_TOWER`` method's cut of one image of ``patches`` patches down to ``keep``
        through a tower whose layer ``selected_layer`` (0-based) gives the features."""
        raise NotImplementedError(f"prune method '{self.name}' does not cut inside the tower")

    def frame_keeps(self, cells: torch.Tensor | None, num_frames: int, keep: int) -> list[int]:
        """Tokens each of a video's frames keeps, summing to ``keep`` (at least one each).

        ``cells``: the video's pixels per token cell, [T, h * w, C] (``None`` for
        methods that do not read them). Spatial methods split evenly.
        """
        return even_split(num_frames, keep)

    def reduce_video(
        self,
        features: torch.Tensor,
        grid: tuple[int, int, int],
        frame_keeps: Sequence[int],
        ctx: Context,
    ) -> Reduced:
        """A temporal method's rows of a whole video ([T * h * w, D], frames in order):
        exactly ``frame_keeps[f]`` of frame ``f``; indices into the whole video."""
        raise NotImplementedError(f"prune method '{self.name}' is not temporal")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "params": [p.describe() for p in self.params],
            "needs": sorted(self.needs),
            "temporal": self.temporal,
        }


class TemporalMethod(PruneMethod):
    """A video method: one video-wide selection spends the budget over the frames.

    ``select`` is the source's algorithm over a whole video. The API server runs it on
    the frames' pixels to fix each frame's count (``frame_keeps``); the model then
    keeps, in each frame, its best tokens by ``token_scores`` on the tower's features.
    An image is a video of one frame.
    """

    temporal = True

    @abstractmethod
    def select(self, frames: torch.Tensor, keep: int) -> torch.Tensor:
        """The source's ``keep`` tokens of frames [T, n, D], as indices into [T * n], ascending."""

    @abstractmethod
    def token_scores(self, frames: torch.Tensor) -> torch.Tensor:
        """[T, n, D] -> [T, n]: higher is more worth keeping."""

    def frame_keeps(self, cells: torch.Tensor | None, num_frames: int, keep: int) -> list[int]:
        assert cells is not None and cells.shape[0] == num_frames
        return frame_counts(self.select(cells, keep), self.token_scores(cells))

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        return self.reduce_video(features, (1, *grid), [keep], ctx)

    def reduce_video(
        self,
        features: torch.Tensor,
        grid: tuple[int, int, int],
        frame_keeps: Sequence[int],
        ctx: Context,
    ) -> Reduced:
        t, h, w = grid
        scores = self.token_scores(features.reshape(t, h * w, -1)).cpu()
        kept = [best_in_frame(scores[f], k) + f * h * w for f, k in enumerate(frame_keeps)]
        return select_rows(features, torch.cat(kept))


def best_in_frame(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """One frame's ``keep`` best tokens by ``scores`` [n], ascending; evenly spaced where
    every score ties (EVS's first frame)."""
    if bool((scores == scores[0]).all()):
        return evenly_spaced(scores.numel(), keep)
    return torch.sort(torch.argsort(scores, descending=True, stable=True)[:keep]).values


def evenly_spaced(total: int, count: int) -> torch.Tensor:
    """``count`` distinct indices in [0, total) spread evenly, first and last included."""
    if count == total:
        return torch.arange(total)
    if count == 1:
        return torch.tensor([(total - 1) // 2])
    positions = torch.arange(count, dtype=torch.float64) * (total - 1) / (count - 1)
    return torch.floor(positions + 0.5).to(torch.long)


def even_split(num_frames: int, keep: int) -> list[int]:
    """``keep`` over ``num_frames`` frames as evenly as possible, earlier frames first."""
    if not num_frames <= keep:
        raise ValueError(f"keep must be at least the {num_frames} frames, got {keep}")
    return proportional_quotas([1] * num_frames, keep)


def frame_counts(kept: torch.Tensor, scores: torch.Tensor) -> list[int]:
    """Per frame, how many of the video-wide ``kept`` indices it holds, at least one each.

    ``scores`` [T, n]: higher is more worth keeping. A frame left empty takes its best
    token in place of the worst-scoring kept token of a frame that keeps several.
    """
    t, n = scores.shape
    mask = torch.zeros(t * n, dtype=torch.bool)
    mask[kept.cpu()] = True
    flat = scores.reshape(-1).float().cpu()
    for frame in range(t):
        if mask[frame * n : (frame + 1) * n].any():
            continue
        per_frame = mask.reshape(t, n).sum(dim=1)
        donors = (mask & (per_frame > 1).repeat_interleave(n)).nonzero().squeeze(-1)
        if donors.numel() == 0:
            raise ValueError(f"keep must be at least the {t} frames, got {int(mask.sum())}")
        mask[donors[torch.argmin(flat[donors])]] = False
        mask[frame * n + int(torch.argmax(flat[frame * n : (frame + 1) * n]))] = True
    return mask.reshape(t, n).sum(dim=1).tolist()


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
        scores = require(ctx, self.score_field, self, shape=(features.shape[0],))
        return keep_top(features, scores, keep, largest=self.largest)


def keep_top(
    features: torch.Tensor, scores: torch.Tensor, keep: int, largest: bool = True
) -> Reduced:
    """Reduced output of a score-ranking method: the ``keep`` best-scoring rows."""
    return select_rows(features, torch.topk(scores.float(), keep, largest=largest).indices.cpu())


def in_raster_order(rows: torch.Tensor, indices: torch.Tensor) -> Reduced:
    """Reduced output of a merging method: ``rows`` [keep, D], each standing for the token
    at ``indices``, sorted by token."""
    order = torch.argsort(indices)
    return Reduced(features=rows[order.to(rows.device)], indices=indices[order].cpu())


def select_rows(features: torch.Tensor, indices: torch.Tensor) -> Reduced:
    """Reduced output of a selection method: the rows at ``indices``, ascending."""
    indices = torch.sort(indices.to(torch.long)).values
    # index_select: a plain row gather, about twice as fast as advanced indexing on CPU.
    rows = features.index_select(0, indices.to(features.device))
    return Reduced(features=rows, indices=indices)
