"""The synthetic shapes benchmark: determinism, splits, balance, and answers checked
against the pixels actually drawn (not against the scene description)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from vllm_prune.eval.benchmarks import BenchmarkFormatError, load_benchmark
from vllm_prune.eval.shapes import (
    BACKGROUND,
    CELLS,
    COLORS,
    QUESTION_TYPES,
    VOCABULARY,
    ShapesItem,
    generate,
    image_seed,
    load_shapes,
    make_scene,
    normalize_shapes_answer,
    png_bytes,
    render,
    score_shapes,
    write_split,
)

N_IMAGES = 16


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture(scope="module")
def items() -> list[ShapesItem]:
    return list(generate("test", N_IMAGES))


@pytest.fixture(scope="module")
def drawn(items: list[ShapesItem]) -> dict[str, list[Blob]]:
    """The regions found in each image's pixels, by image id (test-000003)."""
    return {image_id(item): blobs(item.image) for item in items[:: len(QUESTION_TYPES)]}


def image_id(item: ShapesItem) -> str:
    return item.id.rsplit("-", 1)[0]


@dataclass
class Blob:
    """A connected patch of one colour found in the pixels."""

    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    pixels: int

    @property
    def shape(self) -> str:
        # Filled share of the bounding box: square 1, circle ~pi/4, triangle ~1/2.
        fill = self.pixels / ((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))
        return "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"

    @property
    def cell(self) -> str:
        size = 336
        cx, cy = (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2
        return CELLS[int(cy * 3 // size) * 3 + int(cx * 3 // size)]


def blobs(image: Image.Image) -> list[Blob]:
    """8-connected non-background regions of the image, each checked to be one colour."""
    pixels = np.asarray(image)
    foreground = np.any(pixels != np.array(BACKGROUND, dtype=np.uint8), axis=2)
    seen = np.zeros_like(foreground)
    names = {rgb: name for name, rgb in COLORS.items()}
    found = []
    height, width = foreground.shape
    for y, x in zip(*np.nonzero(foreground), strict=True):
        if seen[y, x]:
            continue
        seen[y, x] = True
        stack, members = [(y, x)], []
        while stack:
            cy, cx = stack.pop()
            members.append((cy, cx))
            for ny in (cy - 1, cy, cy + 1):
                for nx in (cx - 1, cx, cx + 1):
                    if 0 <= ny < height and 0 <= nx < width:
                        if foreground[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
        ys, xs = zip(*members, strict=True)
        colors = {tuple(int(c) for c in pixels[my, mx]) for my, mx in members}
        assert len(colors) == 1, f"a region of several colours: {colors}"
        box = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
        found.append(Blob(names[colors.pop()], box, len(members)))
    return found


def test_same_seed_same_png_bytes_other_seed_other_image() -> None:
    first = png_bytes(render(make_scene(123)))
    assert png_bytes(render(make_scene(123))) == first
    assert png_bytes(render(make_scene(124))) != first
    again = list(generate("test", 3))
    assert [(i.id, i.question, i.answer) for i in again] == [
        (i.id, i.question, i.answer) for i in generate("test", 3)
    ]


def test_write_split_is_byte_identical_and_loads_back(tmp_path: Path) -> None:
    one = write_split(tmp_path / "one", "test", 6)
    two = write_split(tmp_path / "two", "test", 6)
    assert one.read_bytes() == two.read_bytes()
    pngs = sorted((tmp_path / "one" / "images").glob("*.png"))
    assert len(pngs) == 6
    for path in pngs:
        assert path.read_bytes() == (tmp_path / "two" / "images" / path.name).read_bytes()
    samples = load_benchmark("shapes", tmp_path / "one", split="test")
    assert len(samples) == 6 * len(QUESTION_TYPES)
    generated = list(generate("test", 6))
    for sample, item in zip(samples, generated, strict=True):
        assert (sample.id, sample.question, sample.answers) == (
            item.id,
            item.question,
            (item.answer,),
        )
        assert Image.open(sample.images[0]).tobytes() == item.image.tobytes()
        assert sample.fields["type"] == item.type


def test_train_and_test_never_share_a_seed_or_an_image() -> None:
    train = {image_seed("train", i) for i in range(1000)}
    test = {image_seed("test", i) for i in range(1000)}
    assert not train & test
    train_images = {png_bytes(item.image) for item in generate("train", 8)}
    test_images = {png_bytes(item.image) for item in generate("test", 8)}
    assert len(train_images) == len(test_images) == 8
    assert not train_images & test_images


def test_existence_questions_are_balanced_and_true(
    items: list[ShapesItem], drawn: dict[str, list[Blob]]
) -> None:
    existence = [item for item in items if item.type == "existence"]
    assert Counter(item.answer for item in existence) == {"yes": N_IMAGES // 2, "no": N_IMAGES // 2}
    for item in existence:
        kinds = {(blob.color, blob.shape) for blob in drawn[image_id(item)]}
        _, _, _, color, shape = item.question.rstrip("?").split(" ")
        assert ((color, shape) in kinds) == (item.answer == "yes"), item.question


def test_answers_match_the_drawn_pixels(
    items: list[ShapesItem], drawn: dict[str, list[Blob]]
) -> None:
    for item in items:
        found = drawn[image_id(item)]
        assert len(found) == len(item.objects)  # every object drawn, none merged
        assert item.answer in VOCABULARY
        if item.type == "count":
            shape = item.question.split(" ")[2].rstrip("s")
            assert int(item.answer) == sum(blob.shape == shape for blob in found), item.question
        elif item.type == "color":
            shape = item.question.rstrip("?").split(" ")[-1]
            [only] = [blob for blob in found if blob.shape == shape]
            assert only.color == item.answer
            # the pixel at the object's centre has the answer's colour
            x0, y0, x1, y1 = item.target.box
            centre = item.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))
            assert centre == COLORS[item.answer]
        elif item.type == "location":
            _, _, _, color, shape = item.question.rstrip("?").split(" ")
            [placed] = [b for b in found if (b.color, b.shape) == (color, shape)]
            assert placed.cell == item.answer, item.question


def test_small_objects_are_drawn(items: list[ShapesItem], drawn: dict[str, list[Blob]]) -> None:
    sides = [blob.box[2] - blob.box[0] for found in drawn.values() for blob in found]
    small = [side for side in sides if side <= 28]  # two 14-px patches at 336 px
    assert len(small) >= 0.2 * len(sides)
    assert min(sides) >= 10
    asked_small = [item for item in items if item.target is not None and item.target.side <= 28]
    assert asked_small, "no question about a small object"


def test_score_by_type_and_size(tmp_path: Path) -> None:
    write_split(tmp_path, "test", 2)
    samples = load_shapes(tmp_path)
    by_id = {sample.id: sample for sample in samples}
    first, second = "test-000000", "test-000001"
    predictions = [
        (by_id[f"{first}-existence"], "Yes."),  # right
        (by_id[f"{second}-existence"], "yes"),  # wrong: odd images ask about absent shapes
        (by_id[f"{first}-count"], by_id[f"{first}-count"].answers[0]),  # right
        (by_id[f"{first}-location"], "somewhere"),  # wrong
    ]
    scores = score_shapes(predictions)
    assert scores["accuracy"] == 0.5
    assert scores["accuracy/existence"] == 0.5
    assert scores["accuracy/count"] == 1.0
    assert scores["accuracy/location"] == 0.0
    assert "accuracy/color" not in scores
    # Only the "yes" existence question (right) and the location question (wrong) are
    # about one object; they are scored by that object's size.
    sizes: dict[str, list[float]] = {}
    for (sample, _), right in zip(predictions, [1.0, 0.0, 1.0, 0.0], strict=True):
        side = sample.fields["target_side"]
        if side is not None:
            sizes.setdefault("accuracy/small" if side <= 28 else "accuracy/large", []).append(right)
    assert sum(len(v) for v in sizes.values()) == 2
    for name, values in sizes.items():
        assert scores[name] == sum(values) / len(values)
    assert normalize_shapes_answer(" Top-Left. ") == "top left"
    assert normalize_shapes_answer("Three") == "3"


def test_malformed_question_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_split(tmp_path, "test", 1)
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-1]  # cut the closing brace
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFormatError, match=rf"{path}:3: invalid JSON"):
        load_shapes(tmp_path)
