"""Selection time of each pruning method on its own (no model), CPU or GPU.

    .venv/bin/python loadtests/method_speed.py            # CPU, float32
    python loadtests/method_speed.py --device cuda --dtype bfloat16

Times ``method.reduce`` on random features of N x D (N = 576: LLaVA-1.5;
N = 2880: LLaVA-NeXT) at 75% pruning, with torch.utils.benchmark (which
synchronises CUDA), and prints a Markdown table of medians in milliseconds.
What attention- and text-guided methods read (the [CLS] attention row, the
scout pass's attention rows and hidden states, 16 question embeddings) is given,
not timed: the scout pass itself costs K - 1 decoder layers over N + T tokens
plus one layer's queries and keys, which this script does not measure.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils import benchmark

from vllm_prune.methods import Context, get_method, method_names
from vllm_prune.methods.base import TEXT, VISION_ATTENTION

SIZES = (576, 2880)
QUESTION = 16  # question tokens


def grid_for(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    return (side, side) if side * side == n else (n // 48, 48)  # 2880 = 60 x 48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--ratio", type=float, default=0.75)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    print(
        f"| method | needs text | needs vision attention | N = {SIZES[0]} (ms) "
        f"| N = {SIZES[1]} (ms) |"
    )
    print("|---|---|---|---|---|")
    for name in method_names():
        method = get_method(name)
        cells = []
        for n in SIZES:
            features = torch.randn(n, args.dim, device=args.device, dtype=dtype)
            # Synthetic stand-ins for what the model hands attention-based methods.
            rand = torch.rand(n, device=args.device)
            ctx = Context(
                params={p.name: p.default for p in method.params},
                cls_attention=rand.softmax(0),
                vision_keys=torch.randn(n, 64, device=args.device, dtype=dtype),
                text_attention=rand.softmax(0),
                visual_attention=rand.softmax(0),
                visual_hidden=features,
                last_hidden=features[-1],
                text_embeddings=torch.randn(QUESTION, args.dim, device=args.device, dtype=dtype),
                question_attention=torch.rand(QUESTION, n, device=args.device).softmax(-1),
            )
            keep = n if name == "none" else max(1, round(n * (1 - args.ratio)))
            timer = benchmark.Timer(
                stmt="method.reduce(features, grid, keep, ctx)",
                globals={
                    "method": method,
                    "features": features,
                    "grid": grid_for(n),
                    "keep": keep,
                    "ctx": ctx,
                },
            )
            cells.append(f"{timer.blocked_autorange(min_run_time=0.5).median * 1000:.2f}")
        text = "y" if TEXT in method.needs else "n"
        vision = "y" if VISION_ATTENTION in method.needs else "n"
        print(f"| {name} | {text} | {vision} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
