"""A sampler of a vLLM server's /metrics while a load runs.

`vllm bench serve` measures what the client sees (throughput, TTFT, latency);
what the server holds (KV cache usage, running and waiting requests) only
vLLM's own gauges know, and they change every engine step. So a process polls
``/metrics`` at a short interval and keeps the samples; the pure functions
below turn them into the report's numbers.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path

import requests

KV_USAGE = "vllm:kv_cache_usage_perc"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
# Counters read before and after a scenario; their deltas belong to it.
COUNTERS = (
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm_prune_requests_total",
    "vllm_prune_visual_tokens_before_total",
    "vllm_prune_visual_tokens_after_total",
)


@dataclass(frozen=True)
class Sample:
    """One scrape: seconds since the sampler started, and the three gauges."""

    t: float
    kv_usage: float  # fraction of KV blocks in use, 0..1
    running: int
    waiting: int


def sample_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of each named sample's values over its label sets (e.g. engines of data parallelism).

    A line scan of the Prometheus text format, not a full parse: a /metrics page
    of vLLM is ~50 kB of histograms, and the sampler reads one every few
    milliseconds on the machine it is measuring.
    """
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        name = line[:name_end]
        if name in sums:
            # value (and an optional timestamp) after the labels' closing brace
            sums[name] += float(line[line.rfind("}") + 1 :].split()[0])
    return sums


def parse_sample(text: str, t: float) -> Sample:
    """The gauges of one /metrics page, summed over engines (data-parallel ranks)."""
    sums = sample_sums(text, (KV_USAGE, RUNNING, WAITING))
    return Sample(
        t=t, kv_usage=sums[KV_USAGE], running=int(sums[RUNNING]), waiting=int(sums[WAITING])
    )


def parse_counters(text: str) -> dict[str, float]:
    return sample_sums(text, COUNTERS)


def counter_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


@dataclass(frozen=True)
class GaugeSummary:
    """What a scenario did to the server, from its samples."""

    samples: int
    kv_usage_peak: float
    kv_usage_mean: float  # over samples with at least one request running or waiting
    running_peak: int
    waiting_peak: int


def summarize(samples: list[Sample]) -> GaugeSummary:
    busy = [s for s in samples if s.running or s.waiting]
    return GaugeSummary(
        samples=len(samples),
        kv_usage_peak=max((s.kv_usage for s in samples), default=0.0),
        kv_usage_mean=sum(s.kv_usage for s in busy) / len(busy) if busy else 0.0,
        running_peak=max((s.running for s in samples), default=0),
        waiting_peak=max((s.waiting for s in samples), default=0),
    )


def scrape(metrics_url: str, timeout: float = 10.0, session: requests.Session | None = None) -> str:
    response = (session or requests).get(metrics_url, timeout=timeout)
    response.raise_for_status()
    return response.text


def read_samples(path: Path) -> list[Sample]:
    with path.open(newline="") as handle:
        return [
            Sample(float(r["t"]), float(r["kv_usage"]), int(r["running"]), int(r["waiting"]))
            for r in csv.DictReader(handle)
        ]


def sample_loop(metrics_url: str, interval: float, out: Path) -> int:
    """The sampler process: scrape, append a CSV row, sleep; until SIGTERM or orphaned.

    Returns the number of failed scrapes: a scrape that fails is counted, not
    fatal (a load test should report a struggling server, not die with it).
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    session = requests.Session()  # one kept-alive connection for every scrape
    failed = 0
    started = time.monotonic()
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in fields(Sample)])
        print("ready", flush=True)
        while not stop.is_set() and os.getppid() == parent:
            t = time.monotonic() - started
            try:
                writer.writerow(astuple(parse_sample(scrape(metrics_url, session=session), t)))
            except (requests.RequestException, ValueError):
                failed += 1
            stop.wait(interval)
    return failed


PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # where ``loadtests`` imports from
PYTHONPATH = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


@dataclass
class Sampler:
    """Samples ``metrics_url`` every ``interval`` seconds between start and stop.

    Use as a context manager around the load. The scraping runs in a process of
    its own (``python -m loadtests.scrape``), so that it does not compete with
    ``vllm bench serve``'s event loop, in this process, for the interpreter lock.
    The time series goes to ``csv_path``; ``samples`` and ``counters`` (deltas
    over the same span) are filled in at the end.
    """

    metrics_url: str
    csv_path: Path
    interval: float = 0.05
    samples: list[Sample] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)
    failed_scrapes: int = 0
    _process: subprocess.Popen | None = None

    def __enter__(self) -> Sampler:
        self._before = parse_counters(scrape(self.metrics_url))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "loadtests.scrape", self.metrics_url, str(self.interval)]
            + [str(self.csv_path)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, *PYTHONPATH])),
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            self._process.wait()
            raise RuntimeError(
                f"the metrics sampler did not start (exit {self._process.returncode})"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.terminate()
        tail, _ = self._process.communicate(timeout=30)
        self.failed_scrapes = int(tail.split()[-1])  # "failed N"
        self.samples = read_samples(self.csv_path)
        self.counters = counter_deltas(self._before, parse_counters(scrape(self.metrics_url)))


def main(argv: list[str]) -> None:
    metrics_url, interval, out = argv
    print(f"failed {sample_loop(metrics_url, float(interval), Path(out))}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
