"""``prune: auto``: how hard to prune, from the engine's load, and with which method.

A fixed ratio is wrong half the time: off-peak it costs accuracy for little, at peak it
is what keeps the service up. The API server reads the engine's load as vLLM reports it
(KV-cache usage and waiting requests, from the scheduler statistics every engine step
sends the API server; ``integration/load.py`` receives them) and turns it into a ratio:

- below ``start`` KV usage: 0 (not pruned);
- from ``start`` up: ``levels`` steps of ``max_ratio / levels``, evenly spaced between
  ``start`` and ``full``;
- at ``full`` KV usage or with any request waiting: ``max_ratio``.

The KV usage read is projected: requests this API server has accepted but the engine
does not run yet (a burst still arriving) count at the KV share a running request holds,
so the first requests of a burst are pruned as the burst will need, not as the idle
engine they arrive at looks.

Damping: KV usage is smoothed over ``SMOOTHING_S`` seconds (an exponential average that
keeps moving towards the last reading while no new one comes), and a level is left
downwards only ``hysteresis`` below the threshold that reached it, so a load that hovers
at a threshold does not flap between two settings. Waiting requests are read unsmoothed:
a queue is pruned at once; and an engine that runs and holds nothing reads idle at once.

Pure Python, no vLLM: the policy and its state are tested on their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

AUTO = "auto"
# Which method auto uses, by the request's shape (docs/auto.md#which-method): a video: a
# temporal method (evs: vLLM's own EVS, the cheapest per-frame counts); several images with
# a question: a text-guided one (cdprune: the best text-guided row of the shapes table at
# 0.75, tied at 0.889); otherwise the policy's image method (divprune: the best row of the
# shapes table at 0.889 and the best at 0.75 but random and vispruner; it runs on every
# family; random's lead comes from the demo model's token dropout).
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

    @classmethod
    def from_args(cls, args: object) -> Policy:
        """``--prune-auto-*`` (vllm-prune serve), or the defaults where the parsed options
        have none (plain ``vllm serve`` with the middleware)."""
        default = cls()
        return cls(
            start=getattr(args, "prune_auto_start", default.start),
            full=getattr(args, "prune_auto_full", default.full),
            max_ratio=getattr(args, "prune_auto_max_ratio", default.max_ratio),
            image_method=getattr(args, "prune_auto_method", default.image_method),
        )

    def threshold(self, level: int) -> float:
        """The smoothed KV usage that reaches ``level`` (1 .. levels)."""
        if self.levels == 1:
            return self.full
        return self.start + (self.full - self.start) * (level - 1) / (self.levels - 1)

    def ratio(self, level: int) -> float:
        return round(self.max_ratio * level / self.levels, 4)


@dataclass(frozen=True)
class Reading:
    """The load behind one choice.

    ``kv_usage``: the engine's smoothed KV-cache usage (0 .. 1); ``waiting``: its waiting
    requests; ``pending``: requests this API server has accepted that the engine does not
    run or hold yet (still arriving, decoding images); ``projected``: ``kv_usage`` plus the
    pending requests at the KV share a running request holds; ``age_s``: since the
    engine's last statistics (None: none received yet).
    """

    kv_usage: float
    waiting: int
    pending: int
    projected: float
    age_s: float | None


IDLE = Reading(0.0, 0, 0, 0.0, None)


@dataclass(frozen=True)
class Choice:
    method: str
    ratio: float
    reading: Reading


@dataclass
class _Engine:
    """One engine's last statistics, and its KV usage averaged up to then."""

    t: float
    average: float
    usage: float
    running: int
    waiting: int

    def smoothed(self, now: float) -> float:
        """The average moved towards the last usage for the time since it came."""
        return self.usage + (self.average - self.usage) * math.exp(-(now - self.t) / SMOOTHING_S)


class Load:
    """The engines' load as their statistics report it, and the level it sets.

    ``record`` is called for every engine step's statistics (``integration/load.py``);
    ``enter`` and ``leave`` around every request this API server serves; ``level`` when a
    request with ``prune: auto`` arrives. With several engines (data parallel) the busiest
    one's KV usage counts: a request may be routed to it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._engines: dict[int, _Engine] = {}
        self._share = 0.0  # KV usage per running request, as last seen
        self._in_flight = 0
        self._level = 0

    def record(self, engine: int, kv_usage: float, running: int, waiting: int) -> None:
        now = self._clock()
        with self._lock:
            previous = self._engines.get(engine)
            # An engine that runs and holds nothing reads idle at once: nothing to protect.
            idle = previous is None or (running == 0 and waiting == 0)
            average = kv_usage if idle else previous.smoothed(now)
            self._engines[engine] = _Engine(now, average, kv_usage, running, waiting)
            if running > 0:
                self._share = kv_usage / running

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def reading(self) -> Reading:
        """The load now (for a request arriving now: not counted in flight yet)."""
        now = self._clock()
        with self._lock:
            engines = list(self._engines.values())
            in_flight, share = self._in_flight, self._share
        if not engines and not in_flight:
            return IDLE
        kv = max((e.smoothed(now) for e in engines), default=0.0)
        waiting = max((e.waiting for e in engines), default=0)
        known = sum(e.running + e.waiting for e in engines)
        pending = max(0, in_flight - known)
        age = round(now - max(e.t for e in engines), 3) if engines else None
        return Reading(round(kv, 4), waiting, pending, round(kv + pending * share, 4), age)

    def level(self, policy: Policy) -> tuple[int, Reading]:
        """The level this load sets, moved from the last one with hysteresis."""
        reading = self.reading()
        load = reading.projected
        with self._lock:
            level = self._level
            reached = max(
                (k for k in range(1, policy.levels + 1) if load >= policy.threshold(k)),
                default=0,
            )
            if reading.waiting > 0:
                level = policy.levels
            elif reached >= level:
                level = reached
            else:
                while level > reached and load < policy.threshold(level) - policy.hysteresis:
                    level -= 1
            self._level = level
        return level, reading


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
