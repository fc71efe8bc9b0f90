"""RefCOCO, RefCOCO+ and RefCOCOg: find the box a referring expression describes.

One sample per expression. The answer's first four numbers are the box [x1, y1, x2, y2]:
all within 0..1 means normalised, as LLaVA-1.5 outputs them, relative to the image
padded to a square (its "pad" preprocessing; ``pad_to_square=False`` for models that
normalise to the image itself); otherwise pixels. Precision@1 = the fraction of answers
whose box has IoU > 0.5 with the annotated one (an unparsable answer is a miss).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vllm_prune.eval.files import BenchmarkFormatError, need_file, read_json, require_images
from vllm_prune.eval.sample import Prediction, Sample, Scores, mean

Box = tuple[float, float, float, float]
# dataset -> (partition of refs(...).p, its evaluation splits)
DATASETS = {
    "refcoco": ("unc", ("val", "testA", "testB")),
    "refcoco+": ("unc", ("val", "testA", "testB")),
    "refcocog": ("umd", ("val", "test")),
}
LAYOUT = (
    "ROOT/DATASET/refs(unc).p or refs(umd).p and ROOT/DATASET/instances.json (the refer "
    "toolkit's data folder), images in ROOT/images/mscoco/images/train2014/"
)
PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}."
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def load_refcoco(
    root: Path,
    dataset: str = "refcoco",
    split: str = "val",
    images: str = "images/mscoco/images/train2014",
) -> list[Sample]:
    """Every expression of the split's refs, with the target box in pixels."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(DATASETS)}")
    partition, splits = DATASETS[dataset]
    if split not in splits:
        raise ValueError(f"{dataset} split {split!r}: expected one of {splits}")
    folder = Path(root) / dataset
    refs = _read_refs(need_file(folder / f"refs({partition}).p", LAYOUT))
    instances = read_json(folder / "instances.json", LAYOUT)
    if not isinstance(instances, dict):
        raise BenchmarkFormatError(f"{folder / 'instances.json'}: expected a COCO-style object")
    boxes = {ann["id"]: ann["bbox"] for ann in instances.get("annotations", [])}
    image_info = {image["id"]: image for image in instances.get("images", [])}
    samples = []
    for ref in refs:
        if ref.get("split") != split:
            continue
        if ref.get("ann_id") not in boxes or ref.get("image_id") not in image_info:
            raise BenchmarkFormatError(
                f"{folder}: ref {ref.get('ref_id')} points at an annotation or image "
                "missing from instances.json"
            )
        x, y, w, h = (float(v) for v in boxes[ref["ann_id"]])
        image = image_info[ref["image_id"]]
        for sentence in ref.get("sentences", []):
            if not sentence.get("sent") or "sent_id" not in sentence:
                raise BenchmarkFormatError(f"{folder}: ref {ref['ref_id']}: sentence without text")
            text = sentence["sent"].strip()
            samples.append(
                Sample(
                    id=f"{ref['ref_id']}/{sentence['sent_id']}",
                    images=(Path(root) / images / image["file_name"],),
                    question=text,
                    prompt=PROMPT.format(text),
                    answers=(f"[{x:g}, {y:g}, {x + w:g}, {y + h:g}]",),
                    fields={
                        "box": (x, y, x + w, y + h),
                        "width": int(image["width"]),
                        "height": int(image["height"]),
                    },
                )
            )
    if not samples:
        raise BenchmarkFormatError(f"{folder}: no expressions in split {split!r}")
    require_images(samples, LAYOUT)
    return samples


def parse_box(text: str, width: int, height: int, pad_to_square: bool = True) -> Box | None:
    """The answer's box in image pixels, or None without four numbers."""
    numbers = [float(value) for value in _NUMBER.findall(text)[:4]]
    if len(numbers) < 4:
        return None
    x1, y1, x2, y2 = numbers
    if all(0.0 <= value <= 1.0 for value in numbers):
        if pad_to_square:  # LLaVA pads the shorter side equally on both ends
            side = max(width, height)
            dx, dy = (side - width) / 2, (side - height) / 2
            x1, y1, x2, y2 = x1 * side - dx, y1 * side - dy, x2 * side - dx, y2 * side - dy
        else:
            x1, y1, x2, y2 = x1 * width, y1 * height, x2 * width, y2 * height
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (continuous coordinates)."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_refcoco(predictions: Sequence[Prediction], pad_to_square: bool = True) -> Scores:
    """``precision@0.5`` (IoU > 0.5), ``mean_iou`` and ``unparsed`` (fraction of answers)."""
    ious, unparsed = [], 0
    for sample, text in predictions:
        fields = sample.fields
        box = parse_box(text, fields["width"], fields["height"], pad_to_square)
        unparsed += box is None
        ious.append(0.0 if box is None else iou(box, tuple(fields["box"])))
    return {
        "precision@0.5": mean([float(value > 0.5) for value in ious]),
        "mean_iou": mean(ious),
        "unparsed": unparsed / len(ious),
    }


class _PlainDataUnpickler(pickle.Unpickler):
    """refs(*).p holds only dicts, lists and strings: refuse anything that runs code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_refs(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as handle:
        try:
            refs = _PlainDataUnpickler(handle, encoding="utf-8").load()
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError) as error:
            raise BenchmarkFormatError(f"{path}: not a refer refs pickle ({error})") from error
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise BenchmarkFormatError(f"{path}: expected a list of refs (dicts)")
    return refs
