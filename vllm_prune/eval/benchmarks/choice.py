"""Multiple choice: ScienceQA-IMG and MMBench, scored by the option letter in the answer.

The letter is read as LLaVA's eval_science_qa.py reads it ("B", "B. ...", "The answer
is B.") plus "(B)", "B)" and "B:"; an answer that is exactly one option's text counts
as that option. Anything else is wrong (no GPT matching, unlike MMBench's server).

MMBench circular evaluation is optional (``circular=True``): each question is asked
once per rotation of its options, as LLaVA's ``--all-rounds``, and counts as right
only when every rotation is (``circular_accuracy``). The loader does the rotations.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from vllm_prune.eval.files import (
    BenchmarkFormatError,
    Records,
    read_json,
    read_tsv,
    require_images,
)
from vllm_prune.eval.sample import OPTION_LETTER, Prediction, Sample, Scores, mean

LETTERS = "ABCDE"
SCIENCEQA_LAYOUT = (
    "ROOT/problems.json, ROOT/pid_splits.json, ROOT/images/SPLIT/<problem id>/image.png "
    "(data/scienceqa of the ScienceQA repository)"
)
MMBENCH_LAYOUT = "ROOT/SPLIT.tsv, e.g. ROOT/mmbench_dev_20230712.tsv (images inside the TSV)"
_LEADING_LETTER = re.compile(r"^\(?([A-E])(?:[.):]|$)")
_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-E])\b", re.IGNORECASE)


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The option letter an answer picks, or None when it picks none clearly."""
    letters = LETTERS[: len(options)]
    text = text.strip()
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        found = pattern.search(text)
        if found and found.group(1) in letters:
            return found.group(1)
    as_text = text.rstrip(".").strip().lower()
    pairs = zip(letters, options, strict=True)
    matches = [letter for letter, option in pairs if option.lower() == as_text]
    return matches[0] if len(matches) == 1 else None


def options_prompt(question: str, options: Sequence[str], context: str | None) -> str:
    """LLaVA's layout: optional context, the question, "A. ..." lines, the instruction."""
    lines = [context, question] if context else [question]
    pairs = zip(LETTERS[: len(options)], options, strict=True)
    lines += [f"{letter}. {option}" for letter, option in pairs]
    return "\n".join([*lines, OPTION_LETTER])


def score_choice(predictions: Sequence[Prediction]) -> Scores:
    """``accuracy``; with rotated MMBench rounds also ``circular_accuracy``."""
    right = [parse_choice(text, sample.fields["options"]) == sample.answers[0]
             for sample, text in predictions]  # fmt: skip
    scores: Scores = {"accuracy": mean([float(value) for value in right])}
    if any("circular_group" in sample.fields for sample, _ in predictions):
        per_question: dict[str, list[bool]] = defaultdict(list)
        for (sample, _), value in zip(predictions, right, strict=True):
            per_question[sample.fields["circular_group"]].append(value)
        scores["circular_accuracy"] = mean([float(all(v)) for v in per_question.values()])
    return scores


def load_scienceqa_img(root: Path, split: str = "test") -> list[Sample]:
    """The problems of ``split`` that have an image (ScienceQA-IMG), in pid_splits order."""
    root = Path(root)
    problems = read_json(root / "problems.json", SCIENCEQA_LAYOUT)
    splits = read_json(root / "pid_splits.json", SCIENCEQA_LAYOUT)
    if split not in splits:
        raise BenchmarkFormatError(f"{root / 'pid_splits.json'}: no split {split!r}")
    samples = []
    for pid in splits[split]:
        problem = problems.get(str(pid))
        if problem is None:
            raise BenchmarkFormatError(f"{root / 'problems.json'}: no problem {pid}")
        if not problem.get("image"):
            continue  # text-only problem: not part of ScienceQA-IMG
        choices = [str(choice) for choice in problem["choices"]]
        answer = problem["answer"]
        if (
            len(choices) > len(LETTERS)
            or not isinstance(answer, int)
            or not 0 <= answer < len(choices)
        ):
            raise BenchmarkFormatError(f"{root / 'problems.json'}: problem {pid}: bad answer")
        hint = (problem.get("hint") or "").strip()
        samples.append(
            Sample(
                id=str(pid),
                images=(root / "images" / split / str(pid) / problem["image"],),
                question=problem["question"],
                prompt=options_prompt(
                    problem["question"], choices, f"Context: {hint}" if hint else None
                ),
                answers=(LETTERS[answer],),
                fields={"options": choices, "subject": problem.get("subject")},
            )
        )
    require_images(samples, SCIENCEQA_LAYOUT)
    return samples


def load_mmbench(
    root: Path, split: str = "mmbench_dev_20230712", circular: bool = False
) -> list[Sample]:
    """MMBench rows; with ``circular`` one sample per rotation of the options."""
    records = read_tsv(Path(root) / f"{split}.tsv", MMBENCH_LAYOUT)
    by_index = {records.rows[i].get("index"): i for i in range(len(records.rows))}
    samples = []
    for row in range(len(records.rows)):
        index = records.get(row, "index")
        options = []
        for letter in LETTERS[:4]:
            option = records.rows[row].get(letter)
            if option is None:
                break
            options.append(option)
        answer = records.get(row, "answer").strip()
        if len(options) < 2 or answer not in LETTERS[: len(options)]:
            raise BenchmarkFormatError(
                f"{records.where(row)} (index {index}): answer {answer!r} is not one of "
                f"{len(options)} options"
            )
        image = _mmbench_image(records, row, by_index)
        question, hint = records.get(row, "question"), records.rows[row].get("hint")
        rounds = len(options) if circular else 1
        for turn in range(rounds):
            rotated = options[turn:] + options[:turn]
            letter = LETTERS[(LETTERS.index(answer) - turn) % len(options)]
            fields = {"options": rotated, "category": records.rows[row].get("category")}
            if circular:
                fields.update(circular_group=index, round=turn)
            samples.append(
                Sample(
                    id=f"{index}" if not circular else f"{index}#{turn}",
                    images=(image,),
                    question=question,
                    prompt=options_prompt(question, rotated, hint),
                    answers=(letter,),
                    fields=fields,
                )
            )
    return samples


def _mmbench_image(records: Records, row: int, by_index: dict[str, int]) -> bytes:
    """The row's base64 image; a short number there points at another row's image."""
    value = records.get(row, "image")
    if value.isdigit() and value in by_index and by_index[value] != row:
        value = records.get(by_index[value], "image")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise BenchmarkFormatError(f"{records.where(row)}: image is not base64") from error
