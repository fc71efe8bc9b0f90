"""M-RoPE positions of pruned Qwen2-VL prompts against vLLM's own unpruned positions.

vLLM's ``Qwen2VLForConditionalGeneration.get_mrope_input_positions`` is the
reference (it only reads the grids through ``iter_mm_grid_thw``, given here).
A pruned prompt's positions are ours at request time plus the retained rows'
grid offsets that the model adds in ``forward``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration

from vllm_prune.integration.qwen2_vl import grid_offsets, pruned_mrope_positions


def vllm_positions(length: int, grids: list[tuple[int, int, int, int, float]]):
    """vLLM's positions for an unpruned prompt with items at ``(offset, t, h, w, t_factor)``."""
    fake = SimpleNamespace(iter_mm_grid_thw=lambda features: iter(grids))
    return Qwen2VLForConditionalGeneration.get_mrope_input_positions(fake, [0] * length, [])


def retained(n: int, keep: int, seed: int) -> torch.Tensor:
    return torch.sort(
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep]
    ).values


@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (1, 9)])
@pytest.mark.parametrize("after", [7, 0])
def test_retained_tokens_keep_their_positions_and_the_text_after_follows(shape, after):
    h, w = shape
    n, before, keep = h * w, 5, max(1, h * w // 4)
    unpruned, unpruned_delta = vllm_positions(before + n + after, [(before, 1, h, w, 1.0)])

    rows = retained(n, keep, seed=h + w)
    length = before + keep + after
    ours, delta = pruned_mrope_positions([0] * length, [(before, 1, h, w, 1.0, keep)])
    image = slice(before, before + keep)
    ours[:, image] += grid_offsets(rows, w)  # what forward adds

    assert torch.equal(ours[:, :before], unpruned[:, :before])
    assert torch.equal(ours[:, image], unpruned[:, before + rows])
    assert torch.equal(ours[:, before + keep :], unpruned[:, before + n :])
    # Generated tokens continue from the same position (delta is relative to length).
    assert length + delta == before + n + after + unpruned_delta


def test_unpruned_items_are_exactly_vllms_positions_videos_included():
    items = [(3, 1, 8, 8, 1.0), (3 + 64 + 4, 2, 4, 6, 2.0), (3 + 64 + 4 + 48 + 2, 1, 5, 5, 1.0)]
    length = 3 + 64 + 4 + 48 + 2 + 25 + 6
    expected, expected_delta = vllm_positions(length, items)
    ours, delta = pruned_mrope_positions(
        [0] * length, [(*item, item[1] * item[2] * item[3]) for item in items]
    )
    assert torch.equal(ours, expected)
    assert delta == expected_delta


def test_two_images_one_pruned_one_not():
    first, second = (1, 8, 8), (1, 6, 10)
    unpruned_len = 2 + 64 + 3 + 60 + 4
    unpruned, unpruned_delta = vllm_positions(
        unpruned_len, [(2, *first, 1.0), (2 + 64 + 3, *second, 1.0)]
    )
    rows = retained(64, 10, seed=0)
    length = 2 + 10 + 3 + 60 + 4
    ours, delta = pruned_mrope_positions(
        [0] * length, [(2, *first, 1.0, 10), (2 + 10 + 3, *second, 1.0, 60)]
    )
    ours[:, 2:12] += grid_offsets(rows, 8)
    assert torch.equal(ours[:, 2:12], unpruned[:, 2 + rows])
    assert torch.equal(ours[:, 12:], unpruned[:, 2 + 64 :])  # text, second image, text
    assert length + delta == unpruned_len + unpruned_delta


# -- Qwen3-VL: its own iterator over the prompt (videos: one item per frame) ----------------

IMAGE, VIDEO, START, END, STAMP, TEXT = 1, 2, 3, 4, 5, 0
QWEN3_CONFIG = SimpleNamespace(
    video_token_id=VIDEO,
    vision_start_token_id=START,
    vision_end_token_id=END,
    vision_config=SimpleNamespace(spatial_merge_size=2),
)


def qwen3_feature(modality: str, offset: int, length: int, grid: tuple[int, int, int]):
    """What vLLM hands ``get_mrope_input_positions`` per item (only what it reads)."""
    key = f"{modality}_grid_thw"
    return SimpleNamespace(
        modality=modality,
        mm_position=SimpleNamespace(offset=offset, length=length),
        data={key: SimpleNamespace(data=torch.tensor(grid))},
    )


def qwen3_prompt(parts: list) -> tuple[list[int], list]:
    """Token ids and features from ("text", n) / ("image", h, w, kept) / ("video", t, h, w)
    / ("video", t, h, w, kept per frame).

    h, w count merged tokens; a video frame is two timestamp tokens, then
    <vision_start> pads <vision_end>, as Qwen3-VL's processor writes it.
    """
    tokens: list[int] = []
    features = []
    for part in parts:
        if part[0] == "text":
            tokens += [TEXT] * part[1]
        elif part[0] == "image":
            _, h, w, kept = part
            tokens.append(START)
            features.append(qwen3_feature("image", len(tokens), kept, (1, 2 * h, 2 * w)))
            tokens += [IMAGE] * kept + [END]
        else:
            _, t, h, w, *kept = part
            start = len(tokens)
            for f in range(t):
                tokens += [STAMP, STAMP, START] + [VIDEO] * (kept[0][f] if kept else h * w) + [END]
            features.append(qwen3_feature("video", start, len(tokens) - start, (t, 2 * h, 2 * w)))
    return tokens, features


def qwen3_ours(tokens: list[int], features: list) -> tuple[torch.Tensor, int]:
    from vllm_prune.integration.qwen3_vl import PruneQwen3ModelMixin

    model = SimpleNamespace(config=QWEN3_CONFIG)
    items = PruneQwen3ModelMixin._mm_items(model, tokens, features)
    return pruned_mrope_positions(tokens, items)


def qwen3_vllm(tokens: list[int], features: list) -> tuple[torch.Tensor, int]:
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration._get_mrope_input_positions(
        tokens, features, QWEN3_CONFIG
    )


def test_qwen3_unpruned_prompts_get_exactly_vllms_positions_videos_included():
    parts = [("text", 3), ("image", 4, 6, 24), ("text", 2), ("video", 3, 2, 3), ("text", 5)]
    tokens, features = qwen3_prompt(parts)
    ours, delta = qwen3_ours(tokens, features)
    expected, expected_delta = qwen3_vllm(tokens, features)
    assert torch.equal(ours, expected)
    assert delta == expected_delta


@pytest.mark.parametrize("video_first", [False, True])
def test_qwen3_pruned_image_beside_a_video_keeps_every_position(video_first):
    """Image then video, video then image: each retained row, the video's frames and
    timestamps and all text at their unpruned positions."""
    h, w, keep = 6, 8, 12
    image, video = ("image", h, w, h * w), ("video", 2, 3, 4)
    order = [video, image] if video_first else [image, video]
    full_tokens, full_features = qwen3_prompt([("text", 4), order[0], ("text", 3), order[1]])
    unpruned, unpruned_delta = qwen3_vllm(full_tokens, full_features)

    pruned_image = ("image", h, w, keep)
    order = [video, pruned_image] if video_first else [pruned_image, video]
    tokens, features = qwen3_prompt([("text", 4), order[0], ("text", 3), order[1]])
    ours, delta = qwen3_ours(tokens, features)
    (image_feature,) = [f for f in features if f.modality == "image"]
    (full_image,) = [f for f in full_features if f.modality == "image"]
    start, full_start = image_feature.mm_position.offset, full_image.mm_position.offset
    rows = retained(h * w, keep, seed=3)
    ours[:, start : start + keep] += grid_offsets(rows, w)  # what forward adds

    assert torch.equal(ours[:, :start], unpruned[:, :full_start])
    assert torch.equal(ours[:, start : start + keep], unpruned[:, full_start + rows])
    assert torch.equal(ours[:, start + keep :], unpruned[:, full_start + h * w :])
    assert len(tokens) + delta == len(full_tokens) + unpruned_delta


# -- Videos pruned per frame ----------------------------------------------------------------


def frame_rows(h: int, w: int, keeps: list[int], seed: int) -> list[torch.Tensor]:
    """Retained tokens of each frame, raster order inside the frame."""
    return [retained(h * w, k, seed=seed + f) for f, k in enumerate(keeps)]


def video_unpruned_columns(base: int, h: int, w: int, rows: list[torch.Tensor]) -> torch.Tensor:
    """Where each retained token of a Qwen2-VL video sits in the unpruned prompt."""
    return torch.cat([base + f * h * w + r for f, r in enumerate(rows)])


def add_offsets(ours: torch.Tensor, start: int, rows: list[torch.Tensor], w: int) -> None:
    """What ``forward`` adds: each retained row's (0, row, col) inside its frame."""
    kept = torch.cat(rows)
    ours[:, start : start + kept.numel()] += grid_offsets(kept, w)


@pytest.mark.parametrize("t_factor", [1.0, 2.0, 0.5, 1.5])
@pytest.mark.parametrize("image_first", [False, True])
def test_qwen2_pruned_video_beside_an_image_keeps_every_position(t_factor, image_first):
    """Qwen2.5-VL: a video's retained tokens keep their (t, h, w), frames spaced by
    t_factor; an image before or after it and the text after both continue unpruned."""
    (t, h, w), keeps = (4, 3, 5), [6, 1, 4, 3]
    image = (1, 4, 4)
    n_video, n_image = t * h * w, 16
    if image_first:
        layout = [(2, *image, 1.0), (2 + n_image + 3, t, h, w, t_factor)]
    else:
        layout = [(2, t, h, w, t_factor), (2 + n_video + 3, *image, 1.0)]
    full_length = 2 + n_video + 3 + n_image + 5
    unpruned, unpruned_delta = vllm_positions(full_length, layout)

    kept = sum(keeps)
    rows = frame_rows(h, w, keeps, seed=5)
    length = full_length - n_video + kept
    if image_first:
        items = [
            (2, *image, 1.0, n_image),
            (2 + n_image + 3, t, h, w, t_factor, kept, tuple(keeps)),
        ]
        video_start, full_video_start = 2 + n_image + 3, 2 + n_image + 3
    else:
        items = [(2, t, h, w, t_factor, kept, tuple(keeps)), (2 + kept + 3, *image, 1.0, n_image)]
        video_start, full_video_start = 2, 2
    ours, delta = pruned_mrope_positions([0] * length, items)
    add_offsets(ours, video_start, rows, w)

    video = slice(video_start, video_start + kept)
    assert torch.equal(ours[:, :video_start], unpruned[:, :full_video_start])
    assert torch.equal(
        ours[:, video], unpruned[:, video_unpruned_columns(full_video_start, h, w, rows)]
    )
    assert torch.equal(ours[:, video_start + kept :], unpruned[:, full_video_start + n_video :])
    assert length + delta == full_length + unpruned_delta


def test_qwen2_two_pruned_videos_and_the_model_mixin_reads_the_frame_counts():
    """Two videos through ``PruneQwenModelMixin._mm_items``: the per-frame counts come from
    the processor's field on each video item, the grids from vLLM's iterator."""
    from vllm_prune.integration import wire
    from vllm_prune.integration.qwen2_vl import PruneQwenModelMixin

    first, second = (2, 4, 4, 2.0), (3, 2, 6, 1.0)
    keeps_one, keeps_two = [5, 3], [2, 2, 4]
    full = [(1, *first), (1 + 32 + 2, *second)]
    full_length = 1 + 32 + 2 + 36 + 4
    unpruned, unpruned_delta = vllm_positions(full_length, full)

    k1, k2 = sum(keeps_one), sum(keeps_two)
    offsets = [1, 1 + k1 + 2]
    features = [
        SimpleNamespace(
            modality="video",
            mm_position=SimpleNamespace(offset=o, length=k),
            data={wire.key(wire.FRAME_KEEPS_KEY, "video"): SimpleNamespace(data=torch.tensor(f))},
        )
        for o, k, f in zip(offsets, (k1, k2), (keeps_one, keeps_two), strict=True)
    ]
    grids = [(offsets[0], *first), (offsets[1], *second)]
    model = SimpleNamespace(iter_mm_grid_thw=lambda ordered: iter(grids))
    length = full_length - 32 - 36 + k1 + k2
    tokens = [0] * length
    ours, delta = pruned_mrope_positions(
        tokens, PruneQwenModelMixin._mm_items(model, tokens, features)
    )
    rows_one, rows_two = frame_rows(4, 4, keeps_one, 1), frame_rows(2, 6, keeps_two, 2)
    add_offsets(ours, offsets[0], rows_one, 4)
    add_offsets(ours, offsets[1], rows_two, 6)
    assert torch.equal(ours[:, 1 : 1 + k1], unpruned[:, video_unpruned_columns(1, 4, 4, rows_one)])
    assert torch.equal(ours[:, 1 + k1 : 1 + k1 + 2], unpruned[:, 1 + 32 : 1 + 32 + 2])
    second_cols = video_unpruned_columns(1 + 32 + 2, 2, 6, rows_two)
    assert torch.equal(ours[:, offsets[1] : offsets[1] + k2], unpruned[:, second_cols])
    assert torch.equal(ours[:, offsets[1] + k2 :], unpruned[:, 1 + 32 + 2 + 36 :])
    assert length + delta == full_length + unpruned_delta


@pytest.mark.parametrize("layout", ["video", "image-video", "video-image", "two-videos"])
def test_qwen3_pruned_video_frames_keep_their_positions_and_timestamps(layout):
    """Qwen3-VL: each frame keeps its own count between its timestamp and markers; every
    retained token, every timestamp and all text sit where they are unpruned."""
    t, h, w = 3, 3, 4
    keeps = [5, 1, 7]
    video = ("video", t, h, w)
    pruned = ("video", t, h, w, keeps)
    image = ("image", 4, 4, 16)
    shapes = {
        "video": ([video], [pruned]),
        "image-video": ([image, video], [image, pruned]),
        "video-image": ([video, image], [pruned, image]),
        "two-videos": ([video, video], [pruned, ("video", t, h, w, [2, 2, 2])]),
    }[layout]
    full_tokens, full_features = qwen3_prompt(_flatten(shapes[0]))
    tokens, features = qwen3_prompt(_flatten(shapes[1]))
    unpruned, unpruned_delta = qwen3_vllm(full_tokens, full_features)
    ours, delta = qwen3_ours(tokens, features)

    # Map every prompt token of the pruned prompt to its place in the unpruned one.
    columns, full_at = [], 0
    for part in _flatten(shapes[1]):
        if part[0] == "text":
            columns += range(full_at, full_at + part[1])
            full_at += part[1]
        elif part[0] == "image":
            columns += range(full_at, full_at + 2 + 16)
            full_at += 2 + 16
        else:
            frame_keeps = part[4] if len(part) > 4 else [h * w] * t
            for f, k in enumerate(frame_keeps):
                rows = retained(h * w, k, seed=f) if k < h * w else torch.arange(h * w)
                start = len(columns) + 3
                columns += range(full_at, full_at + 3)  # timestamp, timestamp, <vision_start>
                columns += (full_at + 3 + rows).tolist()
                columns.append(full_at + 3 + h * w)  # <vision_end>
                ours[:, start : start + k] += grid_offsets(rows, w) if k < h * w else 0
                full_at += 3 + h * w + 1
    assert torch.equal(ours, unpruned[:, columns])
    assert len(tokens) + delta == len(full_tokens) + unpruned_delta


def _flatten(media: list) -> list:
    """Text, the media with text between, text: the prompts these tests compare."""
    out: list = [("text", 3)]
    for m in media:
        out += [m, ("text", 2)]
    return out


# -- the generic adapter's M-RoPE families (GLM-4.1V): the model's own positions, grown ----


def glm_positions(tokens: list[int], features: list) -> tuple[torch.Tensor, int]:
    """vLLM's ``Glm4vForConditionalGeneration.get_mrope_input_positions`` with its own
    ``iter_mm_grid_thw`` (which reads each image's grid and checks its placeholder)."""
    from vllm.model_executor.models.glm4_1v import Glm4vForConditionalGeneration

    config = SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2))
    fake = SimpleNamespace(config=config)
    fake.iter_mm_grid_thw = lambda f: Glm4vForConditionalGeneration.iter_mm_grid_thw(fake, f)
    return Glm4vForConditionalGeneration.get_mrope_input_positions(fake, tokens, features)


def glm_image(offset: int, length: int, h: int, w: int):
    from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange

    grid = SimpleNamespace(data=torch.tensor([1, 2 * h, 2 * w]))
    return MultiModalFeatureSpec(
        data={"image_grid_thw": grid},  # type: ignore[arg-type]
        modality="image",
        identifier=f"image-{offset}",
        mm_position=PlaceholderRange(offset=offset, length=length),
    )


@pytest.mark.parametrize("after", [4, 0])
def test_generic_positions_are_the_models_own_at_the_kept_rows(after):
    """Two images, the first pruned to 10 of 8 x 6 and the last to 7 of 4 x 5, one unpruned
    between: retained rows get their unpruned positions (base + the offset forward adds),
    every other token its own, and generation continues where it would unpruned."""
    from vllm_prune.integration.positions import positions_of_pruned

    IMG = 9
    grids = [(8, 6, 10), (4, 4, 16), (4, 5, 7)]  # h, w, kept
    text = [5, 3, 2, after]
    unpruned_tokens, pruned_tokens, unpruned_items, pruned_items, cuts = [], [], [], [], {}
    for (h, w, kept), before in zip(grids, text, strict=False):
        unpruned_tokens += [1] * before
        pruned_tokens += [1] * before
        unpruned_items.append(glm_image(len(unpruned_tokens), h * w, h, w))
        pruned_items.append(glm_image(len(pruned_tokens), kept, h, w))
        if kept < h * w:
            cuts[len(pruned_tokens)] = (kept, h * w)
        unpruned_tokens += [IMG] * (h * w)
        pruned_tokens += [IMG] * kept
    unpruned_tokens += [1] * after
    pruned_tokens += [1] * after
    expected, expected_delta = glm_positions(unpruned_tokens, unpruned_items)

    ours, delta = positions_of_pruned(
        glm_positions, pruned_tokens, pruned_items, lambda f: cuts.get(f.mm_position.offset)
    )
    assert ours.shape == (3, len(pruned_tokens))
    assert len(pruned_tokens) + delta == len(unpruned_tokens) + expected_delta
    at, unpruned_at = 0, 0
    for index, ((h, w, kept), before) in enumerate(zip(grids, text, strict=False)):
        assert torch.equal(
            ours[:, at : at + before], expected[:, unpruned_at : unpruned_at + before]
        )
        at, unpruned_at = at + before, unpruned_at + before
        rows = retained(h * w, kept, seed=index)
        image = ours[:, at : at + kept].clone()
        if kept < h * w:
            image += grid_offsets(rows, w)  # what forward adds
        else:
            rows = torch.arange(h * w)
        assert torch.equal(image, expected[:, unpruned_at + rows]), index
        at, unpruned_at = at + kept, unpruned_at + h * w
    assert torch.equal(ours[:, at:], expected[:, unpruned_at:])


def test_generic_positions_of_an_unpruned_prompt_are_the_models_own():
    from vllm_prune.integration.positions import positions_of_pruned

    tokens = [1] * 3 + [9] * 48 + [1] * 4
    items = [glm_image(3, 48, 8, 6)]
    expected = glm_positions(tokens, items)
    ours = positions_of_pruned(glm_positions, tokens, items, lambda f: None)
    assert torch.equal(ours[0], expected[0]) and ours[1] == expected[1]
