"""Opt-in record of the visual tokens the server kept: ``VLLM_PRUNE_TRACE=FILE``.

The API never returns which tokens a method kept, and methods that read model signals
(FastV's scout attention, the vision tower's [CLS] attention, the question) cannot be
replayed offline. So, when ``VLLM_PRUNE_TRACE`` names a file, the engine process appends
one JSON line per pruned image (per grid part for LLaVA-NeXT), written where every
family applies a method's result (``plan.reduce_plan``)::

    {"method": "fastv", "keep": 144, "tokens": 576, "grid": [24, 24],
     "indices": [...], "merged": false}

``tokens`` is N, the tokens of the grid the method saw (``grid`` = rows, cols; Qwen:
the grid after its 2 x 2 merger); ``indices`` are the kept tokens in that grid's raster
order, ascending. ``merged`` is true when the rows the LLM got are not those tokens
themselves (pooling, VisionZip, SparseVLM merge): each index is then the position its
merged row stands for (``Reduced.indices``). LLaVA-NeXT adds ``"part": "base"`` (the
whole image at 336 px) or ``"part": "grid"`` (the stitched anyres crops, newline tokens
left out). A video pruned by a spatial method writes one line per frame (``"part":
"frame F"``, the frame's grid); one pruned by a temporal method (``evs``, ``vidcom2``)
one line with ``"part": "video"``, its frames stacked (``grid`` = frames x rows, cols).
Images that are not pruned (``keep == tokens``) write nothing. A line is
written when the engine encodes an image, and vLLM's caches are keyed on the image and
its prune fields (text-guided methods: the question too), so the same image asked again
with the same setting writes no new line. With tensor parallelism every rank prunes
the same images and writes its own lines, each with ``"rank": R`` (its tensor-parallel
rank): the ranks must keep the same tokens, and the trace is how that is checked.

Each line is one ``write`` on a file opened in append mode, so several engine
processes can share a file without locks. Unset (the default), nothing happens.
``vllm-prune analyze positions|overlay --trace FILE`` plots a trace.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..methods import Reduced

ENV = "VLLM_PRUNE_TRACE"

logger = logging.getLogger("vllm.prune")  # under vLLM's handler, so it is printed
_failed: set[str] = set()  # paths already warned about, so a bad path warns once


class TraceError(ValueError):
    """A trace file line that is not a trace record; the message names file and line."""


@dataclass(frozen=True)
class TraceLine:
    """One pruned image (or LLaVA-NeXT grid part) as the engine pruned it."""

    method: str
    keep: int
    tokens: int
    grid: tuple[int, int]
    indices: tuple[int, ...]
    merged: bool = False
    part: str | None = None
    rank: int | None = None  # the tensor-parallel rank that wrote it, with TP only

    def to_json(self) -> str:
        record: dict[str, object] = {
            "method": self.method,
            "keep": self.keep,
            "tokens": self.tokens,
            "grid": list(self.grid),
            "indices": list(self.indices),
            "merged": self.merged,
        }
        if self.part is not None:
            record["part"] = self.part
        if self.rank is not None:
            record["rank"] = self.rank
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_record(cls, record: object) -> TraceLine:
        """Checked: a line that contradicts itself is an error, not a silent skip."""
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        try:
            grid = tuple(int(v) for v in record["grid"])
            line = cls(
                method=str(record["method"]),
                keep=int(record["keep"]),
                tokens=int(record["tokens"]),
                grid=grid,  # type: ignore[arg-type]
                indices=tuple(int(i) for i in record["indices"]),
                merged=bool(record.get("merged", False)),
                part=None if record.get("part") is None else str(record["part"]),
                rank=None if record.get("rank") is None else int(record["rank"]),
            )
        except KeyError as missing:
            raise ValueError(f"missing field {missing}") from None
        except (TypeError, ValueError) as bad:
            raise ValueError(f"bad field value ({bad})") from None
        if len(line.grid) != 2 or line.grid[0] * line.grid[1] != line.tokens:
            raise ValueError(f"grid {list(line.grid)} does not hold {line.tokens} tokens")
        if len(line.indices) != line.keep or len(set(line.indices)) != line.keep:
            raise ValueError(
                f"{len(line.indices)} indices ({len(set(line.indices))} distinct) "
                f"for keep {line.keep}"
            )
        if line.indices and not 0 <= min(line.indices) <= max(line.indices) < line.tokens:
            raise ValueError(f"indices outside [0, {line.tokens})")
        return line


def read_trace(path: Path) -> list[TraceLine]:
    """Every line of a trace file, in the order written (blank lines skipped)."""
    lines = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:  # a cut or foreign line
                raise TraceError(
                    f"{path}:{number}: not a trace line: not JSON ({error.msg})"
                ) from None
            try:
                lines.append(TraceLine.from_record(record))
            except ValueError as error:
                raise TraceError(f"{path}:{number}: not a trace line: {error}") from None
    return lines


def trace_path() -> str | None:
    return os.environ.get(ENV) or None


def append(path: str, line: TraceLine) -> None:
    """One ``write`` in append mode: lines from several processes never interleave."""
    data = (line.to_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(f"short write ({written} of {len(data)} bytes)")


def _no_rank() -> int | None:
    return None


# This process's tensor-parallel rank (None without TP). The plugin sets it to vLLM's
# (integration.parallel.tensor_parallel_rank); this module knows no vLLM.
rank: Callable[[], int | None] = _no_rank


def record(
    method: str,
    features: torch.Tensor,
    grid: tuple[int, int],
    reduced: Reduced,
    part: str | None = None,
) -> None:
    """Append what a method kept of ``features`` (one grid) when ``VLLM_PRUNE_TRACE`` is set.

    A trace that cannot be written is logged once and then ignored: tracing must never
    fail a request.
    """
    path = trace_path()
    tokens = int(grid[0] * grid[1])
    if path is None or reduced.indices.numel() == tokens:
        return
    indices = reduced.indices.to(torch.long)
    # An in-tower method's features are already the kept rows, each its own token.
    merged = features.shape[0] == tokens and not torch.equal(
        features[indices.to(features.device)], reduced.features
    )
    line = TraceLine(
        method=method,
        keep=int(indices.numel()),
        tokens=tokens,
        grid=(int(grid[0]), int(grid[1])),
        indices=tuple(indices.cpu().tolist()),
        merged=merged,
        part=part,
        rank=rank(),
    )
    try:
        append(path, line)
    except OSError as error:
        if path not in _failed:
            _failed.add(path)
            logger.warning(
                "prune: cannot write %s=%s (%s); trace lines are dropped", ENV, path, error
            )
