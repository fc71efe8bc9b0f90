"""Qwen2-VL and Qwen2.5-VL with visual-token pruning before the KV cache exists.

Tokens: the vision tower makes ``t x h x w`` patches (14 px) and its merger
joins 2 x 2 of them (training-aware merging, TACR = 4), so vLLM gives an image
``N = t h w / 4`` tokens on an ``h/2 x w/2`` grid, which is what is pruned.

Positions: M-RoPE gives every visual token a (t, h, w) position, and retained
tokens must keep theirs. Which tokens are retained is known only after the
vision tower runs (in ``embed_multimodal``), while vLLM computes a prompt's
positions when the request arrives (``get_mrope_input_positions``). So:
1. ``get_mrope_input_positions`` gives a pruned image's ``keep`` placeholders
   the image's base position (where its grid starts) and lets the text after
   the image continue exactly where it would without pruning (base + the
   grid's extent), which does not depend on the selection;
2. ``embed_multimodal`` appends each retained row's (t, h, w) offset inside the
   grid to its embedding (3 extra channels, as vLLM's own EVS video pruning
   carries positions);
3. ``embed_input_ids`` strips those channels and keeps the offsets for the
   scheduled tokens; on Model Runner V2 the model state adds them to the request's
   positions before the forward, on V1 ``forward`` adds them, in place, to the
   positions of this step (vLLM rewrites that buffer from its per-request copy).
The result: each retained token's position equals its unpruned position.
The offset channels and the step that adds them are ``positions``'s, shared with the
generic adapter's M-RoPE families.

vLLM's own hook for this (``SupportsMultiModalPruning.recompute_mrope_positions``)
runs only when ``--video-pruning-rate`` > 0, which also turns on EVS for
videos, so it is not used. Limits: the offsets travel from the first pipeline
stage's embedding step to ``forward`` on the same rank, so pipeline parallelism
is refused (``parallel.refuse_pipeline_parallel``, as for every family); the vision
encoder's CUDA graphs are turned off for images and videos (their path skips
``embed_multimodal``); and on Model Runner V1, LLM CUDA graphs that replay a prefill
without running ``forward`` are refused at start (``positions.graph_refusal``); on V2 the
offsets are written by the model state before the forward (``positions``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFeatureSpec, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from ..methods import Reduced, get_method
from ..plan import PrunePlan, reduce_plan, reduce_video_plan
from ..signals.observe import observe
from . import wire
from .parallel import refuse_pipeline_parallel, sum_over_tensor_parallel
from .plugin import check_not_swapped
from .positions import PositionOffsetsMixin, grid_offsets
from .processing import PruneProcessorMixin
from .tower_batches import TowerBatchesMixin

PRUNED_MODALITIES = ("image", "video")  # kept off the encoder CUDA graphs


VIDEO_PRUNING_RATE_REFUSAL = (
    "vllm-prune does not run with vLLM's own video pruning (--video-pruning-rate): both "
    "change the video embeddings and their positions, and vLLM's applies one rate to every "
    "request. Start the server without it and send 'prune': 'evs' (the same method, per "
    "request, with 'prune_ratio' as the rate) or 'vidcom2' with the videos that should be "
    "pruned"
)


class PruneQwenProcessorMixin(PruneProcessorMixin):
    family = "Qwen2-VL"  # as refusals name it

    def _merge_size(self) -> int:
        return int(self.info.get_hf_config().vision_config.spatial_merge_size)  # type: ignore[attr-defined]

    def _visual_tokens(self, mm_items: MultiModalDataItems, processed: BatchFeature) -> list[int]:
        grids = processed["image_grid_thw"]
        return [int(g.prod()) // self._merge_size() ** 2 for g in grids]

    def _patches(self, processed: BatchFeature, tokens: list[int]) -> list[int]:
        return [int(g.prod()) for g in processed["image_grid_thw"]]

    def _video_grids(self, processed: BatchFeature) -> list[tuple[int, int, int]]:
        m = self._merge_size()
        return [(int(t), int(h) // m, int(w) // m) for t, h, w in processed["video_grid_thw"]]

    def _video_patches(self, processed: BatchFeature) -> list[int]:
        return [int(g.prod()) for g in processed["video_grid_thw"]]

    def _min_video_frames(self) -> int:
        return self._temporal_patch()

    def _temporal_patch(self) -> int:
        """Frames per temporal patch (2): what one video token row spans in time."""
        return int(self.info.get_hf_config().vision_config.temporal_patch_size)  # type: ignore[attr-defined]

    def _video_cells(self, processed: BatchFeature, index: int) -> torch.Tensor:
        """Each token cell's pixels, averaged over its ``m * m`` patches and the frames of
        its temporal patch: [T, h * w, 3 * p * p] (8 times fewer values to compare).

        The processor's rows are patches (channels, frames, p x p pixels each), each merge
        window's ``m * m`` in a row and the windows in raster order per temporal patch.
        """
        patches = [int(g.prod()) for g in processed["video_grid_thw"]]
        start = sum(patches[:index])
        t, h, w = self._video_grids(processed)[index]
        rows = torch.as_tensor(processed["pixel_values_videos"][start : start + patches[index]])
        frames = self._temporal_patch()
        cells = rows.float().reshape(t, h * w, self._merge_size() ** 2, 3, frames, -1)
        return cells.mean(dim=(2, 4)).reshape(t, h * w, -1)

    @classmethod
    def vision_attention_refusal(cls, hf_config: Any) -> str | None:
        return (
            f"the {cls.family} vision tower has no [CLS] token, and its attention is not "
            "read by the plugin"
        )

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))  # type: ignore[misc]
        for i, update in enumerate(updates):
            if update.modality in wire.MODALITIES and update.modality in out_mm_kwargs:
                replacement = self._replacement(update, out_mm_kwargs)
                updates[i] = PromptReplacement(update.modality, update.target, replacement)
        return updates

    def _replacement(
        self, update: PromptUpdate, out_mm_kwargs: MultiModalKwargsItems
    ) -> Callable[[int], list[int]]:
        """Item ``i``'s placeholder: ``keep`` copies of the modality's token."""
        token, modality = update.target[0], update.modality  # type: ignore[index]
        return lambda i: [token] * wire.num_placeholders(out_mm_kwargs, i, modality)


class PruneQwen2VLMultiModalProcessor(PruneQwenProcessorMixin, Qwen2VLMultiModalProcessor):
    pass


class PruneQwen2_5_VLMultiModalProcessor(PruneQwenProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    pass


# Per image or video, in prompt order: (offset, t, h, w, t_factor, tokens in the prompt),
# and for a pruned video the tokens each of its frames keeps.
MediaItem = (
    tuple[int, int, int, int, float, int] | tuple[int, int, int, int, float, int, tuple[int, ...]]
)


def pruned_mrope_positions(
    input_tokens: Sequence[int], images: Sequence[MediaItem]
) -> tuple[torch.Tensor, int]:
    """M-RoPE positions of a prompt whose images and videos may have been pruned.

    Unpruned items get vLLM's grid positions. A pruned item's placeholders get the
    base position of their frame (t: where the frame's temporal position is, h and w:
    where the grid starts; the retained rows' offsets inside the frame are added
    later), and what follows starts after the full grid.
    """
    blocks: list[np.ndarray] = []
    start = 0  # the next position
    consumed = 0  # prompt tokens placed
    for offset, t, h, w, t_factor, length, *frames in images:
        text = offset - consumed
        blocks.append(np.broadcast_to(np.arange(text), (3, text)) + start)
        base = start + text
        frame_t = np.arange(t)
        if t_factor != 1.0:
            frame_t = (frame_t * t_factor).astype(np.int64)
        if length == t * h * w:
            grid = np.indices((t, h, w))
            grid[0] = frame_t[:, None, None]
            block = grid.reshape(3, -1) + base
        else:
            keeps = frames[0] if frames else (length,)
            block = np.full((3, length), base)
            block[0] += np.repeat(frame_t[: len(keeps)], keeps)
        start = base + max(int(frame_t[-1]), h - 1, w - 1) + 1  # as if the whole grid were there
        blocks.append(block)
        consumed = offset + length
    tail = len(input_tokens) - consumed
    blocks.append(np.broadcast_to(np.arange(tail), (3, tail)) + start)
    positions = np.concatenate(blocks, axis=1).reshape(3, -1)
    end = start + tail  # the first position after the prompt
    return torch.from_numpy(positions), end - len(input_tokens)


class PruneQwenModelMixin(PositionOffsetsMixin, TowerBatchesMixin):
    """Shared by the Qwen generations; ``self`` is also their vLLM model class.

    Qwen3-VL (``integration.qwen3_vl``) differs in three hooks: where its items' grids
    come from (``_mm_items``), how wide its embedding is before our position channels
    (``_embedding_width``: DeepStack rows ride along), and which of those columns a
    method sees (``_visual_width``: the main features only).
    """

    def _init_pruning(self, vllm_config: VllmConfig) -> None:
        refuse_pipeline_parallel(vllm_config.parallel_config.pipeline_parallel_size)
        check_not_swapped(type(self), vllm_config.model_config.architecture)
        if getattr(self, "is_multimodal_pruning_enabled", False):
            raise ValueError(VIDEO_PRUNING_RATE_REFUSAL)
        self._init_positions(vllm_config)
        self._init_tower_batches(vllm_config)

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]
    ) -> tuple[torch.Tensor, int]:
        ordered = sorted(mm_features, key=lambda f: f.mm_position.offset)
        return pruned_mrope_positions(input_tokens, self._mm_items(input_tokens, ordered))

    def _mm_items(
        self, input_tokens: list[int], ordered: list[MultiModalFeatureSpec]
    ) -> list[MediaItem]:
        """Per item in prompt order: (offset, t, h, w, t_factor, tokens in the prompt), and
        a pruned video's tokens per frame (one run of placeholders, frame after frame)."""
        items: list[MediaItem] = []
        for feature, grid in zip(ordered, self.iter_mm_grid_thw(ordered), strict=True):  # type: ignore[attr-defined]
            offset, t, h, w, t_factor = grid
            length = feature.mm_position.length
            if feature.modality == "video" and length != t * h * w:
                frames = tuple(wire.frame_keeps(feature.data))  # type: ignore[arg-type]
                items.append((offset, t, h, w, t_factor, length, frames))
            else:
                items.append((offset, t, h, w, t_factor, length))
        return items

    def _visual_width(self) -> int:
        """The leading columns that are the token's features (what methods see)."""
        return self._embedding_width()

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = {m: wire.pop_plans(kwargs, m) for m in wire.MODALITIES}
        present = [m for m, p in plans.items() if p is not None]
        if not present:
            return super().embed_multimodal(**kwargs)  # type: ignore[misc]
        # vLLM batches one modality per call (``group_mm_kwargs_by_modality``).
        if len(present) > 1:
            raise ValueError(f"one modality per embed_multimodal call expected, got {present}")
        modality = present[0]
        grids = kwargs[f"{modality}_grid_thw"]
        tokens = [plan.tokens for plan in plans[modality]]  # type: ignore[union-attr]
        embeddings = self._encode_in_batches(kwargs, tokens, modality)
        merge = self.visual.spatial_merge_size  # type: ignore[attr-defined]
        out = []
        for item, plan, grid in zip(embeddings, plans[modality], grids, strict=True):  # type: ignore[arg-type]
            t, h, w = (int(v) for v in grid)
            shape = (h // merge, w // merge)
            if plan.keep == item.shape[0]:
                out.append(item)  # unpruned: exactly what vLLM returns
                continue
            visual, carried = item.split(
                [self._visual_width(), item.shape[-1] - self._visual_width()], dim=-1
            )
            # DeepStack levels (Qwen3-VL), each as wide as the main columns; none for Qwen2.
            levels = carried.split(self._visual_width(), dim=-1) if carried.shape[-1] else ()
            if modality == "image":
                reduced = self._reduce_frame(visual, shape, plan, deepstack=levels)
            else:
                reduced = self._reduce_video(visual, (t, *shape), plan, levels)
            kept = reduced.indices.to(item.device)
            # (0, row, col) inside the frame: a frame's time is in its placeholders' base.
            offsets = grid_offsets(kept % (shape[0] * shape[1]), shape[1]).T.to(item.dtype)
            # Carried columns (DeepStack) of each row's token, in the same order.
            out.append(torch.cat([reduced.features, carried[kept], offsets], dim=-1))
        return out

    def _reduce_frame(
        self,
        visual: torch.Tensor,
        shape: tuple[int, int],
        plan: PrunePlan,
        part: str | None = None,
        deepstack: Sequence[torch.Tensor] = (),
    ) -> Reduced:
        """One image (or video frame) pruned by ``plan``, with what its method reads;
        ``deepstack``: its rows' DeepStack levels, which the scout pass adds as the LLM does."""
        found = observe(
            self.language_model.model,  # type: ignore[attr-defined]
            visual,
            plan,
            scout_positions=self._scout_positions(shape, plan),
            sum_over_ranks=sum_over_tensor_parallel,
            deepstack=deepstack,
        )
        return reduce_plan(visual, shape, plan, part=part, **found)

    def _reduce_video(
        self,
        visual: torch.Tensor,
        grid: tuple[int, int, int],
        plan: PrunePlan,
        deepstack: Sequence[torch.Tensor] = (),
    ) -> Reduced:
        """A temporal method over the whole video; any other method frame by frame."""
        if get_method(plan.method).temporal:
            return reduce_video_plan(visual, grid, plan)
        t, h, w = grid
        frames = []
        for f in range(t):
            rows = slice(f * h * w, (f + 1) * h * w)
            levels = [level[rows] for level in deepstack]
            frames.append(
                self._reduce_frame(visual[rows], (h, w), plan.for_frame(f), f"frame {f}", levels)
            )
        return Reduced(
            features=torch.cat([r.features for r in frames]),
            indices=torch.cat([r.indices + f * h * w for f, r in enumerate(frames)]),
        )

    @staticmethod
    def _scout_positions(shape: tuple[int, int], plan: PrunePlan) -> torch.Tensor:
        """The image at the start of the scout sequence, the question after its grid."""
        h, w = shape
        image = grid_offsets(torch.arange(h * w), w)
        text = torch.arange(plan.text_ids.numel()) + max(h, w)
        return torch.cat([image, text.expand(3, -1)], dim=1)

    def get_encoder_cudagraph_config(self):  # type: ignore[no-untyped-def]
        config = super().get_encoder_cudagraph_config()  # type: ignore[misc]
        modalities = [m for m in config.modalities if m not in PRUNED_MODALITIES]
        return dataclasses.replace(config, modalities=modalities)


@MULTIMODAL_REGISTRY.register_processor(
    PruneQwen2VLMultiModalProcessor,
    info=Qwen2VLProcessingInfo,
    dummy_inputs=Qwen2VLDummyInputsBuilder,
)
class PruneQwen2VLForConditionalGeneration(PruneQwenModelMixin, Qwen2VLForConditionalGeneration):
    prune_processor = PruneQwen2VLMultiModalProcessor  # its refusals, for GET /v1/prune/methods

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_pruning(vllm_config)


@MULTIMODAL_REGISTRY.register_processor(
    PruneQwen2_5_VLMultiModalProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class PruneQwen2_5_VLForConditionalGeneration(
    PruneQwenModelMixin, Qwen2_5_VLForConditionalGeneration
):
    prune_processor = PruneQwen2_5_VLMultiModalProcessor  # its refusals, for GET /v1/prune/methods

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_pruning(vllm_config)
