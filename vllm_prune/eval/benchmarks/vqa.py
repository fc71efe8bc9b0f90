"""Open-ended VQA: VQAv2, TextVQA and VizWiz (10 human answers each) and GQA (one).

VQA accuracy is the official one: prediction and human answers pass through the VQA
normalisation; against each human answer left out in turn, the prediction scores
min(#other humans who gave it / 3, 1), and those 10 scores are averaged. The official
VQAv2 script normalises the human answers only when they disagree; here they always
are (as the TextVQA/m4c evaluator LLaVA uses), so "t-shirt" given by all 10 humans
matches the prediction "t-shirt" instead of scoring 0.

GQA is exact match after the same normalisation. Its official eval.py compares the
lower-cased prediction without trailing period (LLaVA's conversion), so this is at
least as lenient ("the left" = "left", "two" = "2").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vllm_prune.eval.benchmarks.normalize import normalize_answer
from vllm_prune.eval.files import (
    BenchmarkFormatError,
    Records,
    read_json,
    read_records,
    require_images,
)
from vllm_prune.eval.sample import SHORT_ANSWER, Prediction, Sample, Scores, mean

VQAV2_LAYOUT = (
    "ROOT/v2_OpenEnded_mscoco_SPLIT_questions.json, ROOT/v2_mscoco_SPLIT_annotations.json, "
    "ROOT/SPLIT/COCO_SPLIT_<12-digit image id>.jpg"
)
TEXTVQA_LAYOUT = "ROOT/TextVQA_0.5.1_SPLIT.json, ROOT/train_images/<image_id>.jpg"
VIZWIZ_LAYOUT = "ROOT/SPLIT.json (the list from Annotations.zip), ROOT/SPLIT/<image>"
GQA_LAYOUT = "ROOT/SPLIT_questions.json (e.g. testdev_balanced), ROOT/images/<imageId>.jpg"
VIZWIZ_INSTRUCTION = "When the provided information is insufficient, respond with 'Unanswerable'."
HUMAN_ANSWERS = 10


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against the human answers."""
    predicted = normalize_answer(prediction)
    humans = [normalize_answer(answer) for answer in answers]
    per_left_out = []
    for left_out in range(len(humans)):
        agreeing = sum(1 for i, human in enumerate(humans) if i != left_out and human == predicted)
        per_left_out.append(min(1.0, agreeing / 3))
    return mean(per_left_out)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference answer."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(answer) for answer in answers))


def score_vqa(predictions: Sequence[Prediction]) -> Scores:
    """``accuracy`` (VQA accuracy) and, where annotated, ``accuracy/<answer type>``."""
    return _by_answer_type(predictions, vqa_accuracy)


def score_gqa(predictions: Sequence[Prediction]) -> Scores:
    """``accuracy`` as exact match after normalisation."""
    return _by_answer_type(predictions, exact_match)


def _by_answer_type(predictions: Sequence[Prediction], score: Any) -> Scores:
    groups: dict[str, list[float]] = defaultdict(list)
    values = []
    for sample, text in predictions:
        value = score(text, sample.answers)
        values.append(value)
        if sample.fields.get("answer_type"):
            groups[sample.fields["answer_type"]].append(value)
    scores: Scores = {"accuracy": mean(values)}
    scores.update({f"accuracy/{name}": mean(group) for name, group in sorted(groups.items())})
    return scores


def load_vqav2(root: Path, split: str = "val2014") -> list[Sample]:
    """VQAv2 questions joined with their annotations (test splits have none: use val)."""
    root = Path(root)
    questions = read_records(
        root / f"v2_OpenEnded_mscoco_{split}_questions.json", VQAV2_LAYOUT, field="questions"
    )
    annotations = read_records(
        root / f"v2_mscoco_{split}_annotations.json", VQAV2_LAYOUT, field="annotations"
    )
    by_id = _index(annotations, "question_id")
    samples = []
    for index in range(len(questions.rows)):
        question_id = questions.get(index, "question_id")
        if question_id not in by_id:
            raise BenchmarkFormatError(
                f"{questions.where(index)}: question {question_id} has no annotation in "
                f"{annotations.path}"
            )
        row = by_id[question_id]
        image_id = int(questions.get(index, "image_id"))
        question = questions.get(index, "question")
        samples.append(
            Sample(
                id=str(question_id),
                images=(root / split / f"COCO_{split}_{image_id:012d}.jpg",),
                question=question,
                prompt=f"{question}\n{SHORT_ANSWER}",
                answers=_human_answers(annotations, row),
                fields={"answer_type": annotations.get(row, "answer_type")},
            )
        )
    require_images(samples, VQAV2_LAYOUT)
    return samples


def load_textvqa(root: Path, split: str = "val") -> list[Sample]:
    """TextVQA without OCR tokens in the prompt (LLaVA-1.5 adds them; pruning should not)."""
    root = Path(root)
    records = read_records(root / f"TextVQA_0.5.1_{split}.json", TEXTVQA_LAYOUT, field="data")
    samples = []
    for index in range(len(records.rows)):
        answers = tuple(str(answer) for answer in records.get(index, "answers"))
        if len(answers) != HUMAN_ANSWERS:
            raise BenchmarkFormatError(
                f"{records.where(index)}: {len(answers)} answers, expected {HUMAN_ANSWERS}"
            )
        question = records.get(index, "question")
        samples.append(
            Sample(
                id=str(records.get(index, "question_id")),
                images=(root / "train_images" / f"{records.get(index, 'image_id')}.jpg",),
                question=question,
                prompt=f"{question}\n{SHORT_ANSWER}",
                answers=answers,
            )
        )
    require_images(samples, TEXTVQA_LAYOUT)
    return samples


def load_vizwiz(root: Path, split: str = "val") -> list[Sample]:
    """VizWiz questions; ``unanswerable`` is an answer like any other."""
    root = Path(root)
    records = read_records(root / f"{split}.json", VIZWIZ_LAYOUT)
    samples = []
    for index in range(len(records.rows)):
        image = records.get(index, "image")
        question = records.get(index, "question")
        samples.append(
            Sample(
                id=image,
                images=(root / split / image,),
                question=question,
                prompt=f"{question}\n{VIZWIZ_INSTRUCTION}\n{SHORT_ANSWER}",
                answers=_human_answers(records, index),
                fields={"answer_type": records.get(index, "answer_type")},
            )
        )
    require_images(samples, VIZWIZ_LAYOUT)
    return samples


def load_gqa(root: Path, split: str = "testdev_balanced") -> list[Sample]:
    """GQA questions of one split, in the file's order (an object keyed by question id)."""
    root = Path(root)
    path = root / f"{split}_questions.json"
    questions = read_json(path, GQA_LAYOUT)
    if not isinstance(questions, dict) or not questions:
        raise BenchmarkFormatError(f"{path}: expected an object of questions keyed by id")
    samples = []
    for question_id, entry in questions.items():
        missing = [key for key in ("imageId", "question", "answer") if entry.get(key) is None]
        if missing:
            raise BenchmarkFormatError(f"{path}: question {question_id}: missing {missing}")
        samples.append(
            Sample(
                id=str(question_id),
                images=(root / "images" / f"{entry['imageId']}.jpg",),
                question=entry["question"],
                prompt=f"{entry['question']}\n{SHORT_ANSWER}",
                answers=(str(entry["answer"]),),
            )
        )
    require_images(samples, GQA_LAYOUT)
    return samples


def _human_answers(records: Records, index: int) -> tuple[str, ...]:
    answers = records.get(index, "answers")
    texts = tuple(str(answer["answer"]) for answer in answers if answer.get("answer") is not None)
    if len(texts) != HUMAN_ANSWERS:
        raise BenchmarkFormatError(
            f"{records.where(index)}: {len(texts)} human answers, expected {HUMAN_ANSWERS}"
        )
    return texts


def _index(records: Records, key: str) -> dict[Any, int]:
    by_key: dict[Any, int] = {}
    for index in range(len(records.rows)):
        value = records.get(index, key)
        if value in by_key:
            raise BenchmarkFormatError(f"{records.where(index)}: duplicate {key} {value}")
        by_key[value] = index
    return by_key
