"""Prompt tokens, KV cache and time to first token per prune setting, as vLLM reports them.

Against a running server (``make serve``, or any vllm-prune deployment):

    .venv/bin/python -m loadtests.kv_blocks --url http://127.0.0.1:8000 --model tiny-llava

For each setting it sends a fresh image prompt twice and reads
``usage.prompt_tokens``, the KV tokens vLLM computed at prefill
(``vllm:request_prefill_kv_computed_tokens``) and the full KV blocks of the
first request that the second finds in vLLM's prefix cache
(``vllm:prefix_cache_hits``); KV blocks = computed tokens / block size, rounded
up. Time to first token is measured side by side: the settings take turns,
``--rounds`` times, and the table shows the median and its ratio to ``none``.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

from openai import OpenAI

from loadtests.probe import image_messages, measure_kv

SETTINGS = {
    "none": {"prune": "none"},
    "random 0.75": {"prune": "random", "prune_ratio": 0.75},
    "random 0.889": {"prune": "random", "prune_ratio": 0.889},
    "pooling 0.75": {"prune": "pooling", "prune_ratio": 0.75},
    "pooling 0.889": {"prune": "pooling", "prune_ratio": 0.889},
}


def time_to_first_token(client: OpenAI, model: str, extra: dict, seed: int) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=image_messages(seed=seed),
        max_tokens=1,
        stream=True,
        extra_body=extra,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content is not None:
            break
    elapsed = time.perf_counter() - started
    stream.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    client = OpenAI(base_url=f"{args.url}/v1", api_key="unused", max_retries=0)

    reports = {
        label: measure_kv(client, args.url, args.model, extra, seed=10_000 + index)
        for index, (label, extra) in enumerate(SETTINGS.items())
    }

    ttft: dict[str, list[float]] = {label: [] for label in SETTINGS}
    for round_index in range(args.rounds):
        for index, (label, extra) in enumerate(SETTINGS.items()):
            # A new image per request: every prefill runs the vision tower and the LLM.
            seed = 20_000 + round_index * len(SETTINGS) + index
            ttft[label].append(time_to_first_token(client, args.model, extra, seed))
    base = statistics.median(ttft["none"])

    block_size = next(iter(reports.values())).block_size
    print(
        f"| setting | prompt tokens | KV tokens computed | full KV blocks cached "
        f"| KV blocks ({block_size} tokens) | median TTFT (ms) | TTFT vs none |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, report in reports.items():
        median = statistics.median(ttft[label])
        print(
            f"| {label} | {report.prompt_tokens} | {report.computed_tokens} "
            f"| {report.cached_tokens // report.block_size} | {report.blocks} "
            f"| {median * 1000:.1f} | {median / base:.2f} |"
        )


if __name__ == "__main__":
    main()
