"""Benchmarks by name: how to load one from a local folder, how to score it, which score
is its headline (the one compared with the unpruned model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from vllm_prune.eval import shapes
from vllm_prune.eval.benchmarks import choice, haystack, mme, pope, refcoco, vqa
from vllm_prune.eval.sample import Prediction, Sample, Scores


@dataclass(frozen=True)
class Benchmark:
    """``load(root, **options)`` reads the folder; ``score(predictions)`` scores it."""

    name: str
    load: Callable[..., list[Sample]]
    score: Callable[[Sequence[Prediction]], Scores]
    main_metric: str
    layout: str


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("pope", pope.load_pope, pope.score_pope, "f1", pope.LAYOUT),
        Benchmark("mme", mme.load_mme, mme.score_mme, "perception", mme.LAYOUT),
        Benchmark("gqa", vqa.load_gqa, vqa.score_gqa, "accuracy", vqa.GQA_LAYOUT),
        Benchmark("vqav2", vqa.load_vqav2, vqa.score_vqa, "accuracy", vqa.VQAV2_LAYOUT),
        Benchmark("textvqa", vqa.load_textvqa, vqa.score_vqa, "accuracy", vqa.TEXTVQA_LAYOUT),
        Benchmark("vizwiz", vqa.load_vizwiz, vqa.score_vqa, "accuracy", vqa.VIZWIZ_LAYOUT),
        Benchmark(
            "scienceqa_img",
            choice.load_scienceqa_img,
            choice.score_choice,
            "accuracy",
            choice.SCIENCEQA_LAYOUT,
        ),
        Benchmark(
            "mmbench", choice.load_mmbench, choice.score_choice, "accuracy", choice.MMBENCH_LAYOUT
        ),
        *(
            Benchmark(
                name,
                partial(refcoco.load_refcoco, dataset=name),
                refcoco.score_refcoco,
                "precision@0.5",
                refcoco.LAYOUT,
            )
            for name in refcoco.DATASETS
        ),
        Benchmark(
            "visual_haystack",
            haystack.load_visual_haystack,
            haystack.score_visual_haystack,
            "accuracy",
            haystack.LAYOUT,
        ),
        Benchmark("shapes", shapes.load_shapes, shapes.score_shapes, "accuracy", shapes.LAYOUT),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; the error lists the known names."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}: expected one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def load_benchmark(name: str, root: Path, **options: Any) -> list[Sample]:
    """Samples of benchmark ``name`` from the local folder ``root``."""
    return get_benchmark(name).load(Path(root), **options)


def score_benchmark(name: str, predictions: Sequence[Prediction]) -> Scores:
    """Scores of benchmark ``name``; ``get_benchmark(name).main_metric`` is the headline."""
    return get_benchmark(name).score(predictions)
