"""The generic adapter's layout arithmetic: runs, parts, shares and shrunk placeholders."""

from __future__ import annotations

import pytest

from vllm_prune.layout import (
    Part,
    batches,
    content_rows,
    kept_separators,
    part_keeps,
    parts_of,
    run_keeps,
    run_lengths,
    run_rows,
    runs_of,
    shrink,
)

IMG, BREAK, END, BEGIN = 9, 1, 2, 3


def test_runs_of_an_is_embed_mask():
    assert runs_of([False, True, True, False, True, False]) == [2, 1]
    assert runs_of([True] * 4) == [4]
    assert runs_of([False, False]) == []


def test_parts_follow_the_family_declaration():
    # InternVL: one run of three 16 x 16 tiles.
    assert parts_of([768], "square", tile=256) == [Part(0, 256, (16, 16))] * 3
    # Idefics3: one tile per run.
    assert parts_of([64, 64], "square") == [Part(0, 64, (8, 8)), Part(1, 64, (8, 8))]
    # Mistral 3: each run is a row.
    assert parts_of([16, 16], "rows") == [Part(0, 16, (1, 16)), Part(1, 16, (1, 16))]
    # Not declared, or not a square: no grid.
    assert parts_of([50], None) == [Part(0, 50, None)]
    assert parts_of([50], "square") == [Part(0, 50, None)]


def test_keep_is_shared_in_proportion_and_summed_per_run():
    parts = parts_of([768, 256], "square", tile=256)
    keeps = part_keeps(parts, 10)
    assert sum(keeps) == 10 and keeps == [3, 3, 2, 2]
    assert run_keeps(parts, keeps) == [8, 2]


def test_shrink_keeps_every_structure_token_in_place():
    full = [BEGIN, IMG, IMG, IMG, BREAK, IMG, IMG, IMG, END]
    mask = [t == IMG for t in full]
    assert shrink(full, mask, [1, 2]) == [BEGIN, IMG, BREAK, IMG, IMG, END]
    assert shrink(full, mask, [0, 3]) == [BEGIN, BREAK, IMG, IMG, IMG, END]
    assert shrink(full, mask, [3, 3]) == full


def test_shrink_needs_a_keep_per_run():
    with pytest.raises(IndexError):
        shrink([IMG, BREAK, IMG], [True, False, True], [1])


def test_separator_rows_are_laid_out_but_are_not_content():
    # LLaVA-OneVision: a 2 x 2 base, then a 2 x 3 grid with a newline row after each row.
    parts = [Part(0, 4, (2, 2)), Part(0, 6, (2, 3), newlines=1)]
    assert [p.embedded for p in parts] == [4, 8]
    assert run_lengths(parts) == [12]
    # rows 7 and 11 are the newlines
    assert content_rows(parts) == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
    # Parts without separators: their rows in order, run after run.
    plain = parts_of([3, 2], None)
    assert run_lengths(plain) == [3, 2]
    assert content_rows(plain) == [0, 1, 2, 3, 4]


def test_keep_counts_from_n_and_a_pruned_image_drops_its_separators():
    # N = 12 (10 content rows, 2 newlines: rows 7 and 11), as vLLM counts the image.
    parts = [Part(0, 4, (2, 2)), Part(0, 6, (2, 3), newlines=1)]
    assert part_keeps(parts, 12) == [4, 6] and kept_separators(parts, 12) == [7, 11]
    assert run_rows(parts, 12) == [12]  # kept whole: vLLM's own rows, newlines included
    assert part_keeps(parts, 3) == [1, 2] and kept_separators(parts, 3) == []
    assert run_rows(parts, 3) == [3]  # round(12 * 0.25): 3 content rows, no newline
    # Above the content rows: every content row, then the first newlines, so N - keep go.
    assert part_keeps(parts, 11) == [4, 6] and kept_separators(parts, 11) == [7]
    assert run_rows(parts, 11) == [11]
    # Separators counted in the run that holds them.
    two_runs = [Part(0, 4, (2, 2), newlines=1), Part(1, 4, (2, 2), newlines=1)]
    assert kept_separators(two_runs, 10) == [2, 5]
    assert run_rows(two_runs, 10) == [6, 4]
    # No separators: every keep is kept as asked.
    assert run_rows(parts_of([8], "square"), 5) == [5]


def test_images_are_batched_within_the_bound_in_order():
    assert batches([768, 768, 768], 1792) == [(0, 2), (2, 3)]
    assert batches([768, 768], 1792) == [(0, 2)]
    # An image larger than the bound goes alone; none is dropped or reordered.
    assert batches([100, 3000, 100, 100], 1000) == [(0, 1), (1, 2), (2, 4)]
    assert batches([], 10) == []
