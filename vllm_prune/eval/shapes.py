"""``shapes``: a synthetic benchmark a tiny model can learn, built to expose what pruning
loses: small objects (some only one or two 14-px patches wide at 336 px) and objects
in the corners and edges of the image.

Each image is a plain grey canvas split into a 3x3 grid; 2-6 objects (circle, square,
triangle in 5 colours, every shape+colour at most once) sit in distinct cells, each
wholly inside its cell, at a random place and size. Everything follows from the image's
seed: the same seed gives a byte-identical PNG. Train and test seeds never overlap.

Four questions per image, answers from a small fixed vocabulary (``VOCABULARY``):
  existence  "Is there a red circle?"       yes / no (even images yes, odd images no)
  color      "What color is the circle?"    a colour (asked of a shape drawn once)
  count      "How many squares are there?"  a digit, 0-6
  location   "Where is the red circle?"     the object's grid cell: "top left", "top",
             "top right", "left", "center", "right", "bottom left", "bottom",
             "bottom right"
Scored by exact match after normalisation, overall and per question type, and for
questions about one object, by its size (``small``: at most 28 px wide at 336 px).
"""

from __future__ import annotations

import io
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from vllm_prune.eval.files import BenchmarkFormatError, read_records, require_images
from vllm_prune.eval.sample import SHORT_ANSWER, Prediction, Sample, Scores, mean

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "yellow": (245, 215, 30),
    "purple": (150, 50, 190),
}
BACKGROUND = (128, 128, 128)
CELLS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
QUESTION_TYPES = ("existence", "color", "count", "location")
MIN_OBJECTS, MAX_OBJECTS = 2, 6
VOCABULARY = ("yes", "no", *COLORS, *(str(n) for n in range(MAX_OBJECTS + 1)), *CELLS)
SPLITS = {"train": 0, "test": 1_000_000_000}  # seed offsets: the splits never share a seed
DEFAULT_SIZE = 336  # LLaVA-1.5's input side; 24 x 24 patches of 14 px
SMALL_FRACTION = 0.4  # share of objects drawn small
_SMALL = (10 / 336, 28 / 336)  # small side: 10-28 px at 336, under two patches
_LARGE_MIN = 32 / 336
_MARGIN = 2  # px kept free inside each cell border
LAYOUT = "ROOT/SPLIT.jsonl and ROOT/images/*.png, as written by vllm_prune.eval.shapes.write_split"


@dataclass(frozen=True)
class Shape:
    """One drawn object; ``box`` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    shape: str
    color: str
    box: tuple[int, int, int, int]
    cell: int

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]


@dataclass(frozen=True)
class ShapesItem:
    """One generated question with its image (shared by the image's four questions)."""

    id: str
    image: Image.Image
    question: str
    answer: str
    type: str
    objects: tuple[Shape, ...]
    target: Shape | None  # the object the question is about, if one


def image_seed(split: str, index: int) -> int:
    """Seed of image ``index`` of a split; offsets keep train and test apart."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {tuple(SPLITS)}")
    if not 0 <= index < SPLITS["test"]:
        raise ValueError(f"image index {index} out of range")
    return SPLITS[split] + index


def make_scene(seed: int, size: int = DEFAULT_SIZE) -> tuple[Shape, ...]:
    """The objects of one image: distinct cells, distinct shape+colour, one shape drawn once."""
    if size < 84:
        raise ValueError(f"image size {size} too small (at least 84 px)")
    rng = random.Random(seed)
    count = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    kinds = [(shape, color) for shape in SHAPES for color in COLORS]
    while True:  # the colour question needs a shape drawn exactly once
        chosen = rng.sample(kinds, count)
        if any([shape for shape, _ in chosen].count(shape) == 1 for shape in SHAPES):
            break
    cells = rng.sample(range(9), count)
    return tuple(
        _place(shape, color, cell, size, rng)
        for (shape, color), cell in zip(chosen, cells, strict=True)
    )


def _place(shape: str, color: str, cell: int, size: int, rng: random.Random) -> Shape:
    row, col = divmod(cell, 3)
    left, right = col * size // 3 + _MARGIN, (col + 1) * size // 3 - _MARGIN
    top, bottom = row * size // 3 + _MARGIN, (row + 1) * size // 3 - _MARGIN
    largest = min(right - left, bottom - top)
    if rng.random() < SMALL_FRACTION:
        side = rng.randint(round(_SMALL[0] * size), round(_SMALL[1] * size))
    else:
        side = rng.randint(round(_LARGE_MIN * size), largest)
    x0, y0 = rng.randint(left, right - side), rng.randint(top, bottom - side)
    return Shape(shape, color, (x0, y0, x0 + side, y0 + side), cell)


def render(objects: Sequence[Shape], size: int = DEFAULT_SIZE) -> Image.Image:
    """The image: flat colours, no anti-aliasing, so every pixel is a known colour."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj, COLORS[obj.color])
    return image


def object_map(objects: Sequence[Shape], size: int = DEFAULT_SIZE) -> Image.Image:
    """Which object covers each pixel: 0 for the background, i + 1 for ``objects[i]``."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for index, obj in enumerate(objects):
        _draw(draw, obj, index + 1)
    return image


def _draw(draw: ImageDraw.ImageDraw, obj: Shape, fill: int | tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = obj.box[0], obj.box[1], obj.box[2] - 1, obj.box[3] - 1
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:  # triangle pointing up, base on the box's bottom edge
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding (deterministic: no timestamps or metadata)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def generate(split: str, n_images: int, size: int = DEFAULT_SIZE) -> Iterator[ShapesItem]:
    """Images 0..n_images-1 of a split, four questions each (see the module docstring)."""
    for index in range(n_images):
        yield from image_items(split, index, size)


def image_items(split: str, index: int, size: int = DEFAULT_SIZE) -> list[ShapesItem]:
    """The four questions of one image, by index: random access for training."""
    seed = image_seed(split, index)
    objects = make_scene(seed, size)
    image = render(objects, size)
    rng = random.Random(f"questions/{seed}")
    return [
        ShapesItem(f"{split}-{index:06d}-{kind}", image, question, answer, kind, objects, target)
        for kind, (question, answer, target) in zip(
            QUESTION_TYPES, _questions(objects, index % 2 == 0, rng), strict=True
        )
    ]


def _questions(
    objects: Sequence[Shape], present: bool, rng: random.Random
) -> list[tuple[str, str, Shape | None]]:
    drawn = {(obj.shape, obj.color) for obj in objects}
    if present:
        target: Shape | None = rng.choice(objects)
        asked = (target.shape, target.color)
    else:  # prefer absent kinds sharing a shape or colour with a drawn one (harder "no")
        absent = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in drawn]
        near = [(s, c) for s, c in absent if any(s == o.shape or c == o.color for o in objects)]
        target, asked = None, rng.choice(near or absent)
    existence = (f"Is there a {asked[1]} {asked[0]}?", "yes" if present else "no", target)

    once = [s for s in SHAPES if sum(obj.shape == s for obj in objects) == 1]
    unique_shape = rng.choice(once)
    only = next(obj for obj in objects if obj.shape == unique_shape)
    color = (f"What color is the {only.shape}?", only.color, only)

    counts = {shape: sum(obj.shape == shape for obj in objects) for shape in SHAPES}
    number = rng.choice(sorted(set(counts.values())))  # spread the answers over the counts
    counted = rng.choice([shape for shape in SHAPES if counts[shape] == number])
    count = (f"How many {counted}s are there?", str(number), None)

    placed = rng.choice(objects)
    location = (f"Where is the {placed.color} {placed.shape}?", CELLS[placed.cell], placed)
    return [existence, color, count, location]


def write_split(folder: Path, split: str, n_images: int, size: int = DEFAULT_SIZE) -> Path:
    """Materialise a split: ``folder/images/*.png`` and ``folder/SPLIT.jsonl``; returns the latter."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    questions = folder / f"{split}.jsonl"
    with questions.open("w", encoding="utf-8") as handle:
        for item in generate(split, n_images, size):
            name = f"images/{item.id.rsplit('-', 1)[0]}.png"
            if item.type == QUESTION_TYPES[0]:  # an image's first question: write it once
                (folder / name).write_bytes(png_bytes(item.image))
            record = {
                "id": item.id,
                "image": name,
                "question": item.question,
                "answer": item.answer,
                "type": item.type,
                "objects": [asdict(obj) for obj in item.objects],
                "target": None if item.target is None else item.objects.index(item.target),
                "size": size,
            }
            handle.write(json.dumps(record) + "\n")
    return questions


def load_shapes(root: Path, split: str = "test") -> list[Sample]:
    """A materialised split as Samples; ``fields`` keep the type, objects and target."""
    records = read_records(Path(root) / f"{split}.jsonl", LAYOUT)
    samples = []
    for index in range(len(records.rows)):
        kind, answer = records.get(index, "type"), records.get(index, "answer")
        if kind not in QUESTION_TYPES or answer not in VOCABULARY:
            raise BenchmarkFormatError(
                f"{records.where(index)}: type {kind!r} / answer {answer!r} not a shapes one"
            )
        question = records.get(index, "question")
        target = records.rows[index].get("target")
        objects = records.get(index, "objects")
        samples.append(
            Sample(
                id=records.get(index, "id"),
                images=(Path(root) / records.get(index, "image"),),
                question=question,
                prompt=f"{question}\n{SHORT_ANSWER}",
                answers=(answer,),
                fields={
                    "type": kind,
                    "objects": objects,
                    "target_side": None if target is None else _side(objects[target]),
                    "size": records.get(index, "size"),
                },
            )
        )
    require_images(samples, LAYOUT)
    return samples


def _side(obj: dict) -> int:
    return obj["box"][2] - obj["box"][0]


_NUMBER_WORDS = {w: str(n) for n, w in enumerate("zero one two three four five six".split())}


def normalize_shapes_answer(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces, number words to digits."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(word, word) for word in words)


def score_shapes(predictions: Sequence[Prediction]) -> Scores:
    """``accuracy``, ``accuracy/<type>`` and ``accuracy/small`` / ``accuracy/large`` targets."""
    groups: dict[str, list[float]] = defaultdict(list)
    for sample, text in predictions:
        right = float(normalize_shapes_answer(text) == sample.answers[0])
        groups["accuracy"].append(right)
        groups[f"accuracy/{sample.fields['type']}"].append(right)
        side = sample.fields.get("target_side")
        if side is not None:
            small = side <= _SMALL[1] * sample.fields["size"]
            groups["accuracy/small" if small else "accuracy/large"].append(right)
    if not groups:
        raise ValueError("no predictions to score")
    return {name: mean(values) for name, values in sorted(groups.items())}
