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
