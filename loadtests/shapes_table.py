"""The full ``shapes`` table and the paper's Figures 2 and 3, on the demo model.

    .venv/bin/python -m loadtests.shapes_table --out runs/shapes    # about 7 minutes here

Starts a local server (the shipped ``shapes-llava``, or ``--serve-model``) that traces
what it keeps (``VLLM_PRUNE_TRACE``), runs ``vllm-prune eval --benchmark shapes`` for
every registered method at ``--ratios`` on the first ``--images`` test images, then plots
from that trace: the retained-position histogram at the first ratio (Fig. 2) and the
retained tokens over one test image outside the evaluated ones (Fig. 3; the overlay draws
each method's newest trace line, so those requests go last).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openai import OpenAI

from loadtests.local_server import local_server
from vllm_prune.eval.analyze import keep_count
from vllm_prune.eval.analyze import main as analyze_main
from vllm_prune.eval.cli import main as eval_main
from vllm_prune.eval.client import data_url
from vllm_prune.eval.sample import SHORT_ANSWER
from vllm_prune.eval.shapes import image_items, png_bytes
from vllm_prune.methods.registry import method_names
from vllm_prune.observability.trace import ENV

OVERLAY_METHODS = ("random", "pooling", "dart", "fastv", "cdprune")
OVERLAY_IMAGE = 108  # a test image with six objects, three of them small
VISUAL_TOKENS = 576


def overlay_requests(url: str, model: str, image_path: Path, ratio: float) -> None:
    """One request per method on the overlay image (its location question: FastV and
    the like choose by the question)."""
    items = image_items("test", OVERLAY_IMAGE)
    items[0].image.save(image_path)
    data = data_url(png_bytes(items[0].image))
    question = next(item for item in items if item.type == "location").question
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    for method in OVERLAY_METHODS:
        content = [
            {"type": "image_url", "image_url": {"url": data}},
            {"type": "text", "text": f"{question}\n{SHORT_ANSWER}"},
        ]
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
            max_tokens=4,
            temperature=0.0,
            extra_body={"prune": method, "prune_ratio": ratio},
        )


def lines_keeping(trace: Path, keep: int, out: Path) -> Path:
    """The trace lines of one keep count (one ratio), for the position histogram."""
    with trace.open() as source, out.open("w") as target:
        target.writelines(line for line in source if json.loads(line)["keep"] == keep)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/shapes"))
    parser.add_argument("--serve-model", help="default: the shipped shapes-llava")
    parser.add_argument("--model", default="shapes-llava", help="its served name")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--ratios", default="0.75,0.889")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "trace.jsonl"
    trace.unlink(missing_ok=True)
    methods = ",".join(["none", *(name for name in method_names() if name != "none")])
    ratio = float(args.ratios.split(",")[0])
    server_args = ["--block-size", "32"]
    with local_server(
        out / "server.log", args.serve_model, server_args, env={ENV: str(trace)}
    ) as server:
        # fmt: off
        code = eval_main([
            "--url", server.url, "--model", args.model, "--benchmark", "shapes",
            "--data", str(out / "shapes"), "--shapes-images", str(args.images),
            "--methods", methods, "--ratios", args.ratios,
            "--concurrency", str(args.concurrency), "--out", str(out / "eval"),
        ])
        # fmt: on
        if code != 0:
            raise SystemExit(code)
        keep = keep_count(VISUAL_TOKENS, ratio)  # the evaluated images' lines only
        at_ratio = lines_keeping(trace, keep, out / f"trace-keep{keep}.jsonl")
        overlay_requests(server.url, args.model, out / "overlay-image.png", ratio)
    # fmt: off
    analyze_main([
        "positions", "--trace", str(at_ratio), "--methods", "random,pooling,fastv,dart,cls_attention",
        "--out", str(out / "positions.png"),
    ])
    analyze_main([
        "overlay", "--trace", str(trace), "--image", str(out / "overlay-image.png"),
        "--methods", ",".join(OVERLAY_METHODS), "--out", str(out / "overlay.png"),
    ])
    # fmt: on
    print(
        f"table: {out / 'eval' / 'summary.md'}; figures: {out / 'positions.png'}, "
        f"{out / 'overlay.png'}"
    )


if __name__ == "__main__":
    main()
