"""Load sweep: concurrency levels x pruning settings, through ``vllm bench serve``.

    # against any deployment (model: its served name; tokenizer: where the
    # random text's tokenizer loads from, default the model's path on the server)
    python -m loadtests.sweep --url http://host:8000 --model llava-1.5-7b \\
        --concurrency 1,4,16,64 --num-prompts 256 --output-len 128 --out loadtests/results/sweep

    # a local demo server, started and stopped here (what ``make loadtest`` runs)
    python -m loadtests.sweep --concurrency 1,4,16 --out loadtests/results/sweep

For each concurrency level, and for each setting in turn at that level (so that a
shared machine's drift falls on all settings alike), it runs one ``vllm bench
serve`` scenario of image requests while a thread samples the server's
``/metrics``, and writes ``OUT/summary.{md,csv,json}`` and two PNG plots (see
``loadtests/report.py``); each scenario's raw result and console output go to
``OUT/raw/``. Every scenario uses its own seed, so no request finds another
scenario's images in vLLM's caches.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from loadtests.bench import Workload, bench_argv, command_line, run_bench, summarize_result
from loadtests.local_server import (
    LocalServer,
    add_local_server_args,
    add_target_args,
    image_size,
    kv_config,
    local_server,
    serve_args,
)
from loadtests.report import Row, write_report
from loadtests.scrape import Sampler, scrape, summarize
from vllm_prune.eval.cli import settings
from vllm_prune.eval.client import Setting

DEFAULT_OUT = Path("loadtests/results/sweep")


def _ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def _floats(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(image_size(item) for item in text.split(",") if item.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.sweep", description=__doc__.splitlines()[0]
    )
    add_target_args(p)
    load = p.add_argument_group("load")
    load.add_argument(
        "--methods", default="none,pooling", help="comma-separated (default none,pooling)"
    )
    load.add_argument("--ratios", type=_floats, default=[0.75, 0.889], help="default 0.75,0.889")
    load.add_argument(
        "--concurrency", type=_ints, default=[1, 4, 16], help="levels (default 1,4,16)"
    )
    load.add_argument(
        "--num-prompts", type=int, help="requests per scenario (default 4 x concurrency, >= 8)"
    )
    load.add_argument("--input-len", type=int, default=32, help="random text tokens (default 32)")
    load.add_argument("--output-len", type=int, default=64, help="generated tokens (default 64)")
    load.add_argument(
        "--image-sizes",
        type=_sizes,
        default=_sizes("336x336,640x480,1024x768"),
        help="WxH,... one per request, drawn uniformly (default 336x336,640x480,1024x768)",
    )
    load.add_argument("--seed", type=int, default=0, help="first scenario's seed (default 0)")
    load.add_argument("--interval", type=float, default=0.05, help="seconds between scrapes")
    add_local_server_args(p)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    return p


def num_prompts(args: argparse.Namespace, concurrency: int) -> int:
    return args.num_prompts or max(8, 4 * concurrency)


def scenario_row(
    setting: Setting,
    concurrency: int,
    prompts: int,
    bench: dict,
    sampler: Sampler,
    command: str,
) -> Row:
    """One table row from the client's numbers, the sampled gauges and the counter deltas."""
    summary = summarize_result(bench)
    gauges = summarize(sampler.samples)
    counters = sampler.counters
    images = counters["vllm_prune_requests_total"]
    kept = counters["vllm_prune_visual_tokens_after_total"] / images if images else None
    return Row(
        setting=setting.name,
        concurrency=concurrency,
        num_prompts=prompts,
        completed=summary.completed,
        failed=summary.failed,
        duration_s=summary.duration_s,
        request_throughput=summary.request_throughput,
        output_throughput=summary.output_throughput,
        **summary.latencies_ms,
        mean_prompt_tokens=summary.mean_prompt_tokens,
        visual_tokens_kept=kept,
        kv_usage_peak=gauges.kv_usage_peak,
        kv_usage_mean=gauges.kv_usage_mean,
        running_peak=gauges.running_peak,
        waiting_peak=gauges.waiting_peak,
        preemptions=int(counters["vllm:num_preemptions_total"]),
        metrics_samples=gauges.samples,
        failed_scrapes=sampler.failed_scrapes,
        first_error=summary.first_error,
        command=command,
    )


def run_sweep(
    url: str,
    args: argparse.Namespace,
    grid: list[Setting],
    metrics_url: str | None = None,
) -> list[Row]:
    """Every scenario against ``url``, in the order concurrency x settings."""
    workload_of = {
        c: Workload(
            base_url=url,
            model=args.model,
            tokenizer=args.tokenizer,
            num_prompts=num_prompts(args, c),
            input_len=args.input_len,
            output_len=args.output_len,
            image_sizes=args.image_sizes,
        )
        for c in args.concurrency
    }
    metrics_url = metrics_url or f"{url}/metrics"
    raw = args.out / "raw"
    shutil.rmtree(raw, ignore_errors=True)  # no file of an earlier run among this one's
    raw.mkdir(parents=True)
    rows = []
    index = 0
    for concurrency in args.concurrency:
        for setting in grid:
            name = f"{setting.name}-c{concurrency}"
            argv = bench_argv(
                workload_of[concurrency],
                setting.extra_body(),
                concurrency,
                seed=args.seed + index,
                result_file=(raw / f"{name}.json").resolve(),
            )
            index += 1
            print(f"[{name}] {workload_of[concurrency].num_prompts} requests", flush=True)
            csv_path = raw / f"{name}.metrics.csv"
            with Sampler(metrics_url, csv_path, interval=args.interval) as sampler:
                bench = run_bench(argv, raw / f"{name}.log")
            row = scenario_row(
                setting,
                concurrency,
                workload_of[concurrency].num_prompts,
                bench,
                sampler,
                command_line(argv),
            )
            print(
                f"[{name}] {row.completed} ok, {row.failed} failed, "
                f"{row.request_throughput:.2f} req/s, e2e p90 {row.e2el_p90_ms:.0f} ms, "
                f"prompt tokens {row.mean_prompt_tokens:.1f}, KV peak {row.kv_usage_peak:.1%}",
                flush=True,
            )
            rows.append(row)
    return rows


def pruning_warnings(rows: list[Row]) -> list[str]:
    """Pruned settings whose prompts are no shorter than ``none``'s at the same concurrency:
    the server ignored the prune fields (plain vLLM, or the plugin not loaded)."""
    none = {r.concurrency: r.mean_prompt_tokens for r in rows if r.setting == "none"}
    return [
        f"{r.setting} at concurrency {r.concurrency}: {r.mean_prompt_tokens:.1f} prompt tokens "
        f"per request, not fewer than none's {none[r.concurrency]:.1f}: the server did not prune"
        for r in rows
        if r.setting != "none"
        and r.concurrency in none
        and r.mean_prompt_tokens >= none[r.concurrency]
    ]


def preamble(args: argparse.Namespace, url: str, kv: str) -> str:
    sizes = ", ".join(f"{w}x{h}" for w, h in args.image_sizes)
    return (
        f"Server {url} ({kv}). Per request: one image ({sizes}, drawn uniformly), "
        f"{args.input_len} random text tokens, {args.output_len} generated tokens (EOS ignored). "
        "Latencies from `vllm bench serve` (streaming); KV usage, running/waiting from the "
        "server's /metrics; prompt tokens as the server reported them (`usage`); visual "
        "tokens kept per image from the `vllm_prune_*` counters.\n\n"
    )


def _kv_text(metrics_url: str) -> str:
    try:
        kv = kv_config(scrape(metrics_url))
    except (KeyError, OSError) as error:
        return f"KV cache unknown: {error}"
    return f"KV cache {kv.num_blocks} blocks x {kv.block_size} tokens"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    grid = settings([m.strip() for m in args.methods.split(",") if m.strip()], args.ratios)
    target: AbstractContextManager[LocalServer | None]
    if args.url:
        target = nullcontext(None)
    else:
        kv_blocks = args.kv_blocks or None
        target = local_server(
            args.out / "server.log",
            args.serve_model,
            [*args.serve_args, *serve_args(kv_blocks, args.block_size, args.max_num_seqs)],
        )
        print(f"starting a local server (log: {args.out / 'server.log'})", flush=True)
    with target as server:
        url = args.url.rstrip("/").removesuffix("/v1") if args.url else server.url
        metrics_url = args.metrics_url or f"{url}/metrics"
        kv = _kv_text(metrics_url)
        rows = run_sweep(url, args, grid, metrics_url)
    warnings = pruning_warnings(rows)
    notes = "".join(f"**Warning**: {w}\n\n" for w in warnings)
    paths = write_report(rows, args.out, preamble(args, url, kv) + notes)
    print(paths["md"].read_text())
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    failed = sum(r.failed for r in rows)
    if failed:
        print(f"{failed} requests failed; see {args.out / 'raw'}", file=sys.stderr)
    return 1 if failed or warnings else 0


if __name__ == "__main__":
    sys.exit(main())
