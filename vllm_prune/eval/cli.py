"""``vllm-prune eval``: accuracy of pruning settings on benchmarks, through a server.

    vllm-prune eval --url http://127.0.0.1:8000 --benchmark shapes --data DIR \\
        --methods none,random,pooling --ratios 0.75,0.889 --out OUT

asks an OpenAI-compatible server (``vllm-prune serve``, or plain vLLM for ``none``)
every question of each benchmark under each setting (``none`` once, every other method
at every ratio), writes the answers to ``OUT/predictions/<benchmark>/<setting>.jsonl``
and the summary to ``OUT/summary.{md,csv,png}`` (see vllm_prune.eval.report). A rerun
with the same OUT asks only for what is not answered yet.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

import datasets

from vllm_prune.eval.benchmarks import (
    BENCHMARKS,
    BenchmarkFormatError,
    Sample,
    get_benchmark,
    load_benchmark,
)
from vllm_prune.eval.client import (
    EndpointError,
    Setting,
    make_client,
    prune_methods,
    served_models,
)
from vllm_prune.eval.predictions import PredictionFileError
from vllm_prune.eval.report import NONE, SUMMARY_MD, Results, write_report
from vllm_prune.eval.runner import (
    OK,
    Job,
    RunConfigError,
    SettingResult,
    check_run_config,
    predictions_path,
    run_setting,
)

DEFAULT_SHAPES_IMAGES = 100


class UsageError(ValueError):
    """A command line that cannot run; the message says why."""


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _ratios(text: str) -> list[float]:
    ratios = []
    for item in _list(text):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {item!r}") from None
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"a ratio is in [0, 1), got {value}")
        ratios.append(value)
    return ratios


def _value(text: str) -> Any:
    """``true``/``false``, an int, a float, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def benchmark_options(items: list[str], benchmarks: list[str]) -> dict[str, dict[str, Any]]:
    """``[BENCHMARK:]KEY=VALUE`` items as options per benchmark (no prefix: every one)."""
    options: dict[str, dict[str, Any]] = {name: {} for name in benchmarks}
    for item in items:
        target, _, pair = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--benchmark-option {item!r}: expected [BENCHMARK:]KEY=VALUE")
        if target and target not in options:
            raise UsageError(f"--benchmark-option {item!r}: {target!r} is not a --benchmark")
        for name in [target] if target else benchmarks:
            options[name][key] = _option(name, key, value)
    return options


def _option(benchmark: str, key: str, text: str) -> Any:
    """The loader's keyword ``key`` from text: a list (comma-separated) where the loader
    takes a sequence (``pope:categories=adversarial,popular``), else one value."""
    parameters = inspect.signature(get_benchmark(benchmark).load).parameters
    names = [name for name in parameters if name != "root"]
    if key not in names:
        raise UsageError(f"{benchmark} has no option {key!r}; it has {names}")
    annotation = str(parameters[key].annotation)  # a string: postponed annotations
    if "Sequence" in annotation or "list" in annotation:
        return [_value(item) for item in _list(text)]
    return _value(text)


def settings(methods: list[str], ratios: list[float]) -> list[Setting]:
    """``none`` once (no ratio), every other method at every ratio, in the order given."""
    grid: list[Setting] = []
    for method in dict.fromkeys(methods):
        if method == NONE:
            grid.append(Setting(NONE))
        elif not ratios:
            raise UsageError(f"method {method!r} needs --ratios")
        else:
            grid.extend(Setting(method, ratio) for ratio in dict.fromkeys(ratios))
    return grid


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-prune eval",
        description="Accuracy of pruning settings on benchmarks, through an "
        "OpenAI-compatible server. Resumable: a rerun with the same --out asks only for "
        "samples not answered yet.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server (with or without /v1)")
    p.add_argument("--model", help="served model name (default: the server's only model)")
    p.add_argument("--api-key", default="unused", help="sent as a bearer token")
    p.add_argument(
        "--benchmark",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"benchmark to run; repeat for several, each with its --data ({', '.join(BENCHMARKS)})",
    )
    p.add_argument(
        "--data",
        action="append",
        type=Path,
        metavar="DIR",
        help="local copy of the benchmark (layouts: vllm_prune.eval.benchmarks); one per "
        "--benchmark, in the same order",
    )
    p.add_argument(
        "--benchmark-option",
        action="append",
        default=[],
        metavar="[BENCHMARK:]KEY=VALUE",
        help="loader option, e.g. pope:categories=adversarial,popular mmbench:circular=true "
        "split=test (no BENCHMARK: every --benchmark)",
    )
    p.add_argument(
        "--methods",
        type=_list,
        default=[NONE, "random", "pooling"],
        help="comma-separated methods; 'none' runs once (default: none,random,pooling)",
    )
    p.add_argument(
        "--ratios",
        type=_ratios,
        default=[0.75, 0.889],
        help="comma-separated prune ratios for every method but none (default: 0.75,0.889)",
    )
    p.add_argument("--limit", type=int, help="first N samples of each benchmark only")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--max-tokens", type=int, default=16, help="answer length (default 16)")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed connection")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--shapes-images",
        type=int,
        default=DEFAULT_SHAPES_IMAGES,
        help="shapes only: images to generate (4 questions each) when --data is missing "
        f"or empty (default {DEFAULT_SHAPES_IMAGES})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the summary from OUT/results.json without asking a server",
    )
    return p


def load_samples(
    name: str, root: Path, options: dict[str, Any], limit: int | None, shapes_images: int
) -> list[Sample]:
    if name == "shapes" and (not root.exists() or not any(root.iterdir())):
        from vllm_prune.eval.shapes import write_split

        split = str(options.get("split", "test"))
        print(f"shapes: writing {shapes_images} {split} images to {root}", file=sys.stderr)
        write_split(root, split, shapes_images)
    samples = load_benchmark(name, root, **options)
    return samples if limit is None else samples[:limit]


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    results = Results.load(out)
    if args.report_only:
        if not results.by_benchmark:
            raise UsageError(f"{out}: no results.json to report")
        write_report(out, results)
        print((out / SUMMARY_MD).read_text(encoding="utf-8"))
        return 0
    benchmarks: list[str] = args.benchmark or []
    roots: list[Path] = args.data or []
    if not benchmarks:
        raise UsageError("--benchmark is required (or --report-only)")
    if len(roots) != len(benchmarks):
        raise UsageError(f"{len(benchmarks)} --benchmark but {len(roots)} --data: one each")
    if args.concurrency < 1 or args.max_tokens < 1 or (args.limit is not None and args.limit < 1):
        raise UsageError("--concurrency, --max-tokens and --limit must be at least 1")
    options = benchmark_options(args.benchmark_option, benchmarks)
    datasets.disable_progress_bars()  # the loaders' "Generating split" bars are noise here
    grid = settings(args.methods, args.ratios)

    client = make_client(args.url, args.api_key, args.retries, args.timeout)
    model = _model(served_models(client), args.model, args.url)
    _warn_unknown_methods(prune_methods(client), grid)
    results.model = model
    job = Job(client, model, args.max_tokens, args.concurrency, progress=not args.no_progress)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, root in zip(benchmarks, roots, strict=True):
            samples = load_samples(name, root, options[name], args.limit, args.shapes_images)
            if not samples:
                raise UsageError(f"{name}: no samples in {root}")
            config = {"model": model, "max_tokens": args.max_tokens, "options": options[name]}
            check_run_config(out / "predictions" / name, config)
            for setting in grid:
                path = predictions_path(out, name, setting)
                result = run_setting(job, name, samples, setting, path)
                results.update([result])
                results.save(out)
                print(_line(result, path), file=sys.stderr)
            _check_pruned(results, name, grid)
            results.save(out)
    finally:
        if results.by_benchmark:
            write_report(out, results)
    print((out / SUMMARY_MD).read_text(encoding="utf-8"))
    return 0


def _model(served: list[str], asked: str | None, url: str) -> str:
    if asked is not None:
        if asked not in served:
            raise UsageError(f"{url} does not serve {asked!r}; it serves {served}")
        return asked
    if len(served) != 1:
        raise UsageError(f"{url} serves {served}: choose one with --model")
    return served[0]


def _warn_unknown_methods(known: list[str] | None, grid: list[Setting]) -> None:
    asked = sorted({s.method for s in grid if s.method != NONE})
    if known is None and asked:
        print(
            "warning: the server has no /v1/prune/methods (plain vLLM?): it may ignore the "
            f"prune fields of {asked}; the summary's prompt tokens show whether it pruned",
            file=sys.stderr,
        )
    elif known is not None and (unknown := [m for m in asked if m not in known]):
        print(f"warning: the server lists no method {unknown}; expect refusals", file=sys.stderr)


def _check_pruned(results: Results, benchmark: str, grid: list[Setting]) -> None:
    """Flag a pruned setting whose prompts are no shorter than ``none``'s (plain vLLM
    ignores the prune fields): a warning, and a note in the summary."""
    base = results.get(benchmark, Setting(NONE))
    if base is None or base.status != OK or base.mean_prompt_tokens is None:
        return
    for setting in grid:
        result = results.get(benchmark, setting)
        if (
            setting.ratio is not None
            and setting.ratio >= 0.05
            and result is not None
            and result.status == OK
            and result.mean_prompt_tokens is not None
            and result.mean_prompt_tokens >= base.mean_prompt_tokens
        ):
            result.message = (
                f"prompts are not shorter than none's ({result.mean_prompt_tokens:.1f} vs "
                f"{base.mean_prompt_tokens:.1f} tokens): the server did not prune"
            )
            print(f"warning: {benchmark} {setting.name}: {result.message}", file=sys.stderr)


def _line(result: SettingResult, path: Path) -> str:
    head = f"{result.benchmark} {result.setting.name}:"
    if result.status != OK:
        return f"{head} {result.status}: {result.message}"
    main = ", ".join(f"{k}={v:.4f}" for k, v in result.scores.items() if "/" not in k)
    extra = f", {result.errors} refused" if result.errors else ""
    return f"{head} {main} ({result.samples} samples, {result.asked} asked now{extra}) -> {path}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, RunConfigError, PredictionFileError, EndpointError) as error:
        print(f"vllm-prune eval: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, BenchmarkFormatError) as error:  # benchmark files
        print(f"vllm-prune eval: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nvllm-prune eval: interrupted; answers so far are saved: rerun the same command "
            "to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
