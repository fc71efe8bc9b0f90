"""What the generic adapter needs to know about a model family beyond vLLM's own classes.

A family is a small declaration keyed by architecture name, not a class: its
token grid (for the spatial methods), tiles that share one embed run, or why the
generic path does not hold for it. An architecture without an entry is pruned by
the generic path when its start-up check holds, without the spatial methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """``grid``: "square" (each run or tile is a square grid), "rows" (each run is a row of
    the image) or None (unknown: spatial methods are refused). ``tile``: tokens per tile
    where one run holds several tiles (from the Hugging Face config). ``unpruned``: why the
    generic path does not hold for this family (it is then served unpruned)."""

    grid: str | None = None
    tile: Callable[[Any], int] | None = None
    unpruned: str | None = None


def _pair(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def internvl_tile(hf_config: Any) -> int:
    """InternVL's tokens per 448 px tile: the patch grid after the pixel shuffle (16 x 16)."""
    vision = hf_config.vision_config
    side = _pair(vision.image_size) // _pair(vision.patch_size)
    shuffled = int(side * float(getattr(hf_config, "downsample_ratio", 0.5)))
    return shuffled * shuffled


SEPARATOR_ROWS = (
    "its embeddings hold separator rows (row newlines, tile separators or indicator rows) "
    "that are not image content, and vllm-prune has no declaration of them for this family yet"
)
MROPE = (
    "its M-RoPE positions follow each image's grid, and vllm-prune has no declaration "
    "of them for this family yet"
)

FAMILIES: dict[str, Family] = {
    # InternVL 2.5 / 3 / 3.5 in the Hugging Face format (vLLM serves it as Intern-S1):
    # <img> then every tile's 256 <IMG_CONTEXT> in one run, then </img>.
    "InternVLForConditionalGeneration": Family(grid="square", tile=internvl_tile),
    "InternS1ForConditionalGeneration": Family(grid="square", tile=internvl_tile),
    # <start_of_image>, a 16 x 16 run of <image_soft_token>, <end_of_image>.
    "Gemma3ForConditionalGeneration": Family(grid="square"),
    # a square run of <image> before the prompt.
    "PaliGemmaForConditionalGeneration": Family(grid="square"),
    # each tile (and the global image) is its own run between tile tags.
    "Idefics3ForConditionalGeneration": Family(grid="square"),
    "SmolVLMForConditionalGeneration": Family(grid="square"),
    # a run of [IMG] per row of patches, each row closed by [IMG_BREAK] ([IMG_END] last).
    "Mistral3ForConditionalGeneration": Family(grid="rows"),
    # <|image_start|>, each 336 px tile's 12 x 12 <|patch|> run between tile separators,
    # <|image|> and the global view's run, <|image_end|> (checked on the processor side:
    # vLLM 0.32's CPU build does not serve Llama 4 images).
    "Llama4ForConditionalGeneration": Family(grid="square"),
    "LlavaOnevisionForConditionalGeneration": Family(unpruned=SEPARATOR_ROWS),
    "Phi3VForCausalLM": Family(unpruned=SEPARATOR_ROWS),
    "Phi4MMForCausalLM": Family(unpruned=SEPARATOR_ROWS),
    "Phi4MultimodalForCausalLM": Family(unpruned=SEPARATOR_ROWS),
    "Ovis": Family(unpruned=SEPARATOR_ROWS),
    "Ovis2_5": Family(unpruned=SEPARATOR_ROWS),
    "DeepseekVLV2ForCausalLM": Family(unpruned=SEPARATOR_ROWS),
}


def family_of(architecture: str) -> Family:
    """The declaration of ``architecture``; an empty one (grid unknown) where there is none."""
    return FAMILIES.get(architecture, Family())
