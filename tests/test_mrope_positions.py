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
    """Token ids and features from ("text", n) / ("image", h, w, kept) / ("video", t, h, w).

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
            _, t, h, w = part
            start = len(tokens)
            for _ in range(t):
                tokens += [STAMP, STAMP, START] + [VIDEO] * (h * w) + [END]
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
