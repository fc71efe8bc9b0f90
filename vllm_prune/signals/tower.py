"""What the vision tower measures for the methods of one batch, per image.

The family says which attention modules are its layers; the methods' needs say
what to capture: the [CLS] row and keys of the selected layer
(``vision_attention``) and the attention received in the selected layer and in
HiPrune's object layer (``tower_attention``). Nothing is hooked when no method
needs it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..methods.base import TOWER_ATTENTION, VISION_ATTENTION, object_layer
from .cls_attention import ClsAttention, capture_cls_attention
from .heads import SumOverRanks, one_rank
from .received_attention import capture_received_attention

TowerFields = dict[str, torch.Tensor]  # Context fields, per image


class TowerCapture:
    """Filled while the tower runs (once per batch, or once per image when an in-tower
    method cuts some: their sequences differ); ``per_image`` (a tower that runs each image
    as one row of its batch) or ``merged_tiles`` (a tower that runs tiles and merges
    patches) splits it after."""

    def __init__(self) -> None:
        self.cls_rows: list[ClsAttention] | None = None
        self.received: dict[str, list[torch.Tensor]] = {}

    def per_image(self, num_tokens: Sequence[int]) -> list[TowerFields]:
        """One dict per image, restricted to its last ``n`` tokens (the LLM's; no [CLS])."""
        fields: list[TowerFields] = [{} for _ in num_tokens]
        if self.cls_rows is not None:
            attention = _rows([c.attention for c in self.cls_rows], "[CLS] attention", fields)
            keys = _rows([c.keys for c in self.cls_rows], "vision keys", fields)
            for found, a, k, n in zip(fields, attention, keys, num_tokens, strict=True):
                found.update(cls_attention=a[-n:], vision_keys=k[-n:])
        for name, captured in self.received.items():
            rows = _rows(captured, name, fields)
            for found, scores, n in zip(fields, rows, num_tokens, strict=True):
                found[name] = scores[-n:]
        return fields

    def merged_tiles(self, merge: int, rows: Sequence[int]) -> list[TowerFields]:
        """One dict per image of a tower that runs each tile as one row of its batch,
        [CLS] first, then merges each ``merge x merge`` block of its patch grid into one
        LLM row (a pixel shuffle): every tile's fields on its LLM rows, the tiles in
        order, cut into the images' ``rows``. Attention received by a block is summed over
        its patches; keys are averaged."""
        merged: TowerFields = {}
        if self.cls_rows is not None:
            attention = torch.cat([c.attention for c in self.cls_rows])
            keys = torch.cat([c.keys for c in self.cls_rows])
            merged["cls_attention"] = merge_patches(attention[:, 1:], merge, "sum")
            merged["vision_keys"] = merge_patches(keys[:, 1:], merge, "mean")
        for name, captured in self.received.items():
            merged[name] = merge_patches(torch.cat(captured)[:, 1:], merge, "sum")
        for name, values in merged.items():
            if values.shape[0] != sum(rows):
                raise ValueError(
                    f"the tower's tiles give {values.shape[0]} rows of {name}, the images "
                    f"{sum(rows)}"
                )
        split = {name: values.split(list(rows)) for name, values in merged.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(rows))]


def merge_patches(values: torch.Tensor, merge: int, how: str) -> torch.Tensor:
    """``values`` [T, side * side, ...] of T tiles' patch grids (raster order) on the
    merged grid, tiles concatenated: [T * (side / merge)^2, ...], each ``merge x merge``
    block of patches summed (``how`` "sum") or averaged ("mean") into one row."""
    tiles, patches = values.shape[:2]
    side = math.isqrt(patches)
    if side * side != patches or side % merge:
        raise ValueError(f"{patches} patches are not a square grid of {merge} x {merge} blocks")
    blocks = values.reshape(tiles, side // merge, merge, side // merge, merge, *values.shape[2:])
    pooled = blocks.sum(dim=(2, 4)) if how == "sum" else blocks.mean(dim=(2, 4))
    return pooled.reshape(tiles * (side // merge) ** 2, *values.shape[2:])


def _rows(captured: list[torch.Tensor], name: str, images: list) -> list[torch.Tensor]:
    """The images' rows of batches captured one forward at a time."""
    rows = [row for batch in captured for row in batch]
    if len(rows) != len(images):
        raise ValueError(f"captured {name} for {len(rows)} images, expected {len(images)}")
    return rows


@contextmanager
def capture_tower(
    attention_modules: Sequence[nn.Module],
    depth: int,
    needs: frozenset[str],
    sum_over_ranks: SumOverRanks = one_rank,
) -> Iterator[TowerCapture]:
    """``attention_modules``: the built tower layers' attention cores, the last the selected
    one; ``depth``: the layers of the whole tower (the checkpoint's, built or not)."""
    capture = TowerCapture()
    with ExitStack() as stack:
        selected = attention_modules[-1]
        if VISION_ATTENTION in needs:
            capture.cls_rows = stack.enter_context(capture_cls_attention(selected, sum_over_ranks))
        if TOWER_ATTENTION in needs:
            objects = attention_modules[min(object_layer(depth), len(attention_modules)) - 1]
            for name, module in (("received_attention", selected), ("object_attention", objects)):
                capture.received[name] = stack.enter_context(
                    capture_received_attention(module, sum_over_ranks)
                )
        yield capture
