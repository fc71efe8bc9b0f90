"""The content check's arithmetic: rows two images share are structure, found again later.

The served check (the model embedding two images at start) is in tests/test_generic.py
and tests/test_families.py; these are its pure functions on rows built like a model's.
"""

from __future__ import annotations

import pytest
import torch

from vllm_prune.learned_rows import (
    disagreement,
    distinct_vectors,
    none_found,
    same_rows,
    structure_mask,
)

NEWLINE = torch.full((8,), 0.5)


def image_with_newlines(seed: int, rows: int = 3, cols: int = 4) -> torch.Tensor:
    """A grid's content rows with a learned newline vector after each grid row."""
    content = torch.randn(rows, cols, 8, generator=torch.Generator().manual_seed(seed))
    return torch.cat([content, NEWLINE.expand(rows, 1, 8)], dim=1).reshape(-1, 8)


def test_rows_two_images_share_are_the_learned_ones():
    first, second = image_with_newlines(1), image_with_newlines(2)
    assert same_rows(first, second) == [4, 9, 14]
    # Rounding in a projector run at another batch size still counts as the same vector.
    nudged = second.clone()
    nudged[9] += 1e-6
    assert same_rows(first, nudged) == [4, 9, 14]
    with pytest.raises(ValueError, match="differ in shape"):
        same_rows(first, second[:-1])


def test_the_learned_vectors_are_found_in_an_image_of_another_layout():
    first = image_with_newlines(1)
    vectors = distinct_vectors(first, same_rows(first, image_with_newlines(2)))
    assert vectors.shape == (1, 8)  # one newline, repeated
    other = image_with_newlines(5, rows=2, cols=6)
    assert structure_mask(other, vectors).nonzero().flatten().tolist() == [6, 13]
    assert not structure_mask(torch.randn(20, 8), vectors).any()


def test_a_declaration_that_disagrees_with_the_model_is_named_row_by_row():
    assert disagreement([4, 9, 14], [14, 9, 4], "Arch") is None
    message = disagreement([4, 9, 14], [], "Arch")
    assert message is not None
    assert "declares its image's separator rows as no rows" in message
    assert "share rows [4, 9, 14]" in message and "families.py" in message
    many = disagreement(list(range(40)), [0], "Arch")
    assert many is not None and "(40 in all)" in many


def test_a_family_said_to_hold_learned_rows_whose_model_shows_none_is_named():
    message = none_found("Phi3VForCausalLM", "a sub_GN newline row after each grid row")
    assert "Phi3VForCausalLM's family says its image rows hold learned rows" in message
    assert "share no rows" in message and "VLLM_PLUGINS=''" in message
