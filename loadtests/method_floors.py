"""The arithmetic each method's selection must do, for its floor in ``method_speed.py``.

A method's floor on a machine is the time of the work its algorithm cannot avoid, at
that machine's measured rates: the bytes it must move at the copy bandwidth, plus the
FLOPs of its dense products at the matmul rate (phases in sequence, as torch runs them
on a CPU). ``Work`` counts them for one image of ``n`` tokens of ``d`` values (``e``
bytes each) kept to ``k``:

- every method that returns rows writes and reads ``k`` rows (``rows``);
- a method that reads every feature (norms, similarities, pooling) reads ``n`` rows once;
- a pairwise similarity is one ``2 n^2 d`` product, written once and read once as
  ``n^2`` float32 values where the algorithm reads it back (greedy picks, rounds);
- a greedy method's steps read what each step must: DivPrune a row of distances and its
  running minimum per pick (``3 n`` values), a greedy DPP its ``t`` directions at step
  ``t`` (``n k^2 / 2`` values over the picks), VisPruner's rounds their ``A x B`` block.

Scores the model hands a method (attention rows, [N]) are negligible beside the rows.
The numbers are lower bounds of the algorithm, not of the implementation: a ratio of
time to floor near 1 means the code does little beyond what the source's algorithm
must.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    n: int  # visual tokens
    d: int  # feature width
    k: int  # kept
    e: int  # bytes per feature value
    question: int = 16  # question tokens
    tower_layers: int = 23  # an in-tower method's layers (LLaVA-1.5's CLIP-L to layer -2)


@dataclass(frozen=True)
class Work:
    bytes: float = 0.0
    flops: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.bytes + other.bytes, self.flops + other.flops)


F32 = 4


def rows(s: Shape) -> Work:
    """Gather ``k`` rows: read them and write them."""
    return Work(bytes=2 * s.k * s.d * s.e)


def read_all(s: Shape) -> Work:
    return Work(bytes=s.n * s.d * s.e)


def gram(s: Shape, n: int | None = None, reread: bool = True) -> Work:
    """One ``n x n`` similarity of ``d``-wide rows, written (and read back once)."""
    n = s.n if n is None else n
    return Work(bytes=(2 if reread else 1) * n * n * F32, flops=2 * n * n * s.d)


def vispruner_rounds(s: Shape, important_share: float = 0.5, per_round: int = 8) -> Work:
    """The A x B blocks VisPruner's rounds read, until the diverse budget remains."""
    important = int(s.k * important_share)
    remaining, target, total = s.n - important, s.k - important, 0
    while remaining - target > 0 and target > 0:
        total += (remaining // 2) * ((remaining + 1) // 2)
        remaining -= min(per_round, remaining - target)
    return Work(bytes=total * F32)


def holov_blocks(s: Shape) -> Work:
    """HoloV's similarities within its regions (contiguous runs of the raster order)."""
    regions = max(1, min(s.k, int(1024 / 576 * s.n / s.k)))
    size = math.ceil(s.n / regions)
    return Work(bytes=regions * size * size * F32, flops=2 * regions * size * size * s.d)


def otprune_kernel(s: Shape) -> Work:
    """OTPrune's kernel ``I + gamma S S^T`` by the cheaper order of products, then its
    greedy DPP's directions."""
    flops = min(4 * s.n * s.d * s.d + 2 * s.n * s.n * s.d, 2 * s.n * s.n * s.d + 2 * s.n**3)
    return Work(bytes=s.n * s.n * F32, flops=flops) + dpp_steps(s, 8)


def dpp_steps(s: Shape, width: int) -> Work:
    """A greedy DPP's picks: step ``t`` reads ``t`` directions of ``n`` values."""
    return Work(bytes=s.n * s.k * s.k / 2 * width)


# Method -> its work; ``none`` is free and has no ratio.
FLOORS: dict[str, Callable[[Shape], Work]] = {
    "balanced": lambda s: read_all(s) + rows(s),
    "cdprune": lambda s: read_all(s) + gram(s) + dpp_steps(s, 8) + rows(s),
    "cls_attention": rows,
    # L1 norms pick the pivots, then one pass for every token's cosine to them.
    "dart": lambda s: read_all(s) + read_all(s) + Work(flops=2 * 8 * s.n * s.d) + rows(s),
    "divprune": lambda s: read_all(s) + gram(s) + Work(bytes=3 * s.k * s.n * F32) + rows(s),
    "evs": lambda s: read_all(s) + rows(s),
    "fastv": rows,
    "fastv_reverse": rows,
    "fastv_vis": rows,
    "fastv_window": rows,
    # Its cuts read the layers' signals, [n] each: negligible; nothing else is its own.
    "flowcut": lambda s: Work(bytes=3 * s.n * s.tower_layers * F32),
    "hiprune": rows,
    "holov": lambda s: read_all(s) + holov_blocks(s) + rows(s),
    "mustdrop": lambda s: read_all(s) + Work(flops=2 * 9 * s.n * s.d) + rows(s),
    "otprune": lambda s: read_all(s) + otprune_kernel(s) + rows(s),
    "pooling": lambda s: read_all(s) + Work(bytes=s.k * s.d * s.e),
    "prunesid": lambda s: read_all(s) + gram(s) + rows(s),
    "random": rows,
    # The raters' product, then DPC-kNN over the recycled 30 % of the deleted tokens.
    "sparsevlm": lambda s: (
        read_all(s)
        + Work(flops=2 * s.question * s.n * s.d)
        + gram(s, int((s.n - s.k) * 0.3) + 1)
        + rows(s)
    ),
    # The words' product, then three merge passes, each adding every member's row.
    "visiontrim": lambda s: (
        read_all(s)
        + Work(flops=2 * s.question * s.n * s.d)
        + Work(bytes=3 * s.n * s.d * s.e)
        + rows(s)
    ),
    "visionzip": lambda s: read_all(s) + rows(s),
    "vispruner": lambda s: (
        read_all(s) + gram(s, s.n - int(s.k * 0.5)) + vispruner_rounds(s) + rows(s)
    ),
    # Column variances (two passes), the low-variance half gathered and normalised, read
    # again for the two centres and the distances.
    "vidcom2": lambda s: Work(bytes=3 * s.n * s.d * s.e + 3 * s.n * s.d // 2 * s.e) + rows(s),
}


def floor_seconds(work: Work, bandwidth: float, matmul_rate: float) -> float:
    """``work`` at ``bandwidth`` bytes/s and ``matmul_rate`` FLOP/s, one phase after the other."""
    return work.bytes / bandwidth + work.flops / matmul_rate
