"""Every engine step of a vLLM server, from its own ``--enable-logging-iteration-details`` log.

With that option vLLM logs one line per scheduler step: how many requests it
ran in the step (prefilling and decoding) and the KV cache usage after it.
Unlike ``/metrics``, which a client can only sample, the log misses no step,
so the KV benchmark reads "were all n requests in one step" and the KV peak
from it (its own server, its own log file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ITERATION = re.compile(
    r"Iteration\((?P<index>\d+)\): (?P<ctx>\d+) context requests, (?P<ctx_tokens>\d+) context "
    r"tokens, (?P<gen>\d+) generation requests, (?P<gen_tokens>\d+) generation tokens, .*? "
    r"KV cache usage: (?P<kv>[\d.]+)%"
)


@dataclass(frozen=True)
class Iteration:
    """One scheduler step."""

    index: int
    prefilling: int  # requests that computed prompt tokens in this step
    decoding: int  # requests that generated a token in this step
    kv_usage: float  # 0..1, after the step

    @property
    def scheduled(self) -> int:
        return self.prefilling + self.decoding


def parse_iterations(text: str) -> list[Iteration]:
    """The iteration lines of a vLLM log, in order; other lines are skipped."""
    return [
        Iteration(
            index=int(m["index"]),
            prefilling=int(m["ctx"]),
            decoding=int(m["gen"]),
            kv_usage=float(m["kv"]) / 100,
        )
        for m in map(ITERATION.search, text.splitlines())
        if m is not None
    ]


class LogTail:
    """What a log file gains between ``start()`` and ``read()`` (the server appends to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def start(self) -> None:
        self.offset = self.path.stat().st_size

    def read(self) -> str:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            return handle.read().decode(errors="replace")
