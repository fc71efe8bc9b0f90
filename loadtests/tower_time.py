"""Vision-tower time saved by cutting inside it (``flowcut``), pruned vs unpruned, in one run.

    .venv/bin/python loadtests/tower_time.py                       # CLIP-L/336, CPU
    .venv/bin/python loadtests/tower_time.py --query-scale 1 30 100 --keep 64 144

Runs vLLM's own CLIP tower (``vllm.model_executor.models.clip``, as LLaVA-1.5 builds
it: 23 of CLIP-L's 24 layers) on one 336 x 336 image, uncut and cut by FlowCut's
hooks (``integration.in_tower``, what the engine runs), alternating the two so both
see the same machine, and prints a Markdown table of median times and the tokens
each cut left. Weights are random (no model hub here): random queries attend almost
uniformly, and FlowCut cuts early only where the [CLS] attention is concentrated, so
``--query-scale`` sharpens it (the entropy ratio it gave is printed); the last cut,
before the selected layer, always keeps exactly ``keep``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.vllm_tower import build_towers, one_rank  # noqa: E402
from vllm_prune.integration.in_tower import cut_in_tower  # noqa: E402
from vllm_prune.methods import get_method  # noqa: E402

CLIP_L_336 = CLIPVisionConfig(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
)
BUILT = 23  # LLaVA-1.5's feature layer is -2
PATCHES = 576


def timed(
    tower: torch.nn.Module, pixels: torch.Tensor, keep: int | None
) -> tuple[float, list[int]]:
    """Seconds for one forward, and the tokens each layer ran on."""
    layers = tower.vision_model.encoder.layers
    lengths: list[int] = []
    handles = [
        layer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[-2]))
        for layer in layers
    ]
    try:
        with torch.no_grad():
            if keep is None:
                start = time.perf_counter()
                tower(pixels, feature_select_strategy="default")
            else:
                cut = get_method("flowcut").tower_cut(PATCHES, keep, BUILT - 1)
                with cut_in_tower(layers, cut):
                    start = time.perf_counter()
                    tower(pixels, feature_select_strategy="default")
            return time.perf_counter() - start, lengths
    finally:
        for handle in handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=int, nargs="+", default=[64, 144])
    parser.add_argument("--query-scale", type=float, nargs="+", default=[1.0, 30.0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    print("| query scale | keep | tokens after the cuts | uncut (s) | cut (s) | cut / uncut |")
    print("|---|---|---|---|---|---|")
    with one_rank():
        for scale in args.query_scale:
            tower, _ = build_towers(CLIP_L_336, BUILT, seed=0, query_scale=scale)
            timed(tower, pixels, None)  # warm-up
            for keep in args.keep:
                uncut, cut = [], []
                for _ in range(args.runs):
                    uncut.append(timed(tower, pixels, None)[0])
                    seconds, lengths = timed(tower, pixels, keep)
                    cut.append(seconds)
                steps = [n - 1 for i, n in enumerate(lengths) if i == 0 or n != lengths[i - 1]]
                a, b = statistics.median(uncut), statistics.median(cut)
                schedule = " > ".join(map(str, steps))
                print(f"| {scale:g} | {keep} | {schedule} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
            del tower


if __name__ == "__main__":
    main()
