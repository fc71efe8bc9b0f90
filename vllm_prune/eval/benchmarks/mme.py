"""MME: yes/no questions, two per image, over 10 perception and 4 cognition subtasks.

Scored as MME's eval_tool/calculation.py: an answer is "yes"/"no" when it is exactly
that, else when its first 4 characters hold "yes" (then "no"), else "other" (wrong).
Subtask score = 100 * accuracy + 100 * accuracy+ (images whose questions are all
right); perception and cognition are the sums over their subtasks (max 2000 / 800).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vllm_prune.eval.files import BenchmarkFormatError, need_file
from vllm_prune.eval.sample import SHORT_ANSWER, Prediction, Sample, Scores, mean

PERCEPTION = (
    "existence", "count", "position", "color", "posters",
    "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
LAYOUT = (
    "ROOT = MME_Benchmark_release_version/ holding one folder per subtask, each either "
    "images/ + questions_answers_YN/ or flat; NAME.txt holds 'question<TAB>Yes|No' lines "
    "about the image NAME.jpg or NAME.png"
)
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def load_mme(root: Path, subtasks: Sequence[str] | None = None) -> list[Sample]:
    """All 14 subtasks, or the ``subtasks`` named (their sums are then partial)."""
    chosen = tuple(subtasks) if subtasks is not None else PERCEPTION + COGNITION
    unknown = sorted(set(chosen) - set(PERCEPTION + COGNITION))
    if unknown:
        raise ValueError(f"unknown MME subtasks {unknown}: expected {PERCEPTION + COGNITION}")
    samples: list[Sample] = []
    for subtask in chosen:
        samples.extend(_load_subtask(Path(root), subtask))
    return samples


def _load_subtask(root: Path, subtask: str) -> list[Sample]:
    folder = root / subtask
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: MME subtask folder not found (layout: {LAYOUT})")
    if (folder / "images").is_dir():
        image_dir, qa_dir = folder / "images", folder / "questions_answers_YN"
    else:
        image_dir = qa_dir = folder
    text_files = sorted(qa_dir.glob("*.txt")) if qa_dir.is_dir() else []
    if not text_files:
        raise FileNotFoundError(f"{qa_dir}: no question files (layout: {LAYOUT})")
    samples: list[Sample] = []
    for text_file in text_files:
        image = _image_for(image_dir, text_file)
        lines = text_file.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.strip().split("\t")
            answer = parts[-1].strip().lower()
            if len(parts) != 2 or answer not in ("yes", "no"):
                raise BenchmarkFormatError(
                    f"{text_file}:{number}: expected 'question<TAB>Yes|No', got {line!r}"
                )
            question = parts[0].strip()
            samples.append(
                Sample(
                    id=f"{subtask}/{image.name}#{number}",
                    images=(image,),
                    question=question,
                    prompt=f"{question}\n{SHORT_ANSWER}",
                    answers=(answer,),
                    fields={"subtask": subtask, "image": f"{subtask}/{image.name}"},
                )
            )
    return samples


def _image_for(image_dir: Path, text_file: Path) -> Path:
    for suffix in _IMAGE_SUFFIXES:
        candidate = image_dir / (text_file.stem + suffix)
        if candidate.is_file():
            return candidate
    return need_file(image_dir / f"{text_file.stem}.jpg", LAYOUT)


def parse_mme(text: str) -> str:
    """calculation.py's rule, on the lower-cased answer: yes, no or other."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def score_mme(predictions: Sequence[Prediction]) -> Scores:
    """``perception``, ``cognition`` and per subtask ``score``, ``acc``, ``acc_plus``."""
    per_subtask: dict[str, dict[str, list[bool]]] = {}
    for sample, text in predictions:
        images = per_subtask.setdefault(sample.fields["subtask"], {})
        images.setdefault(sample.fields["image"], []).append(parse_mme(text) == sample.answers[0])
    if not per_subtask:
        raise ValueError("no predictions to score")
    scores: Scores = {"perception": 0.0, "cognition": 0.0}
    for subtask, images in sorted(per_subtask.items()):
        accuracy = mean([float(right) for answers in images.values() for right in answers])
        accuracy_plus = mean([float(all(answers)) for answers in images.values()])
        scores[f"{subtask}/acc"] = accuracy
        scores[f"{subtask}/acc_plus"] = accuracy_plus
        scores[f"{subtask}/score"] = 100 * accuracy + 100 * accuracy_plus
        group = "perception" if subtask in PERCEPTION else "cognition"
        scores[group] += scores[f"{subtask}/score"]
    return scores
