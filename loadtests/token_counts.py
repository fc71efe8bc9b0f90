"""Visual tokens at each stage, read back from a running server's own metrics.

    .venv/bin/python -m loadtests.token_counts --url http://127.0.0.1:8000 \\
        --model tiny-llava --size 672x672 --size 336x336

For each image size and setting (none, pooling 0.75, pooling 0.889) it sends one
request and prints the deltas of ``vllm_prune_visual_patches_total`` (before any
training-aware merging), ``..._visual_tokens_before_total`` (N, what vLLM would
use) and ``..._visual_tokens_after_total`` (kept), and the prompt tokens vLLM
reports, as a Markdown table.
"""

from __future__ import annotations

import argparse

import requests
from openai import OpenAI

from loadtests.probe import image_messages, metric

SETTINGS = (
    ("none", {"prune": "none"}),
    ("pooling 0.75", {"prune": "pooling", "prune_ratio": 0.75}),
    ("pooling 0.889", {"prune": "pooling", "prune_ratio": 0.889}),
)
COUNTERS = (
    "vllm_prune_visual_patches_total",
    "vllm_prune_visual_tokens_before_total",
    "vllm_prune_visual_tokens_after_total",
)


def counters(url: str, method: str) -> list[float]:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return [metric(text, name, method=method) for name in COUNTERS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--size", action="append", default=None, help="WxH, repeatable")
    args = parser.parse_args()
    client = OpenAI(base_url=f"{args.url}/v1", api_key="unused")
    print("| image | setting | patches | tokens N | kept | prompt tokens | total reduction |")
    print("|---|---|---|---|---|---|---|")
    for size in args.size or ["336x336"]:
        width, height = (int(v) for v in size.split("x"))
        for seed, (label, extra) in enumerate(SETTINGS):
            before = counters(args.url, extra["prune"])
            response = client.chat.completions.create(
                model=args.model,
                messages=image_messages(seed=100 + seed, size=(width, height)),
                max_tokens=1,
                extra_body=extra,
            )
            after = counters(args.url, extra["prune"])
            patches, tokens, kept = (int(a - b) for a, b in zip(after, before, strict=True))
            print(
                f"| {size} | {label} | {patches} | {tokens} | {kept} | "
                f"{response.usage.prompt_tokens} | {patches / kept:.1f}x |"
            )


if __name__ == "__main__":
    main()
