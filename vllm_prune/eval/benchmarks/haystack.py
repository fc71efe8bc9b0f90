"""Visual Haystacks (VHs): a yes/no question about one (or several) needle images hidden
among distractors; many images per sample.

Files are the benchmark's ``visual_haystack_N.json`` (N images per haystack). The
official toolkit places the needle at an unseeded random position; here the order is
drawn from ``seed`` and the sample id, so runs are repeatable and the needle positions
are recorded. Scored as the toolkit: right when the reference word ("yes"/"no") is a
word of the lower-cased answer, compliant when "yes" or "no" is; single-needle
accuracy also per needle position bucket, position // max(N // 10, 1) as the toolkit
buckets it. (The toolkit reports a bootstrap mean of the same accuracy.)
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from vllm_prune.eval.files import BenchmarkFormatError, read_records, require_images
from vllm_prune.eval.sample import Prediction, Sample, Scores, mean

MODES = ("single_needle", "multi_needle")
LAYOUT = (
    "ROOT/VHs_qa/VARIANT/MODE/visual_haystack_N.json (VARIANT VHs_full or VHs_small, MODE "
    "single_needle or multi_needle), image paths in it relative to ROOT (e.g. ROOT/coco/...)"
)
PROMPT = "You are given a set of images. Please answer the following question in Yes or No: {}"
_WORD = re.compile(r"\w+")


def load_visual_haystack(
    root: Path,
    haystack: int | str = 10,
    mode: str = "single_needle",
    variant: str = "VHs_full",
    seed: int = 0,
) -> list[Sample]:
    """Samples of haystack size ``haystack`` (or "oracle": the needle image alone)."""
    if mode not in MODES:
        raise ValueError(f"Visual Haystacks mode {mode!r}: expected one of {MODES}")
    root = Path(root)
    path = root / "VHs_qa" / variant / mode / f"visual_haystack_{haystack}.json"
    records = read_records(path, LAYOUT)
    samples = []
    for index in range(len(records.rows)):
        turns = records.get(index, "conversations")
        if len(turns) < 2 or not turns[0].get("value") or not turns[1].get("value"):
            raise BenchmarkFormatError(f"{records.where(index)}: needs a question and an answer")
        answer = turns[1]["value"].strip().lower()
        if answer not in ("yes", "no"):
            raise BenchmarkFormatError(f"{records.where(index)}: answer {answer!r} is not yes/no")
        # The question may carry LLaVA-style "<image>" markers; images are sent separately.
        question = turns[0]["value"].replace("<image>", "").strip()
        needles = list(records.get(index, "pos_image"))
        if not needles:
            raise BenchmarkFormatError(f"{records.where(index)}: no needle image (pos_image)")
        distractors = list(records.rows[index].get("neg_image") or [])
        order, positions = _arrange(needles, distractors, random.Random(f"{seed}/{index}"))
        samples.append(
            Sample(
                id=f"{mode}/{haystack}/{index}",
                images=tuple(root / image for image in order),
                question=question,
                prompt=PROMPT.format(question),
                answers=(answer,),
                fields={"mode": mode, "needle_positions": positions, "haystack_size": len(order)},
            )
        )
    require_images(samples, LAYOUT)
    return samples


def _arrange(
    needles: list[str], distractors: list[str], rng: random.Random
) -> tuple[list[str], tuple[int, ...]]:
    """The toolkit's order: one needle at a random slot, or everything shuffled."""
    if len(needles) == 1:
        slot = rng.randint(0, len(distractors))
        order = distractors[:slot] + needles + distractors[slot:]
    else:
        order = needles + distractors
        rng.shuffle(order)
    needle_set = set(needles)
    return order, tuple(i for i, image in enumerate(order) if image in needle_set)


def score_visual_haystack(predictions: Sequence[Prediction]) -> Scores:
    """``accuracy``, ``compliance`` and, single needle, ``accuracy/position_bucket_K``."""
    right, compliant = [], []
    by_bucket: dict[int, list[float]] = defaultdict(list)
    for sample, text in predictions:
        words = set(_WORD.findall(text.lower()))
        right.append(float(sample.answers[0] in words))
        compliant.append(float(bool({"yes", "no"} & words)))
        if sample.fields["mode"] == "single_needle":
            size = sample.fields["haystack_size"]
            interval = max(size // 10, 1)
            by_bucket[sample.fields["needle_positions"][0] // interval].append(right[-1])
    scores: Scores = {"accuracy": mean(right), "compliance": mean(compliant)}
    scores.update({f"accuracy/position_bucket_{k}": mean(v) for k, v in sorted(by_bucket.items())})
    return scores
