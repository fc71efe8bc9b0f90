"""Hold a vLLM engine's scheduler while a burst of requests arrives, then release them at once.

A burst sent "at once" reaches the engine one request at a time: the API server
decodes and preprocesses each image first. On the CPU demo that takes about as
long as a whole request runs, so the first requests are done before the last
arrive, and "n requests at once" never happens. vLLM's own ``POST
/pause?mode=keep`` freezes scheduling while requests keep queueing, ``POST
/resume`` lets the scheduler see them all in its next step (both are routes of
vLLM's development mode, ``VLLM_SERVER_DEV_MODE=1``, which only the benchmark's
own loopback server turns on).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import requests

from loadtests.scrape import parse_counters, scrape

T = TypeVar("T")
ARRIVED = "vllm_prune_requests_total"  # counted by the processor, just before the engine
SETTLE_S = 0.5  # from the processor to the engine core's queue: one message over ZMQ


def _post(url: str) -> None:
    response = requests.post(url, timeout=60)
    response.raise_for_status()


def run_held(url: str, expected: int, load: Callable[[], T], timeout: float = 600.0) -> T:
    """Run ``load`` (which sends ``expected`` image requests) in a thread with scheduling
    paused; resume once the server has processed them all (or ``timeout`` has passed)."""
    before = parse_counters(scrape(f"{url}/metrics"))[ARRIVED]
    _post(f"{url}/pause?mode=keep")
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(load())
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=target, name="held-load")
    try:
        thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and thread.is_alive():
            arrived = parse_counters(scrape(f"{url}/metrics"))[ARRIVED] - before
            if arrived >= expected:
                time.sleep(SETTLE_S)
                break
            time.sleep(0.05)
    finally:
        _post(f"{url}/resume")
        thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
