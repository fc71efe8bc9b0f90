"""Visual tokens at each stage, read back from a running server's own metrics.

    .venv/bin/python -m loadtests.token_counts --url http://127.0.0.1:8000 \\
        --model tiny-llava --size 672x672 --size 336x336
    .venv/bin/python -m loadtests.token_counts --model tiny --video 8 --size 224x224 \\
        --methods evs,vidcom2,pooling,random

For each image size and setting (none, then each method at 0.75 and 0.889; default
pooling) it sends one request and prints the deltas of
``vllm_prune_visual_patches_total`` (before any training-aware merging),
``..._visual_tokens_before_total`` (N, what vLLM would use) and
``..._visual_tokens_after_total`` (kept), and the prompt tokens vLLM reports, as a
Markdown table. ``--video F``: one clip of F frames at 4 fps of each size instead
of an image (``loadtests.probe.moving_square_video_data_url``), counted under
``modality="video"``.
"""

from __future__ import annotations

import argparse

import requests
from openai import OpenAI

from loadtests.probe import image_messages, metric, video_messages

RATIOS = (0.75, 0.889)


def settings(methods: list[str]) -> list[tuple[str, dict]]:
    grid = [("none", {"prune": "none"})]
    for method in methods:
        grid += [(f"{method} {r}", {"prune": method, "prune_ratio": r}) for r in RATIOS]
    return grid


COUNTERS = (
    "vllm_prune_visual_patches_total",
    "vllm_prune_visual_tokens_before_total",
    "vllm_prune_visual_tokens_after_total",
)


def counters(url: str, method: str, modality: str) -> list[float]:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return [metric(text, name, method=method, modality=modality) for name in COUNTERS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="tiny-llava")
    parser.add_argument("--size", action="append", default=None, help="WxH, repeatable")
    parser.add_argument("--methods", default="pooling", help="comma-separated (default pooling)")
    parser.add_argument("--video", type=int, default=0, help="frames of a clip instead of an image")
    args = parser.parse_args()
    client = OpenAI(base_url=f"{args.url}/v1", api_key="unused")
    media, modality = ("video", "video") if args.video else ("image", "image")
    print(f"| {media} | setting | patches | tokens N | kept | prompt tokens | total reduction |")
    print("|---|---|---|---|---|---|---|")
    for size in args.size or ["336x336"]:
        width, height = (int(v) for v in size.split("x"))
        for seed, (label, extra) in enumerate(settings(args.methods.split(","))):
            if args.video:
                messages = video_messages(seed=100 + seed, frames=args.video, size=(width, height))
            else:
                messages = image_messages(seed=100 + seed, size=(width, height))
            before = counters(args.url, extra["prune"], modality)
            response = client.chat.completions.create(
                model=args.model, messages=messages, max_tokens=1, extra_body=extra
            )
            after = counters(args.url, extra["prune"], modality)
            patches, tokens, kept = (int(a - b) for a, b in zip(after, before, strict=True))
            print(
                f"| {size} | {label} | {patches} | {tokens} | {kept} | "
                f"{response.usage.prompt_tokens} | {patches / kept:.1f}x |"
            )


if __name__ == "__main__":
    main()
