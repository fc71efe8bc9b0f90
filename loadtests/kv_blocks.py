"""Prompt tokens, KV cache and time to first token per prune setting, as vLLM reports them.

Against a running server (``make serve``, or any vllm-prune deployment):

    .venv/bin/python loadtests/kv_blocks.py --url http://127.0.0.1:8000 --model tiny-llava

For each setting it sends one image request and reads ``usage.prompt_tokens``,
the KV tokens vLLM computed at prefill (``vllm:request_prefill_kv_computed_tokens``)
and the KV blocks in use while a long request decodes (``vllm:kv_cache_usage_perc``
x usable blocks). Time to first token is measured side by side: the settings
take turns, ``--rounds`` times, and the table shows the median and its ratio
to ``none``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import requests
from openai import OpenAI

from vllm_prune.client_utils import image_messages, metric, metric_labels

SETTINGS = {
    "none": {"prune": "none"},
    "random 0.75": {"prune": "random", "prune_ratio": 0.75},
    "random 0.889": {"prune": "random", "prune_ratio": 0.889},
    "pooling 0.75": {"prune": "pooling", "prune_ratio": 0.75},
    "pooling 0.889": {"prune": "pooling", "prune_ratio": 0.889},
}


def metrics(url: str) -> str:
    response = requests.get(f"{url}/metrics", timeout=30)
    response.raise_for_status()
    return response.text


def blocks_in_flight(client: OpenAI, url: str, model: str, extra: dict, seed: int) -> int:
    """KV blocks in use right after prefill of one long request (polled gauge)."""
    info = metric_labels(metrics(url), "vllm:cache_config_info")
    usable = int(info["num_gpu_blocks"]) - 1  # vLLM reserves one null block
    stream = client.chat.completions.create(
        model=model, messages=image_messages(seed=seed), max_tokens=1000,
        stream=True, extra_body={**extra, "ignore_eos": True},
    )
    try:
        next(iter(stream))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = metrics(url)
            if metric(text, "vllm:num_requests_running") >= 1:
                return round(metric(text, "vllm:kv_cache_usage_perc") * usable)
            time.sleep(0.02)
        raise RuntimeError("the request never showed up as running")
    finally:
        stream.close()


def time_to_first_token(client: OpenAI, model: str, extra: dict, seed: int) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=image_messages(seed=seed), max_tokens=1, stream=True,
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

    rows = {}
    for index, (label, extra) in enumerate(SETTINGS.items()):
        seed = 10_000 + index  # fresh images: no prefix-cache hit hides computed KV
        before = metric(metrics(args.url), "vllm:request_prefill_kv_computed_tokens_sum")
        response = client.chat.completions.create(
            model=args.model, messages=image_messages(seed=seed), max_tokens=1, extra_body=extra
        )
        computed = metric(metrics(args.url), "vllm:request_prefill_kv_computed_tokens_sum") - before
        blocks = blocks_in_flight(client, args.url, args.model, extra, seed + 100)
        rows[label] = (response.usage.prompt_tokens, int(computed), blocks)

    ttft: dict[str, list[float]] = {label: [] for label in SETTINGS}
    for round_index in range(args.rounds):
        for index, (label, extra) in enumerate(SETTINGS.items()):
            # A new image per request: every prefill runs the vision tower and the LLM.
            seed = 20_000 + round_index * len(SETTINGS) + index
            ttft[label].append(time_to_first_token(client, args.model, extra, seed))
    base = statistics.median(ttft["none"])

    print("| setting | prompt tokens | KV tokens computed (vLLM) | KV blocks in use (vLLM) "
          "| median TTFT (ms) | TTFT vs none |")
    print("|---|---|---|---|---|---|")
    for label, (prompt, computed, blocks) in rows.items():
        median = statistics.median(ttft[label])
        print(f"| {label} | {prompt} | {computed} | {blocks} | {median * 1000:.1f} "
              f"| {median / base:.2f} |")


if __name__ == "__main__":
    main()
