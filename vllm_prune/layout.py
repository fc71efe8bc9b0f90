"""Where an image's visual tokens sit in its placeholder, and how ``keep`` is shared out.

Most vision-language models vLLM serves build an image's placeholder from
structure tokens that stay text (begin/end markers, tile tags, row breaks) and
runs of embed positions that take the image's rows, in order (vLLM's
``is_embed`` mask). A run may hold several tiles (InternVL puts every tile of an
image in one run). Pruning keeps the format: each structure token stays where it
is, each run shrinks, and each part (a tile, a row, a whole run) keeps its share
of ``keep`` in proportion to its size and is pruned on its own grid.

Pure Python and torch, no vLLM: the processor (API server) fixes the parts and their
counts, the prompt and the model (engine) follow them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .methods.base import proportional_quotas


@dataclass(frozen=True)
class Part:
    """One prunable part of an image: which run it is in, its rows, its token grid.

    ``grid`` is None where the model's grid is not known (spatial methods are refused).
    ``newlines``: separator rows the model's embedding holds after each row of the grid
    (LLaVA-OneVision's ``image_newline``); never content, and dropped when the image is
    pruned (the kept tokens of a row no longer fill it, so a newline would mark nothing).
    """

    run: int
    size: int
    grid: tuple[int, int] | None
    newlines: int = 0

    @property
    def embedded(self) -> int:
        """The part's rows in the model's embedding: content and separators."""
        return self.size + (self.grid[0] * self.newlines if self.grid else 0)


def runs_of(mask: Sequence[bool]) -> list[int]:
    """Lengths of the runs of consecutive True in an ``is_embed`` mask, in order."""
    runs, length = [], 0
    for embed in mask:
        if embed:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    if length:
        runs.append(length)
    return runs


def square(size: int) -> tuple[int, int] | None:
    """The square grid of ``size`` tokens, or None when ``size`` is not a square."""
    side = math.isqrt(size)
    return (side, side) if side * side == size else None


def parts_of(runs: Sequence[int], grid: str | None, tile: int | None = None) -> list[Part]:
    """An image's parts from its embed runs and its family's grid declaration.

    ``grid``: ``"square"`` (each run, or each ``tile`` tokens of it, is a square
    grid), ``"rows"`` (each run is one row of the image), or None (not known).
    ``tile``: tokens per tile where one run holds several tiles of equal size.
    """
    parts = []
    for run, size in enumerate(runs):
        if tile and size > tile and size % tile == 0:
            parts += [Part(run, tile, square(tile) if grid == "square" else None)] * (size // tile)
        elif grid == "square":
            parts.append(Part(run, size, square(size)))
        elif grid == "rows":
            parts.append(Part(run, size, (1, size)))
        else:
            parts.append(Part(run, size, None))
    return parts


def run_lengths(parts: Sequence[Part]) -> list[int]:
    """Each run's embed positions as the parts lay them out (content and separators)."""
    return _per_run(parts, [p.embedded for p in parts])


def content_rows(parts: Sequence[Part]) -> list[int]:
    """Where the parts' content rows are in the image's embedding, part after part."""
    rows, start = [], 0
    for part in parts:
        if part.newlines and part.grid:
            h, w = part.grid
            rows += [start + r * (w + part.newlines) + c for r in range(h) for c in range(w)]
        else:
            rows += range(start, start + part.size)
        start += part.embedded
    return rows


def separator_rows(parts: Sequence[Part]) -> list[int]:
    """Where the parts' separator rows are in the image's embedding: every row that is
    not content (``content_rows``), in order."""
    return sorted(set(range(sum(p.embedded for p in parts))) - set(content_rows(parts)))


def part_keeps(parts: Sequence[Part], keep: int) -> list[int]:
    """The content rows each part keeps when the image keeps ``keep`` of its N rows:
    ``keep`` shared out in proportion to the parts' size (largest remainder), every
    content row where ``keep`` reaches them all (``kept_separators``)."""
    if keep >= sum(p.size for p in parts):
        return [p.size for p in parts]
    return proportional_quotas([p.size for p in parts], keep)


def kept_separators(parts: Sequence[Part], keep: int) -> list[int]:
    """The separator rows an image keeps when it keeps ``keep`` of its N rows.

    N is the image's rows as vLLM counts them in the prompt, separators included, and
    ``keep`` counts from it on every family, so the prompt drops by exactly N - keep. An
    image kept whole (``keep`` = N) is vLLM's own. A pruned one keeps content rows first:
    its separators go (the kept tokens of a grid row no longer fill it, so a newline
    would mark nothing), but for a ``keep`` above its content rows, which keeps every
    content row and the first ``keep`` - content separators, in order.
    """
    return separator_rows(parts)[: max(0, keep - sum(p.size for p in parts))]


def run_rows(parts: Sequence[Part], keep: int) -> list[int]:
    """The embed positions each run keeps when the image keeps ``keep`` of its N rows:
    its parts' content rows (``part_keeps``) and its kept separators."""
    totals = run_keeps(parts, part_keeps(parts, keep))
    starts, start = [], 0
    for part in parts:
        starts.append(start)
        start += part.embedded
    for row in kept_separators(parts, keep):
        owner = max(i for i, s in enumerate(starts) if s <= row)
        totals[parts[owner].run] += 1
    return totals


def run_keeps(parts: Sequence[Part], keeps: Sequence[int]) -> list[int]:
    """The tokens each run keeps: the sum of its parts' keeps."""
    return _per_run(parts, keeps)


def _per_run(parts: Sequence[Part], values: Sequence[int]) -> list[int]:
    totals = [0] * (max((p.run for p in parts), default=-1) + 1)
    for part, value in zip(parts, values, strict=True):
        totals[part.run] += value
    return totals


def shrink(full: Sequence[int], mask: Sequence[bool], keeps: Sequence[int]) -> list[int]:
    """A placeholder with run ``r`` cut to its first ``keeps[r]`` embed positions.

    Every structure (non-embed) token stays where it is; an embed position carries a
    placeholder id only, so which positions of a run stay does not matter.
    """
    out, run, seen, inside = [], -1, 0, False
    for token, embed in zip(full, mask, strict=True):
        if embed and not inside:
            run, seen = run + 1, 0
        inside = bool(embed)
        if embed:
            seen += 1
            if seen > keeps[run]:
                continue
        out.append(token)
    return out


def batches(rows: Sequence[int], bound: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) runs of images whose unpruned rows together stay within
    ``bound`` (an image larger than ``bound`` goes alone): what the tower encodes at once."""
    found, start, total = [], 0, 0
    for index, count in enumerate(rows):
        if index > start and total + count > bound:
            found.append((start, index))
            start, total = index, 0
        total += count
    if rows:
        found.append((start, len(rows)))
    return found
