"""``pooling``: average pooling over the image's token grid (paper baseline "Pooling").

The h x w grid is average-pooled (adaptive pooling, as
``torch.nn.functional.adaptive_avg_pool2d``) to a ``rows x cols`` grid chosen to
follow the image's aspect ratio: ``rows = ceil(sqrt(keep * h / w))`` (at most
h), ``cols = ceil(keep / rows)`` (at most w). When ``keep`` factors exactly
that way (576 -> 144 = 12 x 12, 576 -> 64 = 8 x 8) every pooled cell is kept.
When it does not (a prime ``keep``, say), ``rows * cols`` is slightly larger
than ``keep`` and ``keep`` cells evenly spaced in raster order are kept, so the
retained cells still cover the whole image. ``keep = h * w`` is the identity.

Adapted from the paper's Algorithm 4, which pools with a fixed a x a window at
LLM layer K; here the pooling happens on the projector output, before the LLM,
so the pooled rows are what the KV cache holds. Each pooled row stands for the
token at its cell's centre (``Reduced.indices``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import GRID, Context, PruneMethod, Reduced, check_inputs, evenly_spaced
from .registry import register


def pooled_grid(h: int, w: int, keep: int) -> tuple[int, int]:
    """The smallest aspect-following grid with at least ``keep`` cells."""
    rows = min(h, max(1, math.ceil(math.sqrt(keep * h / w))))
    cols = min(w, math.ceil(keep / rows))
    rows = min(h, math.ceil(keep / cols))
    return rows, cols


def cell_centres(size: int, cells: int) -> torch.Tensor:
    """Centre of each adaptive-pooling cell along one axis (same bins as PyTorch)."""
    starts = [(i * size) // cells for i in range(cells)]
    ends = [-((-(i + 1) * size) // cells) for i in range(cells)]
    return torch.tensor([(s + e - 1) // 2 for s, e in zip(starts, ends, strict=True)])


@register
class Pooling(PruneMethod):
    name = "pooling"
    summary = "Average pooling over the token grid to exactly keep tokens."
    needs = frozenset({GRID})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        h, w = grid
        rows, cols = pooled_grid(h, w, keep)
        # Channels last (a view of the rows, no transposed copy): one read of the features.
        image = features.float().reshape(1, h, w, -1).permute(0, 3, 1, 2)
        pooled = F.adaptive_avg_pool2d(image, (rows, cols))
        pooled = pooled.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(features.dtype)
        centres = (cell_centres(h, rows)[:, None] * w + cell_centres(w, cols)[None, :]).flatten()
        cells = evenly_spaced(rows * cols, keep)
        return Reduced(
            features=pooled[cells.to(pooled.device)].contiguous(),
            indices=centres[cells],
        )
