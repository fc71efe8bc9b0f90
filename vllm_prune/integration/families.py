"""What the generic adapter needs to know about a model family beyond vLLM's own classes.

A family is a small declaration keyed by architecture name, not a class: its
token grid (for the spatial methods), tiles that share one embed run, separator
rows its embeddings hold (laid out, or only named as ``learned``), M-RoPE positions on
its merged grid, the vision tower's [CLS] row (for the tower methods), or why the
generic path does not hold for it. An architecture without an entry is pruned by the
generic path when its start-up check holds, without the spatial methods. At start the
model itself checks the declaration: two different images must share exactly the
declared separator rows (``learned_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

from ..layout import Part


@dataclass(frozen=True)
class Tower:
    """A vision tower the tower methods read (``signals.tower``): each tile is one row of
    its batch, the [CLS] token first, then the patch grid in raster order; the last layer
    gives the features; each ``merge x merge`` block of patches becomes one LLM row (a
    pixel shuffle), in raster order. ``layers``: the path from the model to its encoder
    layers; ``core``: from a layer to its attention core (vLLM's ``MMEncoderAttention``);
    ``merge``: the block side, from the Hugging Face config."""

    layers: str
    core: str
    merge: Callable[[Any], int]


def _pair(value: Any) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def internvl_tile(hf_config: Any) -> int:
    """InternVL's tokens per 448 px tile: the patch grid after the pixel shuffle (16 x 16)."""
    vision = hf_config.vision_config
    side = _pair(vision.image_size) // _pair(vision.patch_size)
    shuffled = int(side * float(getattr(hf_config, "downsample_ratio", 0.5)))
    return shuffled * shuffled


def internvl_merge(hf_config: Any) -> int:
    """InternViT patches per LLM row on each side: the pixel shuffle's 1 / downsample_ratio."""
    return round(1 / float(getattr(hf_config, "downsample_ratio", 0.5)))


# vLLM builds InternVL's tower as Intern-S1's: InternViT, every layer, tiles batched.
INTERNVIT = Tower(layers="vision_tower.encoder.layer", core="attention.attn", merge=internvl_merge)


def llava_next_parts(
    info: Any, processed: Mapping[str, Any], index: int, width: int, height: int
) -> list[Part]:
    """LLaVA-NeXT's layout (LLaVA-OneVision's too), one run: the base image (``s x s``),
    then its crops stitched and unpadded (``h x w``) with an ``image_newline`` row after
    each row. ``h x w`` is vLLM's own count (OneVision's shrinks a grid over 9 crops)."""
    vision = info.get_vision_encoder_info()
    side = vision.get_patch_grid_length()
    rows, cols = get_anyres_image_grid_shape(
        (height, width), info.get_hf_config().image_grid_pinpoints, vision.get_image_size()
    )
    content, newlines = info._get_num_unpadded_features(
        original_height=height,
        original_width=width,
        npatches=side,
        num_patch_height=rows,
        num_patch_width=cols,
    )
    h, w = newlines, content // newlines
    return [Part(0, side * side, (side, side)), Part(0, h * w, (h, w), newlines=1)]


PartsOf = Callable[[Any, Mapping[str, Any], int, int, int], list[Part]]


def merged_grid(merge: Callable[[Any], int]) -> PartsOf:
    """Qwen-style towers: one run, the ``t x h x w`` patch grid the processor reports
    (``image_grid_thw``) merged ``m x m`` by the tower; ``merge`` reads ``m`` from the
    config vLLM's processing info holds."""

    def parts(
        info: Any, processed: Mapping[str, Any], index: int, width: int, height: int
    ) -> list[Part]:
        m = merge(info.get_hf_config())
        t, h, w = (int(v) for v in processed["image_grid_thw"][index])
        return [Part(0, t * (h // m) * (w // m), (h // m, w // m))]

    parts.__name__ = "merged_grid"  # as the model-support page names it
    return parts


def _vision_merge(hf_config: Any) -> int:
    return int(hf_config.vision_config.spatial_merge_size)


def _thinker_merge(hf_config: Any) -> int:
    """An omni model's thinker: its processing info holds the whole model's config."""
    config = getattr(hf_config, "thinker_config", hf_config)
    return int(config.vision_config.spatial_merge_size)


@dataclass(frozen=True)
class Family:
    """``grid``: "square" (each run or tile is a square grid), "rows" (each run is a row of
    the image) or None (unknown: spatial methods are refused). ``tile``: tokens per tile
    where one run holds several tiles (from the Hugging Face config). ``unpruned``: why the
    generic path does not hold for this family (it is then served unpruned). ``parts``:
    where the runs alone do not give an image's parts (separator rows in its embeddings,
    a grid that follows the image), its parts from vLLM's processing info, the processed
    images, the image's index and its (width, height). ``mrope``: the model's M-RoPE
    positions follow each image's grid, raster order from where its one run starts
    (``positions``). ``tower``: the vision tower's [CLS] row, for the tower methods.
    ``learned``: the learned rows the model's embedding holds among the content rows, in
    words, where their layout is not declared: the content check finds them at start (it
    fails where it finds none) and a pruned image drops them (``learned_rows``)."""

    grid: str | None = None
    tile: Callable[[Any], int] | None = None
    unpruned: str | None = None
    parts: PartsOf | None = None
    mrope: bool = False
    tower: Tower | None = None
    learned: str | None = None

    @classmethod
    def mrope_grid(cls, merge: Callable[[Any], int] = _vision_merge) -> Family:
        """An M-RoPE family whose image positions are its merged grid (Qwen2-VL's scheme,
        from its own ``get_mrope_input_positions``): one run per image, the ``t x h x w``
        grid in raster order from the run's first position, text on from the largest + 1.
        Pruned, the prompt is grown back to compute them and each kept row carries its
        offset in that grid (``positions``)."""
        return cls(parts=merged_grid(merge), mrope=True)

    @property
    def declares_layout(self) -> bool:
        """Whether the family lays out its image's rows (a grid, tiles or parts): then its
        separator rows are exactly the ones it declares, none without parts."""
        return self.grid is not None or self.tile is not None or self.parts is not None

    @property
    def knows_grid(self) -> bool:
        """Whether each part's token grid is known (the spatial methods run)."""
        return self.grid is not None or self.parts is not None


MROPE = (
    "its M-RoPE positions follow each image's grid, and vllm-prune has no declaration "
    "of them for this family yet"
)
# Why a family is served unpruned, where its vLLM code shows a layout that the generic
# adapter cannot prune yet (read from vLLM 0.32-0.34; none of these is served in tests).
DEEPSTACK = (
    "each image row carries DeepStack features as extra columns after the LLM's, which the "
    "generic adapter's M-RoPE path does not split (the Qwen3-VL family file does)"
)
MINICPM = (
    "each image is several runs (the source image and its slices between slice tokens) "
    "whose M-RoPE positions are not one merged grid per image"
)
HUNYUAN = (
    "its image run holds learned begin, newline and end rows, and its M-RoPE positions are "
    "its own (text keeps its sequence index; each grid row counts its newline column)"
)


FAMILIES: dict[str, Family] = {
    # InternVL 2.5 / 3 / 3.5 in the Hugging Face format (vLLM serves it as Intern-S1):
    # <img> then every tile's 256 <IMG_CONTEXT> in one run, then </img>.
    "InternVLForConditionalGeneration": Family(grid="square", tile=internvl_tile, tower=INTERNVIT),
    "InternS1ForConditionalGeneration": Family(grid="square", tile=internvl_tile, tower=INTERNVIT),
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
    # the base image's run, then the stitched crops with a newline row after each row.
    "LlavaNextForConditionalGeneration": Family(parts=llava_next_parts),
    "LlavaOnevisionForConditionalGeneration": Family(parts=llava_next_parts),
    # <|begin_of_image|>, the merged h x w grid of <|image|> (one run), <|end_of_image|>;
    # M-RoPE positions as Qwen2-VL's (GLM-OCR is GLM-4.1V's code with its own tower).
    "Glm4vForConditionalGeneration": Family.mrope_grid(),
    "Glm4vMoeForConditionalGeneration": Family.mrope_grid(),
    "GlmOcrForConditionalGeneration": Family.mrope_grid(),
    # One run of the image token per image, Qwen2-VL's positions (the same code).
    "PaddleOCRVLForConditionalGeneration": Family.mrope_grid(),
    # Qwen2.5-Omni: vLLM builds the thinker; images as Qwen2.5-VL's (audio interleaves
    # with videos only, which the generic adapter serves unpruned).
    "Qwen2_5OmniModel": Family.mrope_grid(_thinker_merge),
    "Qwen2_5OmniForConditionalGeneration": Family.mrope_grid(_thinker_merge),
    # Declared from vLLM's code, not served in tests: Keye (vLLM 0.32-0.33), Ernie 4.5-VL
    # (its merge size is the config's spatial_conv_size; its vision experts route by the
    # pruned prompt's ids, so they follow the shrunk run).
    "KeyeForConditionalGeneration": Family.mrope_grid(),
    "KeyeVL1_5ForConditionalGeneration": Family.mrope_grid(),
    "Ernie4_5_VLMoeForConditionalGeneration": Family.mrope_grid(
        lambda config: int(config.spatial_conv_size)
    ),
    "InternS1ProForConditionalGeneration": Family(unpruned=DEEPSTACK),
    "Qwen3OmniMoeForConditionalGeneration": Family(unpruned=DEEPSTACK),
    "MiniCPMV4_6ForConditionalGeneration": Family(unpruned=MINICPM),
    "MiniCPMV4_7ForConditionalGeneration": Family(unpruned=MINICPM),
    "HunYuanVLForConditionalGeneration": Family(unpruned=HUNYUAN),
    # Every position of the run is an embed position, and the separators come out of the
    # model (read from vLLM 0.32-0.34, not served in tests: no offline checkpoint here).
    # The content check finds them at start and a pruned image drops them.
    "Phi3VForCausalLM": Family(learned="a sub_GN newline row after each grid row, one glb_GN"),
    "Phi4MMForCausalLM": Family(learned="a sub_GN newline row after each grid row, one glb_GN"),
    "Phi4MultimodalForCausalLM": Family(
        learned="a sub_GN newline row after each grid row, one glb_GN"
    ),
    "DeepseekVLV2ForCausalLM": Family(
        learned="an image_newline row after each grid row, one view_seperator"
    ),
    "Ovis": Family(learned="the image's begin and end indicator rows"),
    "Ovis2_5": Family(learned="the image's begin and end indicator rows"),
    "Ovis2_6ForCausalLM": Family(learned="the image's begin and end indicator rows"),
    "Ovis2_6_MoeForCausalLM": Family(learned="the image's begin and end indicator rows"),
}


def family_of(architecture: str) -> Family:
    """The declaration of ``architecture``; an empty one (grid unknown) where there is none."""
    return FAMILIES.get(architecture, Family())
