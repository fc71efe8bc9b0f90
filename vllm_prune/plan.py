"""What the engine does to one image: its prune plan, and running it.

The processor sends each image's method, ``keep``, parameters and question ids
(``integration.wire``); the model decodes them into a ``PrunePlan`` and runs it
here, on the image's features and what was measured for the method's needs
(``signals``). Every family prunes through ``reduce_plan``, so this is also where
``VLLM_PRUNE_TRACE`` records what was kept. Pure torch, no vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .layout import Part, square
from .methods import Context, Reduced, get_method
from .observability import trace


@dataclass(frozen=True)
class PrunePlan:
    """What the model does to one image: which method, how many rows, which params."""

    method: str
    keep: int
    params: dict[str, int | float]
    text_ids: torch.Tensor  # [T], int64; empty unless the method needs text
    frame_keeps: tuple[int, ...] = ()  # a video's tokens kept per frame; () for an image
    parts: tuple[tuple[Part, int], ...] = ()  # generic adapter: each part and its keep
    tokens: int = 0  # the item's unpruned visual tokens, N (what the tower encodes for it)

    @property
    def needs(self) -> frozenset[str]:
        """What its method declared it needs (``methods.base.NEEDS``)."""
        return get_method(self.method).needs

    def for_frame(self, frame: int) -> PrunePlan:
        """A video's plan for one of its frames, pruned as an image."""
        return PrunePlan(self.method, self.frame_keeps[frame], self.params, self.text_ids)

    def for_part(self, keep: int) -> PrunePlan:
        """The plan of one part of an image (a tile, a row, a grid), keeping ``keep``."""
        return PrunePlan(self.method, keep, self.params, self.text_ids)


def square_grid(num_tokens: int) -> tuple[int, int]:
    """The token grid of a square image; a 1 x N strip when N is not a square."""
    return square(num_tokens) or (1, num_tokens)


def reduce_plan(
    features: torch.Tensor,
    grid: tuple[int, int],
    plan: PrunePlan,
    *,
    part: str | None = None,
    **observed: torch.Tensor,
) -> Reduced:
    """The ``plan.keep`` rows of one image's features and the tokens they stand for.

    ``part``: which grid of the image this is, when it has several (LLaVA-NeXT).
    ``observed``: what the model measured for the method's needs (``Context`` fields).
    """
    method = get_method(plan.method)
    ctx = Context.for_needs(method.needs, plan.params, observed)
    reduced = method.reduce(features, grid, plan.keep, ctx)
    trace.record(plan.method, features, grid, reduced, part=part)
    return reduced


def reduce_video_plan(
    features: torch.Tensor, grid: tuple[int, int, int], plan: PrunePlan
) -> Reduced:
    """A temporal method's ``plan.keep`` rows of a whole video ([T * h * w, D])."""
    ctx = Context(params=dict(plan.params))
    reduced = get_method(plan.method).reduce_video(features, grid, plan.frame_keeps, ctx)
    trace.record(plan.method, features, (grid[0] * grid[1], grid[2]), reduced, part="video")
    return reduced


def apply_plan(
    features: torch.Tensor, grid: tuple[int, int], plan: PrunePlan, **observed: torch.Tensor
) -> torch.Tensor:
    """The ``plan.keep`` rows of one image's features that go to the LLM."""
    return reduce_plan(features, grid, plan, **observed).features


def needs(plans: Sequence[PrunePlan], need: str) -> bool:
    return any(need in plan.needs for plan in plans)
