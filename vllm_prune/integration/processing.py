"""What every family's processor does with the prune spec, in the API-server process.

A family's processor subclasses its vLLM processor and this mixin (mixin
first). The mixin strips the prune fields before the Hugging Face processor
runs, validates what can only be checked against the model (layers, text, the
vision tower), stores the per-image fields and records the metrics. The family
says how many visual tokens vLLM gives each image (``_visual_tokens``), how many
patches there were before any training-aware merging (``_patches``), and emits
``wire.num_placeholders`` tokens per image in its own ``_get_prompt_updates``. A
family that takes videos also says each video's token grid (``_video_grids``) and
its pixels per token cell (``_video_cells``, what temporal methods spend the
budget by); one ``prune_budget`` spans the request's images and videos.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from transformers import BatchFeature
from vllm.exceptions import VLLMValidationError
from vllm.inputs.engine import MultiModalHashes, MultiModalInput
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import (
    ImageEmbeddingItems,
    ImageProcessorItems,
    MultiModalDataItems,
    VideoEmbeddingItems,
    VideoProcessorItems,
)
from vllm.multimodal.processing import ProcessorInputs, TimingContext

from .. import layout
from ..methods import get_method, method_names
from ..methods.base import GRID, IN_TOWER, SCOUT, TOWER_ATTENTION, VISION_ATTENTION
from ..methods.params import LAYER_FIELD
from ..observability import metrics
from ..spec import (
    BUDGET_FIELD,
    MAX_QUESTION_TOKENS,
    METHOD_FIELD,
    PruneSpec,
    PruneSpecError,
    needs_text,
    prune_field_names,
)
from . import wire

logger = logging.getLogger("vllm.prune")  # under vLLM's handler, so it is printed


def refuse(field: str, message: str) -> VLLMValidationError:
    """vLLM's own validation error, which its server turns into an HTTP 400 naming the field."""
    return VLLMValidationError(message, parameter=field)


# vLLM's assertion when the prompt has no place for an item (the chat template did not
# render the message that held it); its 500 is a client's mistake.
UNPLACED = "Failed to apply prompt replacement"


class UnplacedMediaError(VLLMValidationError):
    """An image the rendered prompt has no place for; ``hashes``: the request's items."""

    def __init__(self, hashes: MultiModalHashes) -> None:
        super().__init__(
            "an image is in a message that the chat template does not render (for example "
            "a system or tool message), so the prompt has no place for it; send images in "
            "user messages",
            parameter="messages",
        )
        self.hashes = hashes


def parse_spec(hf_kwargs: Mapping[str, object]) -> PruneSpec:
    """The request's prune spec (``none`` when it names no method)."""
    try:
        return PruneSpec.from_fields(hf_kwargs) or PruneSpec(method="none")
    except PruneSpecError as err:
        raise refuse(err.field, str(err)) from err


def fit_keeps(spec: PruneSpec, tokens: list[int], frames: list[int]) -> list[int]:
    """``spec.keeps_for``, with a spec that does not fit the items refused as a 400."""
    try:
        return spec.keeps_for(tokens, frames)
    except PruneSpecError as err:
        raise refuse(err.field, str(err)) from err


class PruneProcessorMixin:
    """Shared prune handling; ``self`` is also a vLLM ``BaseMultiModalProcessor``."""

    prunes_videos = True  # False: videos pass through unpruned (the generic adapter)

    def _visual_tokens(self, mm_items: MultiModalDataItems, processed: BatchFeature) -> list[int]:
        """Unpruned visual tokens of each image, as vLLM itself counts them."""
        raise NotImplementedError

    @classmethod
    def vision_attention_refusal(cls, hf_config: Any) -> str | None:
        """Why this model cannot give methods the vision tower's attention they read, or None."""
        return "this model family has no [CLS] attention row to read"

    def _image_parts(
        self,
        mm_items: MultiModalDataItems,
        processed: BatchFeature,
        hf_kwargs: Mapping[str, object],
    ) -> list[list[layout.Part]] | None:
        """Each image's parts (the generic adapter, from vLLM's own prompt updates), or None
        where the family counts its tokens itself (``_visual_tokens``)."""
        return None

    def _patches(self, processed: BatchFeature, tokens: list[int]) -> list[int]:
        """Vision-tower patches of each image before training-aware merging."""
        return tokens

    def _images(self, mm_items: MultiModalDataItems) -> ImageProcessorItems | ImageEmbeddingItems:
        return mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))

    def _get_mm_hashes(self, inputs: ProcessorInputs) -> MultiModalHashes:
        """With ``prune_budget`` over several items, each item's count depends on the others.

        vLLM's caches key an image (or video) by itself and the request's options,
        so an item cached with one set of companions would come back with their
        split. Those items get hashes of their own request instead: never reused
        (nor their prefix cached), always processed together.
        """
        hashes = super()._get_mm_hashes(inputs)  # type: ignore[misc]
        items = sum(len(hashes.get(m, [])) for m in wire.MODALITIES)
        if inputs.hf_processor_mm_kwargs.get(BUDGET_FIELD) is None or items < 2:
            return hashes
        request = uuid.uuid4().hex
        return {
            **hashes,
            **{
                m: [f"{h}-budget-{request}-{i}" for i, h in enumerate(hashes[m])]
                for m in wire.MODALITIES
                if m in hashes
            },
        }

    def _video_grids(self, processed: BatchFeature) -> list[tuple[int, int, int]]:
        """Each video's token grid (frames, rows, columns), as vLLM itself counts them."""
        raise NotImplementedError

    def _video_patches(self, processed: BatchFeature) -> list[int]:
        """Vision-tower patches of each video before training-aware merging."""
        return [t * h * w for t, h, w in self._video_grids(processed)]

    def _min_video_frames(self) -> int:
        """The fewest frames this family's processor takes in a video (Qwen: a temporal patch)."""
        return 1

    def _check_video_frames(self, mm_items: MultiModalDataItems) -> None:
        """A clip shorter than the processor takes is a 400 naming it, not the Hugging Face
        processor's error (Qwen3-VL: "t:1 must be larger than temporal_factor:2")."""
        videos = mm_items.get("video")
        if not isinstance(videos, VideoProcessorItems):
            return  # none, or precomputed embeddings
        least = self._min_video_frames()
        for index in range(videos.get_count()):
            video = videos.get(index)  # frames, or (frames, metadata); None: cached
            if video is None:
                continue
            frames = len(video[0] if isinstance(video, tuple) else video)
            if frames < least:
                raise refuse(
                    "video_url",
                    f"video {index} of the request has {frames} frame(s); this model takes "
                    f"videos of at least {least} frames; send a single frame as an image",
                )

    def _video_cells(self, processed: BatchFeature, index: int) -> torch.Tensor:
        """Video ``index``'s pixels per token cell [T, h * w, C], as the processor made them."""
        raise NotImplementedError

    def _apply_hf_processor_main(
        self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        spec = parse_spec(hf_kwargs)
        images = mm_items.get_count("image", strict=False)
        sent_videos = mm_items.get_count("video", strict=False)
        videos = sent_videos if self.prunes_videos else 0
        if images or sent_videos:
            self._check_supported(spec.method, mm_items)
        if videos:
            self._check_video_frames(mm_items)
        text_ids = self._text_ids(spec) if images or videos else []
        plain_kwargs = {k: v for k, v in hf_kwargs.items() if k not in prune_field_names()}
        processed = super()._apply_hf_processor_main(mm_items, plain_kwargs)  # type: ignore[misc]
        if not images and not videos:
            return processed
        parts = self._image_parts(mm_items, processed, plain_kwargs) if images else None
        if parts is not None:
            image_tokens = [sum(p.embedded for p in item) for item in parts]
        else:
            image_tokens = self._visual_tokens(mm_items, processed) if images else []
        grids = self._video_grids(processed) if videos else []
        video_tokens = [t * h * w for t, h, w in grids]
        keeps = fit_keeps(
            spec, image_tokens + video_tokens, [1] * len(image_tokens) + [t for t, _, _ in grids]
        )
        if images:
            processed.update(
                wire.encode(
                    spec,
                    image_tokens,
                    keeps[:images],
                    text_ids,
                    self._patches(processed, image_tokens),
                    parts=[
                        list(zip(item, layout.part_keeps(item, keep), strict=True))
                        for item, keep in zip(parts, keeps[:images], strict=True)
                    ]
                    if parts is not None
                    else (),
                )
            )
        if videos:
            frames = [
                self._frame_keeps(spec, processed, i, grid, keep)
                for i, (grid, keep) in enumerate(zip(grids, keeps[images:], strict=True))
            ]
            processed.update(
                wire.encode(
                    spec,
                    video_tokens,
                    keeps[images:],
                    text_ids,
                    self._video_patches(processed),
                    modality="video",
                    frame_keeps=frames,
                )
            )
        return processed

    def _frame_keeps(
        self,
        spec: PruneSpec,
        processed: BatchFeature,
        index: int,
        grid: tuple[int, int, int],
        keep: int,
    ) -> list[int]:
        """How many tokens each frame of video ``index`` keeps (fixed here, with the prompt)."""
        t, h, w = grid
        if keep == t * h * w:
            return [h * w] * t
        method = get_method(spec.method)
        cells = self._video_cells(processed, index) if method.temporal else None
        return method.frame_keeps(cells, t, keep)

    def _text_ids(self, spec: PruneSpec) -> list[int]:
        """The question's token ids, for methods that score against it."""
        info = self.info  # type: ignore[attr-defined]
        if SCOUT in get_method(spec.method).needs:
            layer = spec.params.get(LAYER_FIELD)
            layers = info.get_hf_config().get_text_config().num_hidden_layers
            if layer is not None and layer > layers:
                raise refuse(
                    LAYER_FIELD,
                    f"'{LAYER_FIELD}' must be at most {layers} for this model; got {layer}",
                )
        if not needs_text(spec.method):
            return []
        ids = info.get_tokenizer().encode(spec.text or "", add_special_tokens=False)
        ids = ids[-MAX_QUESTION_TOKENS:]  # a long question: its end (spec.MAX_QUESTION_TOKENS)
        if not ids:
            raise refuse(
                METHOD_FIELD,
                f"'{spec.method}' scores visual tokens against the question, and the last "
                "user message has no text",
            )
        return list(ids)

    @classmethod
    def scout_refusal(cls, hf_config: Any) -> str | None:
        """Why this model's LLM layers cannot run the scout pass, or None."""
        return None

    @classmethod
    def grid_refusal(cls, hf_config: Any) -> str | None:
        """Why this model's token grid is not known to the spatial methods, or None."""
        return None

    @classmethod
    def family_refusal(cls, method: str, hf_config: Any) -> str | None:
        """Why this model (its Hugging Face config) cannot run ``method`` at all, or None.

        Also what ``GET /v1/prune/methods`` reports for the served model.
        """
        needs = get_method(method).needs
        if needs & {VISION_ATTENTION, TOWER_ATTENTION, IN_TOWER}:
            refusal = cls.vision_attention_refusal(hf_config)
            if refusal is not None:
                return f"'{method}' reads the vision tower's attention: {refusal}"
        if GRID in needs:
            refusal = cls.grid_refusal(hf_config)
            if refusal is not None:
                return f"'{method}' works on the image's token grid: {refusal}"
        if SCOUT in needs:
            refusal = cls.scout_refusal(hf_config)
            if refusal is not None:
                return f"'{method}' reads attention from a scout pass through the LLM: {refusal}"
        return None

    def _check_supported(self, method: str, mm_items: MultiModalDataItems) -> None:
        """Refuse here, with a 400, what the model could not do in the engine."""
        hf_config = self.info.get_hf_config()  # type: ignore[attr-defined]
        refusal = self.family_refusal(method, hf_config)
        if refusal is not None:
            working = [m for m in method_names() if self.family_refusal(m, hf_config) is None]
            raise refuse(METHOD_FIELD, f"{refusal}. Methods this model runs: {', '.join(working)}")
        if get_method(method).temporal and "video" in mm_items:
            if isinstance(mm_items.get_items("video", object), VideoEmbeddingItems):
                raise refuse(
                    METHOD_FIELD,
                    f"'{method}' spends the budget over a video's frames by their pixels, so "
                    "it cannot prune precomputed video embeddings; send the video itself",
                )
        if not get_method(method).needs & {VISION_ATTENTION, TOWER_ATTENTION, IN_TOWER}:
            return
        if "image" in mm_items and isinstance(self._images(mm_items), ImageEmbeddingItems):
            raise refuse(
                METHOD_FIELD,
                f"'{method}' reads the vision tower's attention, so it cannot prune "
                "precomputed image embeddings; send the image itself",
            )

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        config = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))  # type: ignore[misc]
        for modality in wire.MODALITIES:
            config.update({k: v for k, v in wire.field_config(modality).items() if k in hf_inputs})
        return config

    def _maybe_apply_prompt_updates(self, mm_items: MultiModalDataItems, mm_res: Any) -> Any:
        try:
            return super()._maybe_apply_prompt_updates(mm_items, mm_res)  # type: ignore[misc]
        except AssertionError as err:
            if not str(err).startswith(UNPLACED):
                raise
            raise UnplacedMediaError(mm_res.hashes) from err

    def apply(self, inputs: ProcessorInputs, timing_ctx: TimingContext) -> MultiModalInput:
        try:
            result = super().apply(inputs, timing_ctx)  # type: ignore[misc]
        except UnplacedMediaError as err:
            # The items are in the API server's cache but never reached the engine's: drop
            # them, or the next request with the same image finds the engine without it.
            if inputs.cache is not None:
                for hashes in err.hashes.values():
                    for item_hash in hashes:
                        inputs.cache.invalidate(item_hash)
            raise
        method = inputs.hf_processor_mm_kwargs.get(METHOD_FIELD)
        # Only client requests carry a method (the server always sets one);
        # vLLM's start-up profiling runs come through here without one.
        if method is None:
            return result
        for modality in wire.MODALITIES:
            items = result["mm_kwargs"].get(modality, [])
            if not items:
                continue
            counts = [
                _COUNTS.remember(key, item, modality)
                for key, item in zip(result["mm_hashes"][modality], items, strict=True)
            ]
            if any(c is None for c in counts):
                logger.warning(
                    "prune: counts of a cached %s are unknown; metrics skip it", modality
                )
                continue
            self._record(str(method), modality, counts)  # type: ignore[arg-type]
        return result

    def _record(self, method: str, modality: str, counts: list[wire.Counts]) -> None:
        model_config = self.info.ctx.model_config  # type: ignore[attr-defined]
        metrics.record_prompt(
            method=method,
            modality=modality,
            patches=[c.patches for c in counts],
            tokens_before=[c.tokens for c in counts],
            tokens_after=[c.keep for c in counts],
            bytes_per_token=metrics.kv_bytes_per_token(
                model_config.hf_text_config, model_config.dtype
            ),
        )
        patches = sum(c.patches for c in counts)
        tokens = sum(c.tokens for c in counts)
        keep = sum(c.keep for c in counts)
        logger.info(
            "prune method=%s %ss=%d patches=%d tokens=%d kept=%d merge=%.2fx prune=%.2fx "
            "total=%.2fx",
            method,
            modality,
            len(counts),
            patches,
            tokens,
            keep,
            patches / tokens,
            tokens / keep,
            patches / keep,
        )


class _CountsByHash:
    """Counts of recently processed images and videos by multimodal hash.

    vLLM's processor cache hands back ``None`` for an item the engine already
    holds, so a repeated image's counts come from here.
    """

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self.entries: OrderedDict[str, wire.Counts] = OrderedDict()

    def remember(
        self, key: str, item: Mapping[str, object] | None, modality: str = "image"
    ) -> wire.Counts | None:
        if item is not None:
            self.entries[key] = wire.item_counts(item, modality)
            if len(self.entries) > self.size:
                self.entries.popitem(last=False)
        found = self.entries.get(key)
        if found is not None:
            self.entries.move_to_end(key)
        return found


_COUNTS = _CountsByHash()
