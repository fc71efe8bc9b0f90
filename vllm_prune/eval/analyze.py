"""``vllm-prune analyze``: which visual tokens a method keeps (the paper's Figures 2 and 3).

    vllm-prune analyze positions --benchmark shapes --data DIR --methods random,pooling,dart
    vllm-prune analyze overlay --image cat.png --methods random,pooling,divprune --ratio 0.75

The server does not return the retained indices, so they are computed here, offline,
with the method classes themselves (``get_method(name).reduce``) on the image's
LLaVA-1.5 token grid (336 px, 14 px patches: 24 x 24 = 576 tokens). Only methods that
need no model signal can be computed this way; the others (FastV family, balanced,
sparsevlm, cdprune: the LLM's attention or text; cls_attention, visionzip: the vision
tower's [CLS] attention) are refused rather than faked. Of the computable ones:

- ``random`` and ``pooling`` do not look at the features: their positions are exactly the
  server's for any image of that grid (``random`` with the request's ``prune_seed``, 0
  by default: the same positions for every image; ``--seed-per-image`` draws with seed =
  the image's index instead, as a per-request seed would). ``pooling`` keeps cell means;
  each is drawn at its cell's centre token (``Reduced.indices``).
- ``divprune`` and ``dart`` depend on the features. The server feeds them the model's
  projector output; here they get each patch's normalised pixels (CLIP mean and std,
  588 values per 14 x 14 patch), so their positions show how the algorithm spreads its
  picks over an image, not exactly what a given model keeps. Plots mark them "pixels".
- ``none`` keeps everything (a flat reference).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vllm_prune.eval.sample import image_bytes
from vllm_prune.methods import Context, get_method, method_names

IMAGE_SIZE, PATCH = 336, 14  # LLaVA-1.5: CLIP ViT-L/14 at 336 px
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
EXACT = ("none", "random", "pooling")  # positions independent of the features
APPROXIMATE = ("divprune", "dart")  # positions from pixel features, not the model's
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class AnalyzeError(ValueError):
    """A request this command cannot honour; the message says why."""


def computable(method: str) -> None:
    """Refuse methods whose selection needs a model signal the server does not expose."""
    if method not in method_names():
        raise AnalyzeError(f"unknown method {method!r}; allowed: {', '.join(EXACT + APPROXIMATE)}")
    needs = get_method(method).needs
    if needs:
        raise AnalyzeError(
            f"{method} selects from model signals ({', '.join(sorted(needs))}) that the server "
            "does not return, so its positions cannot be computed offline; computable: "
            f"{', '.join(EXACT + APPROXIMATE)}"
        )


def label(method: str) -> str:
    return f"{method} (pixels)" if method in APPROXIMATE else method


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """CLIP's preprocessing for LLaVA-1.5: shortest side to ``size`` (bicubic), centre crop."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def patch_features(image: Image.Image, patch: int = PATCH) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised pixels of each patch, raster order: ``[h * w, 3 * patch * patch]``, grid."""
    pixels = (np.asarray(image, dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    h, w = pixels.shape[0] // patch, pixels.shape[1] // patch
    pixels = pixels[: h * patch, : w * patch]
    rows = pixels.reshape(h, patch, w, patch, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, -1)
    return torch.from_numpy(np.ascontiguousarray(rows)), (h, w)


def keep_count(tokens: int, ratio: float) -> int:
    """The server's count: ``max(1, round(N * (1 - ratio)))``."""
    return max(1, round(tokens * (1.0 - ratio)))


def retained(method: str, image: Image.Image, ratio: float, seed: int | None = None) -> np.ndarray:
    """Raster indices the method keeps for ``image`` (already preprocessed)."""
    features, grid = patch_features(image)
    chosen = get_method(method)
    params: dict[str, int | float] = {p.name: p.default for p in chosen.params}
    if seed is not None and "prune_seed" in params:
        params["prune_seed"] = seed
    keep = features.shape[0] if method == "none" else keep_count(features.shape[0], ratio)
    reduced = chosen.reduce(features, grid, keep, Context(params=params))
    return reduced.indices.numpy()


# -- inputs -----------------------------------------------------------------------------


def image_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise AnalyzeError(f"{path}: no such file or folder")
    if not files:
        raise AnalyzeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {list(map(str, paths))}")
    return files


def benchmark_images(args: argparse.Namespace) -> Iterator[Image.Image]:
    """Each distinct image of the benchmark's samples (``--limit`` images at most)."""
    from vllm_prune.eval.cli import benchmark_options, load_samples

    options = benchmark_options(args.benchmark_option, [args.benchmark])[args.benchmark]
    samples = load_samples(args.benchmark, args.data, options, None, args.shapes_images)
    seen: set[object] = set()
    for sample in samples:
        for ref in sample.images:
            key = ref if isinstance(ref, Path) else hash(ref)
            if key in seen:
                continue
            seen.add(key)
            if args.limit is not None and len(seen) > args.limit:
                return
            yield _open(image_bytes(ref))


def _open(data: bytes) -> Image.Image:
    import io

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def input_images(args: argparse.Namespace) -> Iterator[Image.Image]:
    if args.images:
        files = image_files(args.images)
        for path in files[: args.limit]:
            yield _open(path.read_bytes())
    elif args.benchmark:
        yield from benchmark_images(args)
    else:
        raise AnalyzeError("give --images PATH... or --benchmark NAME --data DIR")


# -- positions (Figure 2) ---------------------------------------------------------------


@dataclass
class Positions:
    """How often each raster position was kept, per method, over ``images`` images."""

    counts: dict[str, np.ndarray]  # method -> [N]
    grid: tuple[int, int]
    images: int
    keep: int


def count_positions(
    images: Iterator[Image.Image], methods: Sequence[str], ratio: float, seed_per_image: bool
) -> Positions:
    counts: dict[str, np.ndarray] = {}
    grid = (IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
    total = 0
    for index, image in enumerate(images):
        prepared = preprocess(image)
        for method in methods:
            kept = retained(method, prepared, ratio, seed=index if seed_per_image else None)
            counts.setdefault(method, np.zeros(grid[0] * grid[1], dtype=np.int64))
            counts[method][kept] += 1
        total += 1
    if not total:
        raise AnalyzeError("no images to analyse")
    return Positions(counts, grid, total, keep_count(grid[0] * grid[1], ratio))


def plot_positions(result: Positions, ratio: float, bins: int, path: Path) -> Path:
    """Top: share of images keeping each position, binned along the raster order (paper
    Fig. 2: larger index = lower in the image). Bottom: the same per grid cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result.counts)
    tokens = result.grid[0] * result.grid[1]
    figure = plt.figure(figsize=(max(8, 2.6 * len(methods)), 7.5))
    top = figure.add_subplot(2, 1, 1)
    edges = np.linspace(0, tokens, bins + 1)
    for method in methods:
        share = result.counts[method] / result.images
        binned = [share[int(a) : int(b)].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
        top.step(edges[:-1], binned, where="post", label=label(method))
    top.axhline(result.keep / tokens, color="grey", linestyle="--", linewidth=1, label="uniform")
    top.set_xlim(0, tokens)
    top.set_ylim(0, 1.05)
    top.set_xlabel("visual token index (raster order: larger = lower in the image)")
    top.set_ylabel("share of images keeping it")
    top.set_title(
        f"Retained positions over {result.images} images, ratio {ratio:g} "
        f"(keep {result.keep} of {tokens})"
    )
    top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for i, method in enumerate(methods):
        axis = figure.add_subplot(2, len(methods), len(methods) + i + 1)
        share = (result.counts[method] / result.images).reshape(result.grid)
        shown = axis.imshow(share, vmin=0, vmax=1, cmap="viridis")
        axis.set_title(label(method), fontsize="small")
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(shown, ax=figure.axes[1:], fraction=0.03, label="share kept")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


# -- overlay (Figure 3) -----------------------------------------------------------------


def overlay(image: Image.Image, kept: np.ndarray, grid: tuple[int, int]) -> Image.Image:
    """Kept patches as they are, the others washed out to white (as the paper's Fig. 3)."""
    pixels = np.asarray(image, dtype=np.float32)
    mask = np.zeros(grid[0] * grid[1], dtype=bool)
    mask[kept] = True
    cells = mask.reshape(grid).repeat(PATCH, 0).repeat(PATCH, 1)[..., None]
    washed = pixels * 0.15 + 255.0 * 0.85
    return Image.fromarray(np.where(cells, pixels, washed).astype(np.uint8))


def plot_overlay(
    image: Image.Image, methods: Sequence[str], ratio: float, seed: int | None, path: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prepared = preprocess(image)
    grid = (IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
    keep = keep_count(grid[0] * grid[1], ratio)
    figure, axes = plt.subplots(1, len(methods) + 1, figsize=(3.2 * (len(methods) + 1), 3.6))
    axes[0].imshow(prepared)
    axes[0].set_title(f"input ({IMAGE_SIZE} px)", fontsize="small")
    for axis, method in zip(axes[1:], methods, strict=True):
        axis.imshow(overlay(prepared, retained(method, prepared, ratio, seed), grid))
        axis.set_title(f"{label(method)}: {keep} of {grid[0] * grid[1]}", fontsize="small")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"Retained visual tokens, ratio {ratio:g}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# -- command line -----------------------------------------------------------------------


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for method in methods:
        try:
            computable(method)
        except AnalyzeError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return methods


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a ratio is in [0, 1), got {value}")
    return value


def _inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("--benchmark", help="or: the images of a benchmark (see vllm-prune eval)")
    p.add_argument("--data", type=Path, help="the benchmark's folder")
    p.add_argument("--benchmark-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--shapes-images", type=int, default=100, help="shapes: images to generate")
    p.add_argument("--ratio", type=_ratio, default=0.75, help="prune ratio (default 0.75)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-prune analyze",
        description="Plots of the visual tokens a method keeps, computed offline with the "
        "method classes (methods needing model signals are refused).",
    )
    sub = p.add_subparsers(dest="analysis", required=True)
    positions = sub.add_parser(
        "positions", help="histogram of retained positions over a dataset (paper Fig. 2)"
    )
    _inputs(positions)
    positions.add_argument("--methods", type=_methods, default=["random", "pooling", "dart"])
    positions.add_argument("--limit", type=int, help="first N images only")
    positions.add_argument("--bins", type=int, default=24, help="histogram bins (24 = rows)")
    positions.add_argument(
        "--seed-per-image",
        action="store_true",
        help="random: seed = the image's index (default: the server's prune_seed 0)",
    )
    over = sub.add_parser("overlay", help="retained tokens over one image (paper Fig. 3)")
    _inputs(over)
    over.add_argument("--methods", type=_methods, default=["random", "pooling", "divprune"])
    over.add_argument("--index", type=int, default=0, help="which image of the inputs")
    over.add_argument("--seed", type=int, help="random: prune_seed (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.benchmark and args.data is None:
        print("vllm-prune analyze: error: --benchmark needs --data", file=sys.stderr)
        return 2
    try:
        if args.analysis == "positions":
            images = input_images(args)
            result = count_positions(images, args.methods, args.ratio, args.seed_per_image)
            path = plot_positions(result, args.ratio, args.bins, args.out)
        else:
            args.limit = None
            images = input_images(args)
            image = next((im for i, im in enumerate(images) if i == args.index), None)
            if image is None:
                raise AnalyzeError(f"--index {args.index}: fewer images than that")
            path = plot_overlay(image, args.methods, args.ratio, args.seed, args.out)
    except (AnalyzeError, FileNotFoundError, ValueError) as error:
        print(f"vllm-prune analyze: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
