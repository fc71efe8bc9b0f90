"""Spending tokens by content against a fixed count, at the same mean kept tokens, on `shapes`.

    .venv/bin/python -m loadtests.content_keep --out runs/content    # about 2.5 minutes here

The question behind ``prune: auto``'s content step: within the tokens the load allows,
should a busy image keep more than a plain one? For each method and mean keep, the
first ``--images`` test images of the ``shapes`` benchmark (four questions each) are
answered by the demo model twice through a local server: every image at the fixed keep,
and every image at ``content_keeps`` of that keep (its pixel measure over the
images' mean measure, so the mean kept tokens stay the same). Both are sent as
``prune_keep``; the report gives each setting's accuracy per question type and its mean
kept tokens as the server counted them (``usage.prompt_tokens``).

The measure reads pixels only, since an image's count is fixed in the API server before
the vision tower runs: the mean absolute difference between neighbouring pixels of the
grayscale image at a fixed side (``SIDE``), i.e. how much edge there is per pixel; a flat
background scores near 0. ``content_keeps`` scales a fixed keep by each image's weight
(``measure ** gamma``) over the images' mean weight, within ``[floor, N]``, so the mean
kept tokens stay where the fixed keep puts them and a busy image keeps more than a plain
one. It lost or tied on ``shapes`` (docs/auto.md), so ``prune: auto`` does not use it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from openai import OpenAI
from PIL import Image

from loadtests.local_server import local_server
from vllm_prune.eval.client import data_url
from vllm_prune.eval.sample import SHORT_ANSWER
from vllm_prune.eval.shapes import image_items, normalize_shapes_answer, png_bytes

N = 576  # the demo model's visual tokens per image
MODEL = "shapes-llava"
SIDE = 112  # pixels per side the measure reads (a fixed cost whatever the image's size)


def complexity(image: Image.Image) -> float:
    """Mean absolute difference of neighbouring grayscale pixels (0 .. 1) at SIDE x SIDE."""
    gray = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).float() / 255.0
    pixels = pixels.reshape(SIDE, SIDE)
    across = (pixels[:, 1:] - pixels[:, :-1]).abs().mean()
    down = (pixels[1:, :] - pixels[:-1, :]).abs().mean()
    return float((across + down) / 2)


def weight(measure: float, gamma: float) -> float:
    return measure**gamma


def content_keeps(
    keeps: Sequence[int],
    tokens: Sequence[int],
    weights: Sequence[float],
    reference: float,
    floors: Sequence[int] | None = None,
) -> list[int]:
    """Each image's keep scaled by its weight over ``reference``, within ``[floor, N]``."""
    floors = floors or [1] * len(keeps)
    if reference <= 0:
        return list(keeps)
    return [
        max(floor, min(n, round(keep * w / reference)))
        for keep, n, w, floor in zip(keeps, tokens, weights, floors, strict=True)
    ]


def ask(client: OpenAI, image_url: str, question: str, prune: dict) -> tuple[str, int]:
    response = client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": f"{question}\n{SHORT_ANSWER}"},
                ],
            }
        ],  # type: ignore[list-item]
        max_tokens=8,
        temperature=0.0,
        extra_body=prune,
    )
    return response.choices[0].message.content or "", response.usage.prompt_tokens


def run_setting(
    client: OpenAI,
    images: list[list],
    urls: list[str],
    method: str,
    keeps: list[int],
    text_tokens: dict[str, int],
    concurrency: int,
) -> dict:
    """Every question of every image at its image's keep: accuracy by type, mean kept tokens."""
    jobs = [
        (item, urls[i], {"prune": method, "prune_keep": keeps[i]})
        for i, items in enumerate(images)
        for item in items
    ]
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda job: ask(client, job[1], job[0].question, job[2]), jobs))
    right: dict[str, list[float]] = {}
    kept = []
    for (item, _, _), (text, prompt_tokens) in zip(jobs, answers, strict=True):
        score = float(normalize_shapes_answer(text) == item.answer)
        right.setdefault("all", []).append(score)
        right.setdefault(item.type, []).append(score)
        kept.append(prompt_tokens - text_tokens[item.id])
    return {
        "accuracy": {k: round(100 * statistics.mean(v), 1) for k, v in right.items()},
        "mean_kept": round(statistics.mean(kept), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/content"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--methods", default="divprune,pooling")
    parser.add_argument("--keeps", default="144,64", help="mean kept tokens (0.75, 0.889)")
    parser.add_argument("--gammas", default="0.5,1", help="content weight = measure ** gamma")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    images = [image_items("test", i) for i in range(args.images)]
    urls = [data_url(png_bytes(items[0].image)) for items in images]
    measures = [complexity(items[0].image) for items in images]
    gammas = [float(g) for g in args.gammas.split(",")]
    rows = []
    with local_server(out / "server.log", None, ["--block-size", "32"]) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        # The text tokens of each question: the unpruned prompt less the image's N.
        jobs = [(item, urls[i]) for i, items in enumerate(images) for item in items]
        with ThreadPoolExecutor(args.concurrency) as pool:
            prompts = list(pool.map(lambda j: ask(client, j[1], j[0].question, {})[1], jobs))
        text_tokens = {item.id: p - N for (item, _), p in zip(jobs, prompts, strict=True)}
        for method in args.methods.split(","):
            for keep in (int(k) for k in args.keeps.split(",")):
                fixed = [keep] * len(images)
                settings = [("fixed", fixed)]
                for gamma in gammas:
                    weights = [weight(m, gamma) for m in measures]
                    reference = statistics.mean(weights)
                    by_content = content_keeps(fixed, [N] * len(images), weights, reference)
                    settings.append((f"content, gamma {gamma:g}", by_content))
                for setting, keeps in settings:
                    result = run_setting(
                        client, images, urls, method, keeps, text_tokens, args.concurrency
                    )
                    rows.append({"method": method, "keep": keep, "setting": setting, **result})
                    print(json.dumps(rows[-1]), flush=True)
    types = ["all", "existence", "color", "count", "location"]
    lines = [
        f"Measure: mean {statistics.mean(measures):.5f}, min {min(measures):.5f}, max "
        f"{max(measures):.5f} over "
        f"{len(measures)} images.",
        "",
        "| method | mean keep | setting | mean kept (served) | " + " | ".join(types) + " |",
        "|---" * (4 + len(types)) + "|",
    ]
    for row in rows:
        cells = [str(row["accuracy"].get(t, "-")) for t in types]
        lines.append(
            f"| {row['method']} | {row['keep']} | {row['setting']} | {row['mean_kept']} | "
            + " | ".join(cells)
            + " |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"measures": measures, "rows": rows}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
