"""Concurrent image (or video) requests that fit a fixed KV cache, per pruning setting.

    python -m loadtests.kv_capacity --kv-blocks 400 --output-len 124 \\
        --out loadtests/results/kv_capacity          # what ``make loadtest-kv`` runs
    python -m loadtests.kv_capacity --tiny qwen2.5-vl --video-frames 8 ...
                                                     # ``make loadtest-kv-video``

With ``--video-frames F`` every request carries one video of F frames instead of
an image (vLLM's random-mm dataset makes it), on a model that takes videos:
``--serve-model``, or ``--tiny qwen2.5-vl`` / ``qwen3-vl`` (the test fixtures,
built into ``--out``).

It starts a local ``vllm-prune serve`` (the demo model unless ``--serve-model``)
whose KV cache is fixed at ``--kv-blocks`` blocks (``--num-gpu-blocks-override``;
the block count it got is read back from ``vllm:cache_config_info``) and
``--max-num-seqs`` high, so that KV is the only limit. For each setting it
looks for the capacity: the largest n such that n image requests sent at once
(``vllm bench serve``, no concurrency cap, ``--output-len`` tokens each, EOS
ignored) are all run in one engine step and finish without a preemption. The
scheduler is held while the burst arrives and released when all n are queued
(``loadtests/hold.py``): sent at once, image requests still reach the engine
one by one, and on the CPU demo the first would be done before the last
arrived. The steps come from the server's own iteration log
(``--enable-logging-iteration-details``, ``loadtests/engine_log.py``), the
preemptions from ``vllm:num_preemptions_total``: both exact, nothing sampled.
The search doubles n until a burst does not fit, then bisects.

Why not "the most requests running while others wait" in one flood: vLLM 0.32
admits a waiting request when its whole prompt fits the free blocks, but
allocates only the chunk it prefills in that step, and no room for its output.
The next request's check sees the free blocks less the chunks, not less the
whole prompts, so a flood overshoots (199 blocks of 32 tokens: 21 unpruned
requests of 612 prompt tokens were running at once where 9 prompts fit) and
then preempts as requests grow; that peak measures the scheduler, not the KV
cache.

Ideal: each request holds P + O - 1 tokens at its last step (the last
generated token never enters the KV cache), P = V + t (V visual tokens kept, t
text tokens), so T = t + O - 1 and the ideal ratio to ``none`` is
(576 + T) / (V + T) for LLaVA-1.5; in blocks, floor(U / ceil((V + T) / B)) with
U usable blocks (vLLM keeps one aside) of B tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtests.bench import Workload, bench_argv, command_line, run_bench, summarize_result
from loadtests.engine_log import LogTail, parse_iterations
from loadtests.hold import run_held
from loadtests.local_server import (
    DEFAULT_BLOCK_SIZE,
    TINY,
    KvConfig,
    build_tiny,
    kv_config,
    local_server,
    serve_args,
)
from loadtests.scrape import counter_deltas, parse_counters, scrape
from vllm_prune.eval.cli import settings
from vllm_prune.eval.client import Setting

DEFAULT_OUT = Path("loadtests/results/kv_capacity")
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
CAPACITY_PNG = "kv_capacity.png"
LOG_SETTLE_S = 0.5  # the API server logs a step when it has handled the step's outputs


@dataclass(frozen=True)
class Probe:
    """n requests released at once, and what the server did with them."""

    setting: str
    n: int
    completed: int
    failed: int
    preemptions: int  # vllm:num_preemptions_total delta
    scheduled_peak: int  # most requests run in one engine step (the iteration log)
    kv_usage_peak: float  # after any step (the iteration log)
    steps: int  # engine steps logged
    mean_prompt_tokens: float
    visual_tokens_kept: float | None  # per image (or video), from the vllm_prune counters

    @property
    def fits(self) -> bool:
        """All n were in one engine step and ran to the end, none preempted for want of KV.

        A request refused for want of KV waits, unpreempted, until another ends, so it
        never shares a step with all the others; a running one that cannot grow is
        preempted. Either way the burst does not fit.
        """
        return (
            self.completed == self.n
            and self.failed == 0
            and self.preemptions == 0
            and self.scheduled_peak >= self.n
        )


def largest_fitting(fits: Callable[[int], bool], limit: int) -> int:
    """The largest n in [1, limit] with ``fits(n)`` (0 if none), for a monotone ``fits``:
    double n from 1 until it does not fit, then bisect between the last two."""
    good, n = 0, 1
    while n <= limit and fits(n):
        good, n = n, 2 * n
    bad = min(n, limit + 1)
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def kv_tokens_per_request(prompt_tokens: float, output_len: int) -> float:
    """Tokens a request holds in KV at its last step: the last generated token never enters."""
    return prompt_tokens + output_len - 1


def ideal_capacity(kv: KvConfig, tokens_per_request: float) -> tuple[float, int]:
    """(in tokens: usable KV tokens / tokens per request; in whole blocks per request)."""
    blocks_per_request = math.ceil(tokens_per_request / kv.block_size)
    return (
        kv.usable_blocks * kv.block_size / tokens_per_request,
        kv.usable_blocks // blocks_per_request,
    )


@dataclass(frozen=True)
class Capacity:
    setting: str
    capacity: int  # measured
    prompt_tokens: float  # per request, as the server reported it
    visual_tokens: float | None  # kept per image (or video)
    kv_tokens_per_request: float
    ideal_tokens: float
    ideal_blocks: int
    probes: int


def probe(
    url: str, log: LogTail, setting: Setting, workload: Workload, seed: int, out: Path
) -> tuple[Probe, str | None]:
    """Send ``workload.num_prompts`` requests at once, released to the scheduler together;
    the probe and the first error."""
    n = workload.num_prompts
    name = f"{setting.name}-n{n}-s{seed}"
    argv = bench_argv(workload, setting.extra_body(), None, seed, (out / f"{name}.json").resolve())
    (out / f"{name}.cmd").write_text(command_line(argv) + "\n")
    before = parse_counters(scrape(f"{url}/metrics"))
    log.start()
    raw = run_held(url, n, lambda: run_bench(argv, out / f"{name}.log"))
    time.sleep(LOG_SETTLE_S)
    steps = parse_iterations(log.read())
    counters = counter_deltas(before, parse_counters(scrape(f"{url}/metrics")))
    result = summarize_result(raw)
    images = counters["vllm_prune_requests_total"]
    kept = counters["vllm_prune_visual_tokens_after_total"] / images if images else None
    return Probe(
        setting=setting.name,
        n=n,
        completed=result.completed,
        failed=result.failed,
        preemptions=int(counters["vllm:num_preemptions_total"]),
        scheduled_peak=max((i.scheduled for i in steps), default=0),
        kv_usage_peak=max((i.kv_usage for i in steps), default=0.0),
        steps=len(steps),
        mean_prompt_tokens=result.mean_prompt_tokens,
        visual_tokens_kept=kept,
    ), result.first_error


def measure(
    url: str,
    log: LogTail,
    setting: Setting,
    workload_of: Callable[[int], Workload],
    limit: int,
    out: Path,
    seed: int,
) -> tuple[int, list[Probe]]:
    """Search the capacity of one setting; every probe is kept (and its files under ``out``)."""
    probes: list[Probe] = []

    def fits(n: int) -> bool:
        found, error = probe(url, log, setting, workload_of(n), seed + len(probes), out)
        probes.append(found)
        print(
            f"[{setting.name}] n={n}: {'fits' if found.fits else 'does not fit'} "
            f"(most in one step {found.scheduled_peak}, preemptions {found.preemptions}, "
            f"KV peak {found.kv_usage_peak:.1%}, {found.failed} failed)",
            flush=True,
        )
        if error:
            print(f"[{setting.name}] first error: {error}", flush=True)
        return found.fits

    return largest_fitting(fits, limit), probes


def capacity_row(
    setting: str, capacity: int, probes: list[Probe], kv: KvConfig, output_len: int
) -> Capacity:
    prompt = probes[0].mean_prompt_tokens
    tokens = kv_tokens_per_request(prompt, output_len)
    ideal_tokens, ideal_blocks = ideal_capacity(kv, tokens)
    return Capacity(
        setting=setting,
        capacity=capacity,
        prompt_tokens=prompt,
        visual_tokens=probes[0].visual_tokens_kept,
        kv_tokens_per_request=tokens,
        ideal_tokens=ideal_tokens,
        ideal_blocks=ideal_blocks,
        probes=len(probes),
    )


def markdown(rows: list[Capacity], kv: KvConfig, output_len: int, media: str = "image") -> str:
    base = next((r for r in rows if r.setting == "none"), rows[0])
    lines = [
        f"KV cache: {kv.num_blocks} blocks x {kv.block_size} tokens "
        f"({kv.usable_blocks} usable = {kv.usable_blocks * kv.block_size} tokens). "
        f"Each request: one {media}, {output_len} generated tokens (EOS ignored). "
        f"Capacity: the most requests sent at once that all run in one engine step and "
        f"finish without preemption. T = KV tokens per request - visual tokens.\n",
        f"| setting | visual tokens | prompt tokens | T | KV tokens / request "
        f"| KV blocks / request | capacity (measured) | ideal (tokens) | ideal (blocks) "
        f"| measured vs {base.setting} | ideal vs {base.setting} (tokens) "
        f"| ideal vs {base.setting} (blocks) |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        visual = r.visual_tokens if r.visual_tokens is not None else float("nan")
        text = r.kv_tokens_per_request - visual
        blocks = math.ceil(r.kv_tokens_per_request / kv.block_size)
        measured = r.capacity / base.capacity if base.capacity else float("nan")
        lines.append(
            f"| {r.setting} | {visual:.0f} | {r.prompt_tokens:.0f} | {text:.0f} "
            f"| {r.kv_tokens_per_request:.0f} | {blocks} | {r.capacity} | {r.ideal_tokens:.1f} "
            f"| {r.ideal_blocks} | {measured:.2f}x | {r.ideal_tokens / base.ideal_tokens:.2f}x "
            f"| {r.ideal_blocks / base.ideal_blocks:.2f}x |"
        )
    return "\n".join(lines) + f"\n\n![capacity]({CAPACITY_PNG})\n"


def plot(rows: list[Capacity], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = range(len(rows))
    width = 0.27
    bars = (
        ("measured", [r.capacity for r in rows], -width),
        ("ideal (tokens)", [r.ideal_tokens for r in rows], 0.0),
        ("ideal (blocks)", [r.ideal_blocks for r in rows], width),
    )
    for label, values, offset in bars:
        drawn = ax.bar([i + offset for i in x], values, width, label=label)
        ax.bar_label(drawn, fmt="%.0f", fontsize=8)
    ax.set_xticks(list(x), [r.setting for r in rows], rotation=20 if len(rows) > 4 else 0)
    ax.set_ylabel("concurrent requests")
    ax.set_title("Requests that fit the KV cache at once")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.kv_capacity", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--methods", default="none,pooling", help="comma-separated (default none,pooling)"
    )
    p.add_argument(
        "--ratios",
        type=lambda text: [float(x) for x in text.split(",") if x.strip()],
        default=[0.75, 0.889],
        help="default 0.75,0.889",
    )
    p.add_argument("--kv-blocks", type=int, default=400, help="KV blocks (default 400)")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    p.add_argument("--max-num-seqs", type=int, default=512)
    p.add_argument(
        "--max-model-len", type=int, help="default the model's; (blocks - 1) x block size at most"
    )
    p.add_argument("--input-len", type=int, default=32, help="random text tokens (default 32)")
    # 124: every default setting's last KV block is well filled (612 + 123 = 23 x 32 - 1,
    # 180 + 123 = 9 x 32 + 15, 100 + 123 = 7 x 32 - 1), so requests a few decode steps
    # apart (admitted in successive steps) need the same number of blocks.
    p.add_argument("--output-len", type=int, default=124, help="generated tokens (default 124)")
    p.add_argument("--image-size", default="336x336", help="WxH of every image (default 336x336)")
    p.add_argument(
        "--video-frames",
        type=int,
        default=1,
        help="1: one image per request (default); F > 1: one video of F frames of --image-size",
    )
    p.add_argument(
        "--tiny",
        choices=sorted(TINY),
        help="serve this tiny fixture (seeded random weights, built under --out)",
    )
    p.add_argument("--limit", type=int, default=256, help="largest n tried (default 256)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--serve-model", help="model path (default: vllm-prune serve's demo)")
    p.add_argument(
        "--serve-args",
        type=shlex.split,
        default=[],
        help='more vllm serve options, e.g. --serve-args="--dtype float32 --enforce-eager"',
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    grid = settings([m.strip() for m in args.methods.split(",") if m.strip()], args.ratios)
    width, _, height = args.image_size.lower().partition("x")
    raw = args.out / "raw"
    shutil.rmtree(raw, ignore_errors=True)  # no file of an earlier run among this one's
    raw.mkdir(parents=True)
    model = args.serve_model
    if args.tiny is not None:
        model = str(build_tiny(args.tiny, args.out / "model"))
    # The KV options last: they win over the same options in --serve-args.
    server_args = [
        *args.serve_args,
        *serve_args(args.kv_blocks, args.block_size, args.max_num_seqs, args.max_model_len),
        "--enable-logging-iteration-details",  # every engine step in server.log
    ]
    print(f"starting a local server (log: {args.out / 'server.log'})", flush=True)
    # VLLM_SERVER_DEV_MODE: vLLM's /pause and /resume, to release each burst at once.
    dev = {"VLLM_SERVER_DEV_MODE": "1"}
    with local_server(args.out / "server.log", model, server_args, dev) as server:
        kv = kv_config(scrape(f"{server.url}/metrics"))
        log = LogTail(server.log)
        print(f"KV cache: {kv.num_blocks} blocks x {kv.block_size} tokens", flush=True)

        def workload_of(n: int) -> Workload:
            return Workload(
                base_url=server.url,
                model=None,
                tokenizer=None,
                num_prompts=n,
                input_len=args.input_len,
                output_len=args.output_len,
                image_sizes=((int(width), int(height)),),
                frames=args.video_frames,
            )

        rows, probes = [], []
        for index, setting in enumerate(grid):
            capacity, tried = measure(
                server.url,
                log,
                setting,
                workload_of,
                args.limit,
                raw,
                seed=args.seed + 1000 * index,
            )
            probes += tried
            rows.append(capacity_row(setting.name, capacity, tried, kv, args.output_len))
    media = "image" if args.video_frames == 1 else f"video of {args.video_frames} frames"
    text = markdown(rows, kv, args.output_len, media)
    (args.out / SUMMARY_MD).write_text(text)
    (args.out / SUMMARY_JSON).write_text(
        json.dumps(
            {
                "kv": asdict(kv),
                "output_len": args.output_len,
                "capacities": [asdict(r) for r in rows],
                "probes": [asdict(p) | {"fits": p.fits} for p in probes],
            },
            indent=2,
        )
        + "\n"
    )
    plot(rows, args.out / CAPACITY_PNG)
    print(text)
    return 0 if all(r.capacity > 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
