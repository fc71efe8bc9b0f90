"""``vllm-prune analyze``: which visual tokens a method keeps (the paper's Figures 2 and 3).

    vllm-prune analyze positions --trace trace.jsonl [--methods fastv,pooling]
    vllm-prune analyze overlay --trace trace.jsonl --image cat.png
    vllm-prune analyze positions --benchmark shapes --data DIR --methods random,pooling,dart
    vllm-prune analyze overlay --image cat.png --methods random,pooling,divprune --ratio 0.75

Two sources of retained indices:

**A server trace** (``--trace FILE``, every method, exact): a server started with
``VLLM_PRUNE_TRACE=FILE`` appends one line per pruned image with the indices it kept
(``vllm_prune/trace.py`` has the format). ``positions`` counts, per method (and per
LLaVA-NeXT part), how many lines kept each position, over the lines on one grid (the most
common one, or ``--grid HxW``; other lines are counted and skipped). ``overlay`` draws the
newest line of each method (and part) over ``--image``: the trace must come from requests
on that image, so send them to a fresh trace file (or send that image last). A square grid
without a part is drawn over the CLIP centre crop (LLaVA-1.5's preprocessing); any other
grid (Qwen2-VL's, LLaVA-NeXT's parts) over the whole image.

**Offline** (no ``--trace``): computed here with the method classes themselves
(``get_method(name).reduce``) on the image's LLaVA-1.5 token grid (336 px, 14 px patches:
24 x 24 = 576 tokens). Only methods that need no model signal can be computed this way;
the others (FastV family, balanced, sparsevlm, cdprune: the LLM's attention or text;
cls_attention, visionzip, vispruner: the vision tower's [CLS] attention) are refused rather than
faked: use a trace for them. Of the computable ones:

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vllm_prune.eval.sample import image_bytes
from vllm_prune.methods import Context, get_method, method_names
from vllm_prune.methods.base import MODEL_SIGNALS
from vllm_prune.observability.trace import ENV, TraceError, TraceLine, read_trace

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
    needs = get_method(method).needs & MODEL_SIGNALS
    if needs:
        raise AnalyzeError(
            f"{method} selects from model signals ({', '.join(sorted(needs))}) that the server "
            "does not return, so its positions cannot be computed offline (computable: "
            f"{', '.join(EXACT + APPROXIMATE)}); record what the server keeps instead: start "
            f"it with {ENV}=FILE, send requests, then pass --trace FILE"
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
    """How often each raster position was kept, per method, over ``images`` images.

    From a trace, each series (method, or method and LLaVA-NeXT part) has its own count
    of lines (``lines``) and mean keep (``keeps``); ``images`` and ``keep`` are then the
    largest of those.
    """

    counts: dict[str, np.ndarray]  # method -> [N]
    grid: tuple[int, int]
    images: int
    keep: int
    lines: dict[str, int] = field(default_factory=dict)  # trace: series -> lines counted
    keeps: dict[str, float] = field(default_factory=dict)  # trace: series -> mean keep
    traced: bool = False

    def samples(self, series: str) -> int:
        return self.lines.get(series, self.images)

    def kept(self, series: str) -> float:
        return self.keeps.get(series, self.keep)

    def label(self, series: str) -> str:
        if not self.traced:
            return label(series)
        count = self.samples(series)
        # A line per encoded image: text-guided methods encode an image once per question.
        return f"{series} (keep {round(self.kept(series), 1):g}, {count} line{'s' * (count != 1)})"


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


def series_name(line: TraceLine) -> str:
    return line.method if line.part is None else f"{line.method} [{line.part}]"


def parse_grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a grid is ROWSxCOLS, e.g. 24x24; got {text!r}") from None
    return rows, cols


def select_lines(lines: Sequence[TraceLine], methods: Sequence[str] | None) -> list[TraceLine]:
    """The lines of ``methods`` (all when None); an error when none is left.

    One line per image: under tensor parallelism only rank 0's, since every rank
    writes the same indices (``tests/test_parallel.py`` checks that they do).
    """
    chosen = [
        line
        for line in lines
        if (line.rank or 0) == 0 and (methods is None or line.method in methods)
    ]
    if not chosen:
        found = sorted({line.method for line in lines})
        raise AnalyzeError(
            f"no trace lines for {', '.join(methods or ['any method'])}; the trace has "
            f"{', '.join(found) or 'no lines'} (was the server started with {ENV}?)"
        )
    return chosen


def trace_positions(
    lines: Sequence[TraceLine], grid: tuple[int, int] | None = None
) -> tuple[Positions, int]:
    """Positions of ``lines`` on ``grid`` (default: the most common grid), and how many
    lines were skipped for being on another grid."""
    if grid is None:
        grids = [line.grid for line in lines]
        grid = max(dict.fromkeys(grids), key=grids.count)  # the first seen wins a tie
    counts: dict[str, np.ndarray] = {}
    totals: dict[str, int] = {}
    keeps: dict[str, int] = {}
    for line in lines:
        if line.grid != grid:
            continue
        name = series_name(line)
        counts.setdefault(name, np.zeros(grid[0] * grid[1], dtype=np.int64))
        counts[name][list(line.indices)] += 1
        totals[name] = totals.get(name, 0) + 1
        keeps[name] = keeps.get(name, 0) + line.keep
    if not counts:
        raise AnalyzeError(f"no trace lines on grid {grid[0]}x{grid[1]}")
    means = {name: keeps[name] / totals[name] for name in counts}
    result = Positions(
        counts=counts,
        grid=grid,
        images=max(totals.values()),
        keep=round(max(means.values())),
        lines=totals,
        keeps=means,
        traced=True,
    )
    return result, len(lines) - sum(totals.values())


def plot_positions(
    result: Positions,
    ratio: float | None,
    bins: int | None,
    path: Path,
    title: str | None = None,
) -> Path:
    """Top: share of images keeping each position, binned along the raster order (paper
    Fig. 2: larger index = lower in the image). Bottom: the same per grid cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result.counts)
    tokens = result.grid[0] * result.grid[1]
    figure = plt.figure(figsize=(max(8, 2.6 * len(methods)), 7.5))
    top = figure.add_subplot(2, 1, 1)
    bins = min(bins or result.grid[0], tokens)  # default: one bin per grid row
    edges = np.linspace(0, tokens, bins + 1)
    one_keep = len({result.kept(method) for method in methods}) == 1
    for method in methods:
        share = result.counts[method] / result.samples(method)
        binned = [share[int(a) : int(b)].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
        (drawn,) = top.step(edges[:-1], binned, where="post", label=result.label(method))
        if not one_keep:  # each series its own uniform reference
            top.axhline(result.kept(method) / tokens, color=drawn.get_color(), linestyle=":")
    if one_keep:
        uniform = result.kept(methods[0]) / tokens
        top.axhline(uniform, color="grey", linestyle="--", linewidth=1, label="uniform")
    top.set_xlim(0, tokens)
    top.set_ylim(0, 1.05)
    top.set_xlabel("visual token index (raster order: larger = lower in the image)")
    top.set_ylabel(
        "share of trace lines keeping it" if result.traced else "share of images keeping it"
    )
    top.set_title(
        title
        or (
            f"Retained positions over {result.images} images, ratio {ratio:g} "
            f"(keep {result.keep} of {tokens})"
        )
    )
    top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for i, method in enumerate(methods):
        axis = figure.add_subplot(2, len(methods), len(methods) + i + 1)
        share = (result.counts[method] / result.samples(method)).reshape(result.grid)
        shown = axis.imshow(share, vmin=0, vmax=1, cmap="viridis")
        axis.set_title(method if result.traced else label(method), fontsize="small")
        axis.set_xticks([])
        axis.set_yticks([])
    figure.subplots_adjust(hspace=0.3)  # room for the x label between the rows
    figure.colorbar(shown, ax=figure.axes[1:], fraction=0.03, label="share kept")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


# -- overlay (Figure 3) -----------------------------------------------------------------


def overlay(image: Image.Image, kept: np.ndarray, grid: tuple[int, int]) -> Image.Image:
    """Kept patches as they are, the others washed out to white (as the paper's Fig. 3).

    The grid is stretched over the whole of ``image`` (exact cells when they divide it)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = np.zeros(grid[0] * grid[1], dtype=np.uint8)
    mask[kept] = 255
    cells = Image.fromarray(mask.reshape(grid)).resize(image.size, Image.Resampling.NEAREST)
    keep = (np.asarray(cells) > 0)[..., None]
    washed = pixels * 0.15 + 255.0 * 0.85
    return Image.fromarray(np.where(keep, pixels, washed).astype(np.uint8))


def trace_view(image: Image.Image, line: TraceLine) -> Image.Image:
    """The image as the traced grid covers it: LLaVA-1.5's centre crop for a square grid
    without a part, else the whole image (Qwen2-VL resizes, LLaVA-NeXT squashes or tiles)."""
    square = line.grid[0] == line.grid[1] and line.part is None
    return preprocess(image) if square else image.convert("RGB")


def newest_lines(lines: Sequence[TraceLine]) -> list[TraceLine]:
    """The last line of each method (and part), in the order methods first appear."""
    newest: dict[str, TraceLine] = {}
    for line in lines:
        newest[series_name(line)] = line
    return list(newest.values())


def plot_trace_overlay(image: Image.Image, lines: Sequence[TraceLine], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(lines) + 1, figsize=(3.2 * (len(lines) + 1), 3.6))
    axes[0].imshow(image.convert("RGB"))
    axes[0].set_title("input", fontsize="small")
    for axis, line in zip(axes[1:], lines, strict=True):
        axis.imshow(overlay(trace_view(image, line), np.asarray(line.indices), line.grid))
        merged = " (merged)" if line.merged else ""
        title = f"{series_name(line)}: {line.keep} of {line.tokens}{merged}"
        axis.set_title(title, fontsize="small")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("Retained visual tokens as the server kept them (newest trace line each)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
    """Known method names; whether they can be computed offline is checked in ``main``."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for method in methods:
        if method not in method_names():
            allowed = ", ".join(method_names())
            raise argparse.ArgumentTypeError(f"unknown method {method!r}; allowed: {allowed}")
    return methods


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a ratio is in [0, 1), got {value}")
    return value


def _inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--images", "--image", nargs="+", type=Path, help="image files or folders of images"
    )
    p.add_argument("--benchmark", help="or: the images of a benchmark (see vllm-prune eval)")
    p.add_argument("--data", type=Path, help="the benchmark's folder")
    p.add_argument("--benchmark-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--shapes-images", type=int, default=100, help="shapes: images to generate")
    p.add_argument("--ratio", type=_ratio, help="offline: prune ratio (default 0.75)")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument(
        "--trace",
        type=Path,
        help=f"what a server kept: the file it wrote with {ENV}=FILE (every method, exact)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-prune analyze",
        description="Plots of the visual tokens a method keeps: exact from a server's trace "
        f"(--trace, written with {ENV}=FILE), or computed offline with the method classes "
        "(methods needing model signals are refused).",
    )
    sub = p.add_subparsers(dest="analysis", required=True)
    positions = sub.add_parser(
        "positions", help="histogram of retained positions over a dataset (paper Fig. 2)"
    )
    _inputs(positions)
    positions.add_argument(
        "--methods", type=_methods, help="default: random,pooling,dart; --trace: all it has"
    )
    positions.add_argument(
        "--grid", type=parse_grid, help="--trace: lines on this ROWSxCOLS grid (default: commonest)"
    )
    positions.add_argument("--limit", type=int, help="first N images only")
    positions.add_argument("--bins", type=int, help="histogram bins (default: the grid's rows)")
    positions.add_argument(
        "--seed-per-image",
        action="store_true",
        help="random: seed = the image's index (default: the server's prune_seed 0)",
    )
    over = sub.add_parser("overlay", help="retained tokens over one image (paper Fig. 3)")
    _inputs(over)
    over.add_argument(
        "--methods", type=_methods, help="default: random,pooling,divprune; --trace: all it has"
    )
    over.add_argument("--index", type=int, default=0, help="which image of the inputs")
    over.add_argument("--seed", type=int, help="random: prune_seed (default 0)")
    return p


OFFLINE_DEFAULTS = {
    "positions": ["random", "pooling", "dart"],
    "overlay": ["random", "pooling", "divprune"],
}


def _check(args: argparse.Namespace) -> None:
    """Options that belong to one source only are refused with the other."""
    if args.trace is None:
        if getattr(args, "grid", None) is not None:
            raise AnalyzeError("--grid selects trace lines; it needs --trace")
        args.methods = args.methods or OFFLINE_DEFAULTS[args.analysis]
        args.ratio = 0.75 if args.ratio is None else args.ratio
        for method in args.methods:
            computable(method)
        return
    offline = {"--ratio": args.ratio, "--seed": getattr(args, "seed", None)}
    offline["--seed-per-image"] = getattr(args, "seed_per_image", False) or None
    if args.analysis == "positions":
        offline["--images"], offline["--benchmark"] = args.images, args.benchmark
    given = [name for name, value in offline.items() if value is not None]
    if given:
        raise AnalyzeError(
            f"{', '.join(given)}: offline only; with --trace the server's lines give the "
            "methods, counts and positions"
        )


def _image(args: argparse.Namespace) -> Image.Image:
    args.limit = None
    images = input_images(args)
    image = next((im for i, im in enumerate(images) if i == args.index), None)
    if image is None:
        raise AnalyzeError(f"--index {args.index}: fewer images than that")
    return image


def _from_trace(args: argparse.Namespace) -> Path:
    lines = select_lines(read_trace(args.trace), args.methods)
    if args.analysis == "overlay":
        return plot_trace_overlay(_image(args), newest_lines(lines), args.out)
    result, skipped = trace_positions(lines, args.grid)
    if skipped:
        print(
            f"vllm-prune analyze: {skipped} trace lines on other grids than "
            f"{result.grid[0]}x{result.grid[1]} skipped (choose one with --grid)",
            file=sys.stderr,
        )
    title = (
        f"Retained positions as the server kept them ({args.trace.name}), "
        f"{result.grid[0]} x {result.grid[1]} grid"
    )
    return plot_positions(result, None, args.bins, args.out, title)


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.benchmark and args.data is None:
        print("vllm-prune analyze: error: --benchmark needs --data", file=sys.stderr)
        return 2
    try:
        _check(args)
    except AnalyzeError as error:
        cli.error(str(error))  # exits 2, as argparse does for any other bad option
    try:
        if args.trace is not None:
            path = _from_trace(args)
        elif args.analysis == "positions":
            images = input_images(args)
            result = count_positions(images, args.methods, args.ratio, args.seed_per_image)
            path = plot_positions(result, args.ratio, args.bins, args.out)
        else:
            path = plot_overlay(_image(args), args.methods, args.ratio, args.seed, args.out)
    except (AnalyzeError, TraceError, FileNotFoundError, ValueError) as error:
        print(f"vllm-prune analyze: error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
