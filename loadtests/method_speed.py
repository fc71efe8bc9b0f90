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
``flowcut`` selects inside the vision tower: its time here is its own arithmetic
over the cuts of a 23-layer tower (LLaVA-1.5's CLIP-L up to layer -2) on synthetic
signals; what the cut saves in the tower is measured by ``loadtests/tower_time.py``.

``--video``: instead, the two sides of pruning one video of ``--frames`` temporal
patches of ``--frame-tokens`` tokens (default 30 x 324: a 60-frame, 504 x 504 clip on
Qwen2.5-VL): the API server's per-frame counts from the pixel cells (C = 588: a cell's
14 x 14 x 3 pixels, averaged over its 2 x 2 patches and 2 frames) and the engine's
selection on the tower's features
(``reduce_video`` for temporal methods, ``reduce`` per frame for the others).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils import benchmark

from vllm_prune.methods import Context, get_method, method_names
from vllm_prune.methods.base import IN_TOWER, TEXT, TOWER_ATTENTION, VISION_ATTENTION, TowerLayer

SIZES = (576, 2880)
QUESTION = 16  # question tokens
TOWER_LAYERS = 23  # CLIP-L's layers up to LLaVA-1.5's feature layer (-2)


def cut_through_tower(method, n: int, keep: int, measured: TowerLayer) -> torch.Tensor:
    """An in-tower method's steps over a whole tower, each layer measuring ``measured``
    (cut to the patches still in it)."""
    cut = method.tower_cut(n, keep, TOWER_LAYERS - 1)
    for layer in range(TOWER_LAYERS):
        m = cut.kept.numel()
        cut.step(layer, TowerLayer(*(field[:m] for field in vars(measured).values())))
    return cut.kept


def grid_for(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    return (side, side) if side * side == n else (n // 48, 48)  # 2880 = 60 x 48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--video", action="store_true", help="time video pruning instead")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--frame-tokens", type=int, default=324)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.video:
        video_speed(args, dtype)
        return

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
                received_attention=rand.softmax(0),
                object_attention=torch.rand(n, device=args.device).softmax(0),
            )
            keep = n if name == "none" else max(1, round(n * (1 - args.ratio)))
            stmt = "method.reduce(features, grid, keep, ctx)"
            if IN_TOWER in method.needs:
                stmt = "cut_through_tower(method, n, keep, measured)"
            timer = benchmark.Timer(
                stmt=stmt,
                globals={
                    "method": method,
                    "features": features,
                    "grid": grid_for(n),
                    "keep": keep,
                    "ctx": ctx,
                    "n": n,
                    "measured": TowerLayer(
                        (rand**4).softmax(0),
                        rand.softmax(0),
                        rand + 1,
                        torch.randn(n, 64, device=args.device, dtype=dtype),
                        torch.randn(n, 1024, device=args.device, dtype=dtype),
                    ),
                    "cut_through_tower": cut_through_tower,
                },
            )
            cells.append(f"{timer.blocked_autorange(min_run_time=0.5).median * 1000:.2f}")
        text = "y" if TEXT in method.needs else "n"
        vision = "y" if method.needs & {VISION_ATTENTION, TOWER_ATTENTION, IN_TOWER} else "n"
        print(f"| {name} | {text} | {vision} | {cells[0]} | {cells[1]} |")


CELL_PIXELS = 3 * 14 * 14  # Qwen2-VL: a merged token's pixels, averaged over patches and frames


def video_speed(args: argparse.Namespace, dtype: torch.dtype) -> None:
    t, n = args.frames, args.frame_tokens
    side = math.isqrt(n)
    keep = max(t, round(t * n * (1 - args.ratio)))
    features = torch.randn(t * n, args.dim, device=args.device, dtype=dtype)
    cells = torch.randn(t, n, CELL_PIXELS)
    print(f"Video: {t} x {n} = {t * n} tokens, keep {keep}, D = {args.dim}.\n")
    print("| method | per-frame counts, API server (ms) | selection, engine (ms) |")
    print("|---|---|---|")
    for name in ("evs", "vidcom2", "pooling", "random", "divprune"):
        method = get_method(name)
        scope = {
            "method": method,
            "pixels": cells if method.temporal else None,
            "features": features,
            "ctx": Context(params={p.name: p.default for p in method.params}),
            "t": t,
            "n": n,
            "shape": (side, n // side),
            "keep": keep,
            "keeps": method.frame_keeps(cells if method.temporal else None, t, keep),
        }
        engine = (
            "method.reduce_video(features, (t, *shape), keeps, ctx)"
            if method.temporal
            else "[method.reduce(features[f * n : (f + 1) * n], shape, k, ctx)"
            " for f, k in enumerate(keeps)]"
        )
        times = [
            benchmark.Timer(stmt=stmt, globals=scope).blocked_autorange(min_run_time=0.5)
            for stmt in ("method.frame_keeps(pixels, t, keep)", engine)
        ]
        print(f"| {name} | {times[0].median * 1000:.2f} | {times[1].median * 1000:.2f} |")


if __name__ == "__main__":
    main()
