"""Selection time of each pruning method on its own (no model), CPU or GPU.

    .venv/bin/python -m loadtests.method_speed            # CPU, float32
    python -m loadtests.method_speed --device cuda --dtype bfloat16

Times ``method.reduce`` on random features of N x D (N = 576: LLaVA-1.5;
N = 2880: LLaVA-NeXT) at 75% pruning, with torch.utils.benchmark (which
synchronises CUDA), and prints a Markdown table of medians in milliseconds. Beside each
time, in the same run: the method's floor (``loadtests/method_floors.py``: the bytes its
algorithm must move at this machine's copy bandwidth plus its dense products' FLOPs at
this machine's matmul rate, both measured here on the same N x D features) and
time / floor.
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
(``reduce_video`` for temporal methods, ``reduce`` per frame for the others), for
every method that needs nothing of the model (a Qwen tower has no [CLS] row), with the
selection's floor (the frames' floors added up).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils import benchmark

from loadtests.method_floors import FLOORS, Shape, floor_seconds
from vllm_prune.methods import Context, get_method, method_names
from vllm_prune.methods.base import (
    IN_TOWER,
    MODEL_SIGNALS,
    TEXT,
    TOWER_ATTENTION,
    VISION_ATTENTION,
    TowerLayer,
)

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


def median_seconds(stmt: str, scope: dict) -> float:
    return benchmark.Timer(stmt=stmt, globals=scope).blocked_autorange(min_run_time=0.5).median


def copy_bandwidth(n: int, d: int, device: str, dtype: torch.dtype) -> float:
    """This machine's copy bandwidth (bytes/s, read plus write) on ``n x d`` features."""
    x = torch.randn(n, d, device=device, dtype=dtype)
    y = torch.empty_like(x)
    return 2 * x.numel() * x.element_size() / median_seconds("y.copy_(x)", {"x": x, "y": y})


def matmul_rate(n: int, d: int, device: str, dtype: torch.dtype) -> float:
    """This machine's FLOP/s on the ``n x n`` similarity of ``n x d`` features."""
    x = torch.randn(n, d, device=device, dtype=dtype)
    return 2 * n * n * d / median_seconds("x @ x.T", {"x": x})


def machine_rates(n: int, d: int, device: str, dtype: torch.dtype) -> tuple[float, float]:
    return copy_bandwidth(n, d, device, dtype), matmul_rate(n, d, device, dtype)


def ratio_cells(seconds: float, name: str, shape: Shape, rates: tuple[float, float]) -> str:
    """``time | floor | time / floor`` of one method at one size."""
    if name not in FLOORS:
        return f"{seconds * 1000:.2f} | - | -"
    floor = floor_seconds(FLOORS[name](shape), *rates)
    return f"{seconds * 1000:.2f} | {floor * 1000:.2f} | {seconds / floor:.1f}"


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

    rates = {n: machine_rates(n, args.dim, args.device, dtype) for n in SIZES}
    element = torch.empty((), dtype=dtype).element_size()
    for n, (bandwidth, flops) in rates.items():
        print(
            f"N = {n}, D = {args.dim}, {args.dtype}: copy {bandwidth / 1e9:.1f} GB/s, "
            f"matmul {flops / 1e9:.1f} GFLOP/s"
        )
    print()
    header = " | ".join(f"N = {n} (ms) | floor (ms) | time / floor" for n in SIZES)
    print(f"| method | needs text | needs vision attention | {header} |")
    print("|---|---|---|" + "---|---|---|" * len(SIZES))
    for name in method_names():
        method = get_method(name)
        if method.temporal:  # timed on a video (--video)
            continue
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
            seconds = median_seconds(
                stmt,
                {
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
                        torch.randn(n, 1024, device=args.device, dtype=dtype),
                    ),
                    "cut_through_tower": cut_through_tower,
                },
            )
            shape = Shape(n=n, d=args.dim, k=keep, e=element, question=QUESTION)
            cells.append(ratio_cells(seconds, name, shape, rates[n]))
        text = "y" if TEXT in method.needs else "n"
        vision = "y" if method.needs & {VISION_ATTENTION, TOWER_ATTENTION, IN_TOWER} else "n"
        print(f"| {name} | {text} | {vision} | {' | '.join(cells)} |")


CELL_PIXELS = 3 * 14 * 14  # Qwen2-VL: a merged token's pixels, averaged over patches and frames


def video_speed(args: argparse.Namespace, dtype: torch.dtype) -> None:
    t, n = args.frames, args.frame_tokens
    side = math.isqrt(n)
    keep = max(t, round(t * n * (1 - args.ratio)))
    features = torch.randn(t * n, args.dim, device=args.device, dtype=dtype)
    cells = torch.randn(t, n, CELL_PIXELS)
    # The copy bandwidth on the whole video's features, the matmul rate on one frame's.
    rates = (
        copy_bandwidth(t * n, args.dim, args.device, dtype),
        matmul_rate(n, args.dim, args.device, dtype),
    )
    element = torch.empty((), dtype=dtype).element_size()
    print(f"Video: {t} x {n} = {t * n} tokens, keep {keep}, D = {args.dim}.\n")
    print(
        "| method | per-frame counts, API server (ms) | selection, engine (ms) | floor (ms) "
        "| time / floor |"
    )
    print("|---|---|---|---|---|")
    # Every method a video runs without the model's signals (a Qwen tower has no [CLS]).
    for name in [
        m for m in method_names() if m != "none" and not get_method(m).needs & MODEL_SIGNALS
    ]:
        method = get_method(name)
        keeps = method.frame_keeps(cells if method.temporal else None, t, keep)
        scope = {
            "method": method,
            "pixels": cells if method.temporal else None,
            "features": features,
            "ctx": Context(params={p.name: p.default for p in method.params}),
            "t": t,
            "n": n,
            "shape": (side, n // side),
            "keep": keep,
            "keeps": keeps,
        }
        engine = (
            "method.reduce_video(features, (t, *shape), keeps, ctx)"
            if method.temporal
            else "[method.reduce(features[f * n : (f + 1) * n], shape, k, ctx)"
            " for f, k in enumerate(keeps)]"
        )
        counts, selection = (
            median_seconds(stmt, scope) for stmt in ("method.frame_keeps(pixels, t, keep)", engine)
        )
        if method.temporal:
            work = FLOORS[name](Shape(n=t * n, d=args.dim, k=keep, e=element))
        else:  # frame by frame
            frames = [FLOORS[name](Shape(n=n, d=args.dim, k=k, e=element)) for k in keeps]
            work = sum(frames[1:], frames[0])
        floor = floor_seconds(work, *rates)
        print(
            f"| {name} | {counts * 1000:.2f} | {selection * 1000:.2f} | {floor * 1000:.2f} "
            f"| {selection / floor:.1f} |"
        )


if __name__ == "__main__":
    main()
