"""A load that rises and falls, served three ways: unpruned, the fixed maximum, ``prune: auto``.

    python -m loadtests.auto_load --out loadtests/results/auto_load   # make loadtest-auto
    python -m loadtests.auto_load --url http://host:8000 --model llava-1.5-7b ...
    python -m loadtests.auto_load --plot-only          # redraw OUT's plot from its files

``prune: auto`` claims the best of both: every visual token while the engine has
room, the maximum ratio when it has none. A fixed setting cannot show that, so
the same load runs three ways, one after the other, on one server: ``none``, the
auto policy's own method at its maximum ratio (``divprune`` 0.75 by default, read
from the server's ``/v1/prune/methods``), and ``auto``.

The load has three phases, each one ``vllm bench serve`` run (``loadtests/bench.py``;
one 336x336 random-mm image, 32 random text tokens, 64 output tokens, EOS
ignored): low (concurrency 1), saturation (concurrency 32 on a KV cache of 256
blocks of 32 tokens, where an unpruned request needs 22 blocks), low again. The
phases follow each other without a pause, so the engine drains between them as
a falling load would, and ``auto`` must notice both edges. Every phase of every
setting has its own seed: no request finds another's images in vLLM's caches
(the prefix cache would make a repeated image's prefill free). Before each
setting the server is left to go idle.

Per phase and setting: completed requests, throughput, TTFT p50/p90, preemptions
(``vllm:num_preemptions_total``), the visual tokens kept per request
(``vllm_prune_visual_tokens_after_total`` / ``vllm_prune_requests_total``) and,
for ``auto``, the mean ratio it chose (``vllm_prune_auto_ratio``); counters are
read at the phase boundaries, so each delta is its phase's. Written to
``OUT/summary.{md,json}``, with the issue's targets checked (printed PASS/FAIL;
the exit status is 0 either way: this is a measurement), and ``OUT/auto_load.png``:
over each setting's run, KV-cache usage and requests waiting (``loadtests/scrape.py``'s
sampler, a process of its own) and the visual tokens kept per request (the
``vllm_prune`` counters, sampled by a second process), phases marked.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shutil
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from loadtests.bench import Workload, bench_argv, command_line, run_bench, summarize_result
from loadtests.local_server import (
    LocalServer,
    add_local_server_args,
    add_target_args,
    image_size,
    local_server,
    serve_args,
)
from loadtests.scrape import (
    COUNTERS,
    Sample,
    Sampler,
    parse_sample,
    read_samples,
    sample_sums,
    scrape,
    summarize,
)
from vllm_prune import auto

if TYPE_CHECKING:
    from vllm_prune.eval.client import Setting

# loadtests.sweep and vllm_prune.eval.client are imported where used: they take a second
# or more to import (datasets), and the counter sampler's process imports this module.

DEFAULT_OUT = Path("loadtests/results/auto_load")
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
PLOT_PNG = "auto_load.png"
PREEMPTIONS = "vllm:num_preemptions_total"
IMAGES = "vllm_prune_requests_total"
KEPT = "vllm_prune_visual_tokens_after_total"
AUTO_SUM = "vllm_prune_auto_ratio_sum"
AUTO_COUNT = "vllm_prune_auto_ratio_count"
# Read at each phase boundary; the counter sampler reads the same, over time.
PHASE_COUNTERS = (*COUNTERS, AUTO_SUM, AUTO_COUNT)


@dataclass(frozen=True)
class Phase:
    name: str  # low-1, saturation, low-2
    concurrency: int
    num_prompts: int


@dataclass(frozen=True)
class Row:
    """One phase of one setting's run."""

    setting: str  # none, divprune-0.75, auto
    phase: str
    concurrency: int
    num_prompts: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    preemptions: int
    visual_tokens_kept: float | None  # per image request (None: no vllm_prune counters)
    auto_ratio_mean: float | None  # prune: auto's chosen ratio, mean over the phase
    pruned_requests: int | None  # prompts shorter than none's (None: no none run)
    kv_usage_peak: float
    waiting_peak: int
    start_s: float  # first request sent, seconds since the setting's run began
    end_s: float  # last response ended
    seed: int
    command: str


@dataclass(frozen=True)
class Verdict:
    target: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.target}: {self.detail}"


def _phases(args: argparse.Namespace) -> list[Phase]:
    return [
        Phase("low-1", args.low_concurrency, args.low_prompts),
        Phase("saturation", args.saturation_concurrency, args.saturation_prompts),
        Phase("low-2", args.low_concurrency, args.low_prompts),
    ]


def grid(url: str) -> list[Setting]:
    """none, the auto policy's method at its maximum ratio (as the server reports its
    policy; the defaults where it does not), and auto."""
    from vllm_prune.eval.client import Setting

    policy = auto.Policy()
    method, ratio = policy.image_method, policy.max_ratio
    try:
        served = requests.get(f"{url}/v1/prune/methods", timeout=10).json()["auto"]["policy"]
        method, ratio = served["image_method"], float(served["max_ratio"])
    except (requests.RequestException, ValueError, KeyError, TypeError) as error:
        print(f"auto policy unknown ({error!r}); assuming {method} {ratio}", flush=True)
    return [Setting("none"), Setting(method, ratio), Setting(auto.AUTO)]


def wait_idle(metrics_url: str, timeout: float = 300.0) -> None:
    """Until the engine runs and queues nothing (a setting must not inherit another's load)."""
    deadline = time.monotonic() + timeout
    while True:
        sample = parse_sample(scrape(metrics_url), 0.0)
        if sample.running == 0 and sample.waiting == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not idle after {timeout:.0f}s: {sample}")
        time.sleep(0.5)


def counter_loop(
    metrics_url: str, interval: float, out: str, t0: float, ready: Any, stop: Any
) -> None:
    """The counter sampler's process: ``PHASE_COUNTERS`` every ``interval`` seconds, with
    the time since ``t0`` (``time.monotonic`` is one clock for every process), until
    ``stop`` is set or the parent is gone; ``ready`` is set once it scrapes. A failed
    scrape is skipped, not fatal."""
    parent = os.getppid()
    session = requests.Session()
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t", *PHASE_COUNTERS])
        while not stop.is_set() and os.getppid() == parent:
            try:
                sums = sample_sums(scrape(metrics_url, session=session), PHASE_COUNTERS)
                writer.writerow([round(time.monotonic() - t0, 4), *sums.values()])
            except (requests.RequestException, ValueError):
                pass
            ready.set()
            stop.wait(interval)


class CounterSampler:
    """``counter_loop`` in a process of its own (as ``Sampler`` for the gauges: not in
    this process, where ``vllm bench serve``'s event loop runs) while the block runs."""

    def __init__(self, metrics_url: str, csv_path: Path, interval: float, t0: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready = context.Event()
        self._stop = context.Event()
        self._process = context.Process(
            target=counter_loop,
            args=(metrics_url, interval, str(csv_path), t0, self._ready, self._stop),
            daemon=True,
        )

    def __enter__(self) -> CounterSampler:
        self._process.start()
        if not self._ready.wait(timeout=120):
            self._process.terminate()
            raise RuntimeError("the counter sampler did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()


def read_counters(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(handle)]


def kept_series(rows: list[dict[str, float]]) -> tuple[list[float], list[float]]:
    """Visual tokens kept per request between successive counter samples (where any
    request arrived), at the middle of each span."""
    times, kept = [], []
    for before, after in zip(rows, rows[1:], strict=False):
        images = after[IMAGES] - before[IMAGES]
        if images > 0:
            times.append((before["t"] + after["t"]) / 2)
            kept.append((after[KEPT] - before[KEPT]) / images)
    return times, kept


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def phase_row(
    setting: Setting,
    phase: Phase,
    bench: dict[str, Any],
    counters: dict[str, float],
    samples: list[Sample],
    t0: float,
    seed: int,
    command: str,
    unpruned_prompt: int | None,
) -> Row:
    """One row from the client's result, the phase's counter deltas and its gauge samples."""
    summary = summarize_result(bench)
    ok = [i for i, e in enumerate(bench["errors"]) if not e]
    starts = [bench["start_times"][i] for i in ok]
    ends = [bench["start_times"][i] + bench["latencies"][i] for i in ok]
    start_s = min(starts) - t0 if starts else 0.0
    end_s = max(ends) - t0 if ends else 0.0
    gauges = summarize([s for s in samples if start_s <= s.t <= end_s])
    pruned = None
    if unpruned_prompt is not None:
        pruned = sum(n < unpruned_prompt for n in summary.prompt_tokens)
    return Row(
        setting=setting.name,
        phase=phase.name,
        concurrency=phase.concurrency,
        num_prompts=phase.num_prompts,
        completed=summary.completed,
        failed=summary.failed,
        duration_s=summary.duration_s,
        request_throughput=summary.request_throughput,
        ttft_p50_ms=summary.latencies_ms["ttft_p50_ms"],
        ttft_p90_ms=summary.latencies_ms["ttft_p90_ms"],
        preemptions=int(counters[PREEMPTIONS]),
        visual_tokens_kept=_ratio(counters[KEPT], counters[IMAGES]),
        auto_ratio_mean=_ratio(counters[AUTO_SUM], counters[AUTO_COUNT]),
        pruned_requests=pruned,
        kv_usage_peak=gauges.kv_usage_peak,
        waiting_peak=gauges.waiting_peak,
        start_s=round(start_s, 3),
        end_s=round(end_s, 3),
        seed=seed,
        command=command,
    )


def sent_order(bench: dict[str, Any]) -> list[tuple[float, int]]:
    """(send time, prompt tokens) of each completed request, in the order they were sent."""
    return sorted(
        (start, n)
        for start, n, error in zip(
            bench["start_times"], bench["input_lens"], bench["errors"], strict=True
        )
        if not error
    )


def auto_note(
    phase: str, bench: dict[str, Any], unpruned_prompt: int, previous_end: float | None
) -> str | None:
    """How ``auto`` followed the load's edges: at saturation, how many requests went out
    unpruned before the first pruned one; at low load, how long pruning lingered."""
    sent = sent_order(bench)
    pruned = [i for i, (_, n) in enumerate(sent) if n < unpruned_prompt]
    if not pruned:
        return None
    first_send = sent[0][0]
    text = f"auto, {phase}: {len(pruned)} of {len(sent)} requests pruned"
    if phase == "saturation":
        first = pruned[0]
        return (
            f"{text}; the first {first} went out unpruned, the first pruned one "
            f"{sent[first][0] - first_send:.2f} s after the phase's first request"
        )
    last = sent[pruned[-1]][0]
    text += f", the last {last - first_send:.2f} s after the phase's first request"
    if previous_end is not None:
        text += f" ({last - previous_end:.2f} s after the previous phase's last response)"
    return text


@dataclass
class Run:
    """One setting's three phases."""

    setting: Setting
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_setting(
    url: str,
    metrics_url: str,
    args: argparse.Namespace,
    setting: Setting,
    seed: int,
    unpruned_prompt: int | None,
) -> tuple[Run, int | None]:
    """The three phases for ``setting``, back to back; returns the run and the unpruned
    prompt length (``none``'s longest prompt, once ``none`` has run)."""
    raw = args.out / "raw"
    run = Run(setting)
    wait_idle(metrics_url)
    with Sampler(metrics_url, raw / f"{setting.name}.metrics.csv", args.interval) as sampler:
        t0 = time.monotonic()
        counters_csv = raw / f"{setting.name}.counters.csv"
        with CounterSampler(metrics_url, counters_csv, args.counter_interval, t0):
            results = []
            before = sample_sums(scrape(metrics_url), PHASE_COUNTERS)
            for index, phase in enumerate(_phases(args)):
                name = f"{setting.name}-{phase.name}"
                argv = bench_argv(
                    _workload(url, args, phase.num_prompts),
                    setting.extra_body(),
                    phase.concurrency,
                    seed=seed + index,
                    result_file=(raw / f"{name}.json").resolve(),
                )
                print(f"[{name}] {phase.num_prompts} requests, c={phase.concurrency}", flush=True)
                bench = run_bench(argv, raw / f"{name}.log")
                after = sample_sums(scrape(metrics_url), PHASE_COUNTERS)
                deltas = {k: after[k] - before[k] for k in before}
                before = after
                results.append((phase, bench, deltas, seed + index, command_line(argv)))
    if setting.method == "none":
        # none's prompts are the unpruned length; any shorter prompt was pruned.
        prompts = [n for _, bench, *_ in results for n in summarize_result(bench).prompt_tokens]
        unpruned_prompt = max(prompts, default=None)
    for phase, bench, deltas, phase_seed, command in results:
        row = phase_row(
            setting,
            phase,
            bench,
            deltas,
            sampler.samples,
            t0,
            phase_seed,
            command,
            unpruned_prompt,
        )
        run.rows.append(row)
        kept = "-" if row.visual_tokens_kept is None else f"{row.visual_tokens_kept:.0f}"
        print(
            f"[{setting.name}-{phase.name}] {row.completed} ok, {row.failed} failed, "
            f"{row.request_throughput:.2f} req/s, TTFT p90 {row.ttft_p90_ms:.0f} ms, "
            f"kept {kept}, preemptions {row.preemptions}, KV peak {row.kv_usage_peak:.0%}, "
            f"waiting peak {row.waiting_peak}",
            flush=True,
        )
        if setting.method == auto.AUTO and unpruned_prompt is not None:
            previous_end = run.rows[-2].end_s + t0 if len(run.rows) > 1 else None
            note = auto_note(phase.name, bench, unpruned_prompt, previous_end)
            if note is not None:
                run.notes.append(note)
    if sampler.failed_scrapes:
        run.notes.append(f"{setting.name}: {sampler.failed_scrapes} failed /metrics scrapes")
    return run, unpruned_prompt


def _workload(url: str, args: argparse.Namespace, num_prompts: int) -> Workload:
    return Workload(
        base_url=url,
        model=args.model,
        tokenizer=args.tokenizer,
        num_prompts=num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        image_sizes=(args.image_size,),
    )


def warm_up(url: str, args: argparse.Namespace, settings: list[Setting], seed: int) -> None:
    """A few requests per setting before anything is measured: the first requests of a
    fresh server (and of a method) pay one-off costs that belong to no setting."""
    if args.warmup <= 0:
        return
    raw = args.out / "raw"
    for index, setting in enumerate(settings):
        argv = bench_argv(
            _workload(url, args, args.warmup),
            setting.extra_body(),
            args.low_concurrency,
            seed=seed + index,
            result_file=(raw / f"warmup-{setting.name}.json").resolve(),
        )
        run_bench(argv, raw / f"warmup-{setting.name}.log")
    print(f"warmed up: {args.warmup} requests per setting", flush=True)


def targets(rows: list[Row], fixed: str) -> list[Verdict]:
    """The issue's targets: auto unpruned at low load, near the fixed maximum at saturation."""
    at = {(r.setting, r.phase): r for r in rows}
    verdicts = []
    for phase in ("low-1", "low-2"):
        a, n = at[(auto.AUTO, phase)], at[("none", phase)]
        if a.visual_tokens_kept is None or n.visual_tokens_kept is None:
            verdicts.append(Verdict(f"{phase}: auto keeps none's visual tokens", False, "no data"))
            continue
        verdicts.append(
            Verdict(
                f"{phase}: auto keeps as many visual tokens per request as none",
                a.visual_tokens_kept >= n.visual_tokens_kept - 1e-9,
                f"auto {a.visual_tokens_kept:.1f}, none {n.visual_tokens_kept:.1f} "
                f"({a.pruned_requests} of {a.completed} auto requests pruned)",
            )
        )
    a, f = at[(auto.AUTO, "saturation")], at[(fixed, "saturation")]
    verdicts.append(
        Verdict(
            f"saturation: auto throughput >= 0.9 x {fixed}'s",
            a.request_throughput >= 0.9 * f.request_throughput,
            f"auto {a.request_throughput:.2f} req/s, {fixed} {f.request_throughput:.2f} "
            f"(ratio {a.request_throughput / f.request_throughput:.2f})",
        )
    )
    verdicts.append(
        Verdict(
            f"saturation: auto TTFT p90 <= 1.1 x {fixed}'s",
            a.ttft_p90_ms <= 1.1 * f.ttft_p90_ms,
            f"auto {a.ttft_p90_ms:.0f} ms, {fixed} {f.ttft_p90_ms:.0f} ms "
            f"(ratio {a.ttft_p90_ms / f.ttft_p90_ms:.2f})",
        )
    )
    return verdicts


COLUMNS = (
    ("setting", "setting", "{}"),
    ("phase", "phase", "{}"),
    ("concurrency", "concurrency", "{}"),
    ("completed", "completed", "{}"),
    ("request_throughput", "req/s", "{:.2f}"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:.0f}"),
    ("ttft_p90_ms", "TTFT p90 (ms)", "{:.0f}"),
    ("preemptions", "preemptions", "{}"),
    ("visual_tokens_kept", "visual tokens kept", "{:.1f}"),
    ("auto_ratio_mean", "auto ratio (mean)", "{:.3f}"),
    ("pruned_requests", "pruned requests", "{}"),
    ("kv_usage_peak", "KV peak %", "{:.0%}"),
    ("waiting_peak", "waiting peak", "{}"),
)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = []
        for name, _, fmt in COLUMNS:
            value = getattr(row, name)
            text = "-" if value is None else fmt.format(value)
            cells.append(text.removesuffix("%"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def preamble(args: argparse.Namespace, url: str, kv: str, settings: list[Setting]) -> str:
    width, height = args.image_size
    phases = ", ".join(
        f"{p.name} ({p.num_prompts} requests at concurrency {p.concurrency})" for p in _phases(args)
    )
    return (
        f"Server {url} ({kv}). Per request: one {width}x{height} image, {args.input_len} random "
        f"text tokens, {args.output_len} generated tokens (EOS ignored). Phases, back to back: "
        f"{phases}. Settings, one after the other on the same server: "
        f"{', '.join(s.name for s in settings)}. Throughput and TTFT from `vllm bench serve`; "
        "preemptions, visual tokens kept per request and auto's mean ratio from the server's "
        "counters over the phase; pruned requests: prompts shorter than none's; KV peak and "
        "waiting peak from /metrics sampled during the phase.\n\n"
    )


def write_summary(
    out: Path, rows: list[Row], verdicts: list[Verdict], notes: list[str], head: str
) -> str:
    text = head + markdown_table(rows)
    text += "\nTargets:\n\n" + "".join(f"- {v.line()}\n" for v in verdicts)
    if notes:
        text += "\nNotes:\n\n" + "".join(f"- {n}\n" for n in notes)
    text += f"\n![load, KV usage and visual tokens kept over time]({PLOT_PNG})\n"
    (out / SUMMARY_MD).write_text(text)
    document = {
        "rows": [asdict(r) for r in rows],
        "targets": [asdict(v) for v in verdicts],
        "notes": notes,
    }
    (out / SUMMARY_JSON).write_text(json.dumps(document, indent=2) + "\n")
    return text


def plot(out: Path, rows: list[Row]) -> Path:
    """Per setting (a column each, one time axis for all), over its run: KV-cache usage,
    requests waiting, visual tokens kept per request; the saturation phase shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.setting for r in rows))
    fig, axes = plt.subplots(
        3, len(names), figsize=(3.3 * len(names), 6.6), sharex=True, sharey="row", squeeze=False
    )
    unpruned = max((r.visual_tokens_kept or 0.0 for r in rows), default=0.0)
    for column, name in enumerate(names):
        own = [r for r in rows if r.setting == name]
        samples = read_samples(out / "raw" / f"{name}.metrics.csv")
        times, kept = kept_series(read_counters(out / "raw" / f"{name}.counters.csv"))
        kv_ax, wait_ax, kept_ax = axes[:, column]
        ts = [s.t for s in samples]
        kv_ax.fill_between(ts, [100 * s.kv_usage for s in samples], color="tab:blue", alpha=0.35)
        kv_ax.plot(ts, [100 * s.kv_usage for s in samples], color="tab:blue", lw=0.8)
        wait_ax.step(ts, [s.waiting for s in samples], where="post", color="tab:red", lw=0.9)
        kept_ax.plot(times, kept, color="tab:green", lw=0.8, marker=".", ms=3)
        for ax in axes[:, column]:
            for r in own:
                if r.phase == "saturation":
                    ax.axvspan(r.start_s, r.end_s, color="0.85", zorder=0, lw=0)
                ax.axvline(r.start_s, color="0.4", ls=":", lw=0.8)
            ax.grid(alpha=0.3)
        saturated = next(r for r in own if r.phase == "saturation")
        kv_ax.set_title(
            f"{name}\nsaturation: {saturated.request_throughput:.1f} req/s, "
            f"TTFT p90 {saturated.ttft_p90_ms / 1000:.2f} s",
            fontsize=9.5,
        )
        for r in own:
            kept_ax.annotate(
                r.phase,
                ((r.start_s + r.end_s) / 2, 0),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color="0.3",
            )
        kept_ax.set_xlabel("seconds since the run began")
    axes[0, 0].set_ylabel("KV cache usage (%)")
    axes[0, 0].set_ylim(0, 105)
    axes[1, 0].set_ylabel("requests waiting")
    axes[2, 0].set_ylabel("visual tokens kept\nper request")
    if unpruned:
        axes[2, 0].set_ylim(-40, unpruned * 1.08)
        axes[2, 0].set_yticks([round(unpruned * k / 4) for k in range(5)])
    fig.suptitle(
        "Low, saturated, low again: the same load unpruned, at the fixed maximum, with auto",
        fontsize=11,
    )
    fig.tight_layout()
    path = out / PLOT_PNG
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.auto_load", description=__doc__.splitlines()[0]
    )
    add_target_args(p)
    load = p.add_argument_group("load")
    load.add_argument("--low-concurrency", type=int, default=1, help="default 1")
    load.add_argument(
        "--low-prompts", type=int, default=24, help="requests per low phase (default 24)"
    )
    load.add_argument("--saturation-concurrency", type=int, default=32, help="default 32")
    load.add_argument(
        "--saturation-prompts", type=int, default=256, help="saturation requests (default 256)"
    )
    load.add_argument("--input-len", type=int, default=32, help="random text tokens (default 32)")
    load.add_argument("--output-len", type=int, default=64, help="generated tokens (default 64)")
    load.add_argument(
        "--image-size",
        type=image_size,
        default=(336, 336),
        help="WxH of every image (default 336x336)",
    )
    load.add_argument(
        "--warmup", type=int, default=8, help="unmeasured requests per setting first (default 8)"
    )
    load.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    load.add_argument("--interval", type=float, default=0.05, help="seconds between gauge scrapes")
    load.add_argument(
        "--counter-interval", type=float, default=0.2, help="seconds between counter scrapes"
    )
    add_local_server_args(p)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument(
        "--plot-only", action="store_true", help="redraw OUT's plot from its summary and raw files"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.plot_only:
        document = json.loads((args.out / SUMMARY_JSON).read_text())
        print(plot(args.out, [Row(**r) for r in document["rows"]]))
        return 0
    from loadtests.sweep import _kv_text

    raw = args.out / "raw"
    shutil.rmtree(raw, ignore_errors=True)  # no file of an earlier run among this one's
    raw.mkdir(parents=True)
    target: AbstractContextManager[LocalServer | None]
    if args.url:
        target = nullcontext(None)
    else:
        target = local_server(
            args.out / "server.log",
            args.serve_model,
            [
                *args.serve_args,
                *serve_args(args.kv_blocks or None, args.block_size, args.max_num_seqs),
            ],
        )
        print(f"starting a local server (log: {args.out / 'server.log'})", flush=True)
    started = time.monotonic()
    with target as server:
        url = args.url.rstrip("/").removesuffix("/v1") if args.url else server.url
        metrics_url = args.metrics_url or f"{url}/metrics"
        kv = _kv_text(metrics_url)
        settings = grid(url)
        print(f"{kv}; settings {', '.join(s.name for s in settings)}", flush=True)
        warm_up(url, args, settings, seed=args.seed + 100 * len(settings))
        runs: list[Run] = []
        unpruned_prompt = None
        for index, setting in enumerate(settings):
            run, unpruned_prompt = run_setting(
                url, metrics_url, args, setting, args.seed + 100 * index, unpruned_prompt
            )
            runs.append(run)
    rows = [r for run in runs for r in run.rows]
    notes = [n for run in runs for n in run.notes]
    none_sat = next(r for r in rows if r.setting == "none" and r.phase == "saturation")
    if none_sat.preemptions == 0 or none_sat.waiting_peak == 0:
        notes.append(
            f"none at saturation: {none_sat.preemptions} preemptions, waiting peak "
            f"{none_sat.waiting_peak}: the KV cache was not saturated (fewer --kv-blocks, "
            "or more --saturation-concurrency)"
        )
    verdicts = targets(rows, settings[1].name)
    text = write_summary(args.out, rows, verdicts, notes, preamble(args, url, kv, settings))
    png = plot(args.out, rows)
    print(text)
    for verdict in verdicts:
        print(verdict.line())
    print(f"plot: {png}; {time.monotonic() - started:.0f} s with the server up", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
