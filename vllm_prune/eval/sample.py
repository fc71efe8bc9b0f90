"""The one record every benchmark loader yields, so the eval loop never sees a file format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A file on disk, or the encoded image itself (MMBench ships images inside its TSV).
ImageRef = Path | bytes

# Instructions appended to questions, as LLaVA-1.5 prompts them (docs/Evaluation.md).
SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Sample:
    """One question: what to send (``images`` + ``prompt``) and what to score against.

    ``question`` is the benchmark's own text; ``prompt`` adds the answer-format
    instruction the model should get. ``fields`` holds what a metric needs beyond the
    reference answers (category, box, needle position...).
    """

    id: str
    images: tuple[ImageRef, ...]
    question: str
    prompt: str
    answers: tuple[str, ...]
    fields: Mapping[str, Any] = field(default_factory=dict)


# What a metric scores: each sample with the model's answer text.
Prediction = tuple[Sample, str]
Scores = dict[str, float]


def image_bytes(image: ImageRef) -> bytes:
    """The encoded image (PNG/JPEG...), whether it lives in a file or in the sample."""
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def mean(values: Sequence[float]) -> float:
    """Average that refuses an empty list instead of dividing by zero."""
    if not values:
        raise ValueError("no predictions to score")
    return sum(values) / len(values)
