"""POPE: yes/no object-hallucination probes on COCO val2014, three negative samplings.

Scored as LLaVA's eval_pope.py: the answer's first sentence is "no" when it holds the
word "no", "No" or "not", else "yes"; accuracy, precision, recall, F1 and yes-ratio per
category, and their mean over the categories loaded (LLaVA-1.5 reports the mean F1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vllm_prune.eval.files import BenchmarkFormatError, read_records, require_images
from vllm_prune.eval.sample import SHORT_ANSWER, Prediction, Sample, Scores, mean

CATEGORIES = ("adversarial", "popular", "random")
LAYOUT = "ROOT/coco/coco_pope_{adversarial,popular,random}.json (JSON Lines), ROOT/val2014/*.jpg"


def load_pope(
    root: Path, categories: Sequence[str] = CATEGORIES, images: str = "val2014"
) -> list[Sample]:
    """Questions of the chosen categories, in file order; ids are ``category/question_id``."""
    samples: list[Sample] = []
    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"POPE category {category!r}: expected one of {CATEGORIES}")
        records = read_records(Path(root) / "coco" / f"coco_pope_{category}.json", LAYOUT)
        for index in range(len(records.rows)):
            label = str(records.get(index, "label")).strip().lower()
            if label not in ("yes", "no"):
                where = records.where(index)
                raise BenchmarkFormatError(f"{where}: label {label!r} is not yes/no")
            question = records.get(index, "text")
            samples.append(
                Sample(
                    id=f"{category}/{records.get(index, 'question_id')}",
                    images=(Path(root) / images / records.get(index, "image"),),
                    question=question,
                    prompt=f"{question}\n{SHORT_ANSWER}",
                    answers=(label,),
                    fields={"category": category},
                )
            )
    require_images(samples, LAYOUT)
    return samples


def parse_yes_no(text: str) -> str:
    """LLaVA's rule: first sentence, commas dropped; "no" if it says No/no/not, else "yes"."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def binary_scores(labels: Sequence[str], predictions: Sequence[str]) -> Scores:
    """Accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class.

    Where LLaVA would divide by zero (no "yes" predicted or labelled) the ratio is 0.
    """
    pairs = list(zip(labels, predictions, strict=True))
    tp = sum(label == "yes" and pred == "yes" for label, pred in pairs)
    fp = sum(label == "no" and pred == "yes" for label, pred in pairs)
    tn = sum(label == "no" and pred == "no" for label, pred in pairs)
    fn = sum(label == "yes" and pred == "no" for label, pred in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / len(pairs),
    }


def score_pope(predictions: Sequence[Prediction]) -> Scores:
    """Per-category scores (``random/f1``...) and their means (``f1``...)."""
    by_category: dict[str, tuple[list[str], list[str]]] = {}
    for sample, text in predictions:
        labels, parsed = by_category.setdefault(sample.fields["category"], ([], []))
        labels.append(sample.answers[0])
        parsed.append(parse_yes_no(text))
    if not by_category:
        raise ValueError("no predictions to score")
    scores: Scores = {}
    per_category = {name: binary_scores(*lists) for name, lists in sorted(by_category.items())}
    for name, values in per_category.items():
        scores.update({f"{name}/{key}": value for key, value in values.items()})
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        scores[key] = mean([values[key] for values in per_category.values()])
    return scores
