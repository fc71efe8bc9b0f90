"""``prune: auto``: how hard to prune, from the engine's load, and with which method.

A fixed ratio is wrong half the time: off-peak it costs accuracy for little, at peak it
is what keeps the service up. The API server reads the engine's load as vLLM reports it
(KV-cache usage and waiting requests, from the scheduler statistics every engine step
sends the API server; ``integration/load.py`` receives them) and turns it into a ratio:

- below ``start`` KV usage: 0 (not pruned);
- from ``start`` up: ``levels`` steps of ``max_ratio / levels``, evenly spaced between
  ``start`` and ``full``;
- at ``full`` KV usage or with any request waiting: ``max_ratio``.

Damping: KV usage is smoothed over ``SMOOTHING_S`` seconds (an exponential average that
keeps moving towards the last reading while no new one comes, so an idle engine reads
idle), a level is left downwards only ``hysteresis`` below the threshold that reached it,
so a load that hovers at a threshold does not flap between two settings. Waiting
requests are read unsmoothed: a queue is pruned at once.

Pure Python, no vLLM: the policy and its state are tested on their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

AUTO = "auto"
# Which method auto uses, by the request's shape (docs/choosing-a-method.md#prune-auto):
# a video: a temporal method (evs: vLLM's own EVS, the cheapest per-frame counts);
# several images with a question: a text-guided one (cdprune: the best text-guided row of
# the shapes table at 0.75 and 0.889); otherwise the policy's image method (divprune: the
# best row of the shapes table at 0.889 and the best at 0.75 but random and vispruner, it
# runs on every family; random's lead comes from the demo model's token dropout).
VIDEO_METHODS = ("evs", "vidcom2")
QUESTION_METHODS = ("cdprune", "fastv_window")
FALLBACK_METHODS = ("pooling", "random")
DEFAULT_IMAGE_METHOD = "divprune"
SMOOTHING_S = 2.0  # time constant of the KV-usage average, seconds


@dataclass(frozen=True)
class Policy:
    """``--prune-auto-*``: where pruning starts, where it is full, how hard, with what."""

    start: float = 0.5  # KV usage where pruning starts
    full: float = 0.9  # KV usage where it reaches max_ratio (or any waiting request)
    max_ratio: float = 0.75
    image_method: str = DEFAULT_IMAGE_METHOD
    levels: int = 3  # ratios between 0 and max_ratio: max_ratio * k / levels
    hysteresis: float = 0.05  # KV usage below a level's threshold before it is left

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < self.full <= 1.0:
            raise ValueError(f"need 0 <= start < full <= 1; got {self.start}, {self.full}")
        if not 0.0 < self.max_ratio < 1.0:
            raise ValueError(f"max_ratio must be in (0, 1); got {self.max_ratio}")

    def threshold(self, level: int) -> float:
        """The smoothed KV usage that reaches ``level`` (1 .. levels)."""
        if self.levels == 1:
            return self.full
        return self.start + (self.full - self.start) * (level - 1) / (self.levels - 1)

    def ratio(self, level: int) -> float:
        return round(self.max_ratio * level / self.levels, 4)


@dataclass(frozen=True)
class Reading:
    """The load behind one choice: smoothed KV usage (0 .. 1), requests waiting, its age."""

    kv_usage: float
    waiting: int
    age_s: float | None  # None: no statistics received yet (an engine that never ran)


@dataclass(frozen=True)
class Choice:
    method: str
    ratio: float
    reading: Reading


class Load:
    """The latest scheduler statistics of each engine, smoothed, and the level they set.

    ``record`` is called for every engine step's statistics (``integration/load.py``);
    ``level`` when a request with ``prune: auto`` arrives. With several engines (data
    parallel) the busiest one counts: a request may be routed to it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._engines: dict[int, tuple[float, float, float, int]] = {}  # t, ema, raw, waiting
        self._level = 0

    def record(self, engine: int, kv_usage: float, waiting: int) -> None:
        now = self._clock()
        with self._lock:
            previous = self._engines.get(engine)
            ema = kv_usage if previous is None else _toward(previous, now)
            self._engines[engine] = (now, ema, kv_usage, waiting)

    def reading(self) -> Reading:
        now = self._clock()
        with self._lock:
            engines = list(self._engines.values())
        if not engines:
            return Reading(0.0, 0, None)
        kv = max(_toward(e, now) for e in engines)
        waiting = max(e[3] for e in engines)
        return Reading(round(kv, 4), waiting, round(now - max(e[0] for e in engines), 3))

    def level(self, policy: Policy) -> tuple[int, Reading]:
        """The level this load sets, moved from the last one with hysteresis."""
        reading = self.reading()
        with self._lock:
            level = self._level
            reached = max(
                (k for k in range(1, policy.levels + 1) if reading.kv_usage >= policy.threshold(k)),
                default=0,
            )
            if reading.waiting > 0:
                level = policy.levels
            elif reached >= level:
                level = reached
            else:
                while level > reached and reading.kv_usage < (
                    policy.threshold(level) - policy.hysteresis
                ):
                    level -= 1
            self._level = level
        return level, reading


def _toward(engine: tuple[float, float, float, int], now: float) -> float:
    """The engine's average moved towards its last reading for the time since it came."""
    t, ema, raw, _ = engine
    return raw + (ema - raw) * math.exp(-(now - t) / SMOOTHING_S)


def choose_method(
    images: int,
    videos: int,
    has_question: bool,
    runs: Callable[[str], bool],
    image_method: str = DEFAULT_IMAGE_METHOD,
) -> str:
    """The method for a request of this shape that the served model runs ('none' if none)."""
    if videos:
        preferred = [*VIDEO_METHODS, image_method]
    elif images >= 2 and has_question:
        preferred = [*QUESTION_METHODS, image_method]
    else:
        preferred = [image_method]
    return next((m for m in [*preferred, *FALLBACK_METHODS] if runs(m)), "none")


LOAD = Load()  # this API-server process's reading of its engines
