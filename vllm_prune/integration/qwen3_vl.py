"""Qwen3-VL and Qwen3-VL-MoE with visual-token pruning before the KV cache exists.

As Qwen2-VL (``integration.qwen2_vl``: ``keep`` image pads, each retained row's M-RoPE
offset carried as 3 extra embedding channels, text after the image where it would be
unpruned), with what is new in Qwen3-VL:

- 16 px patches and the 2 x 2 merger: ``N = h w / 4`` tokens on an ``h/2 x w/2`` grid.
- DeepStack: vLLM's image embedding is ``[main | ds_0 | ... | ds_{L-1}]``, the tower's
  features from L of its layers, which the LLM adds to its first L layers' hidden
  states at the visual positions. A method sees the main columns only; each kept row
  takes the DeepStack columns of the token it stands for (``Reduced.indices``), in
  the same order. For a merging method (``pooling``, ``sparsevlm``, ``visionzip``,
  ``mustdrop``) that is the DeepStack row of the merged cell's representative token.
- M-RoPE positions come from Qwen3-VL's own iterator over the prompt (its videos are
  one item per frame, with timestamp text between them); interleaving happens inside
  the rotary embedding and changes nothing here.

The scout pass (the FastV family, ``balanced``, ``sparsevlm``, ``mustdrop``) runs
Qwen3's layers as the LLM does: per-head query/key norms, and each image's DeepStack
rows added to its hidden states after the first layers (``signals.scout``); it is
refused on Qwen3-VL-MoE, whose fused-MoE layers run only inside vLLM's forward. vLLM's
own EVS (``--video-pruning-rate``) is refused at start, as for every Qwen family
(``qwen2_vl.VIDEO_PRUNING_RATE_REFUSAL``). A pruned video keeps every frame's timestamp
and vision markers, each frame with the tokens it keeps (at least one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm.config import VllmConfig
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import (
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLMoeProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFeatureSpec, MultiModalKwargsItems
from vllm.multimodal.processing import PromptUpdate

from . import wire
from .qwen2_vl import PruneQwenModelMixin, PruneQwenProcessorMixin


class PruneQwen3VLMultiModalProcessor(PruneQwenProcessorMixin, Qwen3VLMultiModalProcessor):
    family = "Qwen3-VL"

    @classmethod
    def scout_refusal(cls, hf_config: Any) -> str | None:
        if getattr(hf_config.get_text_config(), "num_experts", 0):
            return (
                "its LLM's feed-forward layers are mixtures of experts, which vLLM runs only "
                "inside the model's own forward pass, not in the scout's"
            )
        return None

    def _replacement(
        self, update: PromptUpdate, out_mm_kwargs: MultiModalKwargsItems
    ) -> Callable[[int], object]:
        """A video keeps every frame's timestamp, each frame with the tokens it keeps."""
        if update.modality != "video":
            return super()._replacement(update, out_mm_kwargs)
        config = self.info.get_hf_config()
        tokenizer = self.info.get_tokenizer()

        def video(item_idx: int):  # type: ignore[no-untyped-def]
            item = out_mm_kwargs["video"][item_idx]
            return Qwen3VLMultiModalProcessor.get_video_repl(
                tokens_per_frame=wire.frame_keeps(item),
                timestamps=item["timestamps"].data,
                tokenizer=tokenizer,
                vision_start_token_id=config.vision_start_token_id,
                vision_end_token_id=config.vision_end_token_id,
                video_token_id=config.video_token_id,
                select_token_id=True,
            )

        return video


class PruneQwen3ModelMixin(PruneQwenModelMixin):
    """Qwen3's hooks of the shared Qwen model mixin; ``self`` is a Qwen3-VL model."""

    def _mm_items(
        self, input_tokens: list[int], ordered: list[MultiModalFeatureSpec]
    ) -> list[tuple[int, int, int, int, float, int]]:
        """An image is one item with its placeholder's length (``keep`` when pruned); a
        video is one item per frame, as vLLM's Qwen3-VL iterator finds them."""
        config = self.config  # type: ignore[attr-defined]
        merge = config.vision_config.spatial_merge_size
        items = []
        for feature in ordered:
            if feature.modality == "image":
                _, h, w = feature.data["image_grid_thw"].data.tolist()  # type: ignore[index]
                length = feature.mm_position.length
                items.append((feature.mm_position.offset, 1, h // merge, w // merge, 1.0, length))
                continue
            frames = Qwen3VLForConditionalGeneration._iter_mm_grid_hw(
                input_tokens,
                [feature],
                video_token_id=config.video_token_id,
                vision_start_token_id=config.vision_start_token_id,
                vision_end_token_id=config.vision_end_token_id,
                spatial_merge_size=merge,
            )
            items.extend((o, 1, h, w, 1.0, n) for o, h, w, n in frames if n > 0)
        return items

    def _embedding_width(self) -> int:
        return int(self.visual_dim + self.multiscale_dim)  # type: ignore[attr-defined]

    def _visual_width(self) -> int:
        return int(self.visual_dim)  # type: ignore[attr-defined]


@MULTIMODAL_REGISTRY.register_processor(
    PruneQwen3VLMultiModalProcessor,
    info=Qwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PruneQwen3VLForConditionalGeneration(PruneQwen3ModelMixin, Qwen3VLForConditionalGeneration):
    prune_processor = PruneQwen3VLMultiModalProcessor  # its refusals, for GET /v1/prune/methods

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_pruning(vllm_config)


@MULTIMODAL_REGISTRY.register_processor(
    PruneQwen3VLMultiModalProcessor,
    info=Qwen3VLMoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PruneQwen3VLMoeForConditionalGeneration(
    PruneQwen3ModelMixin, Qwen3VLMoeForConditionalGeneration
):
    prune_processor = PruneQwen3VLMultiModalProcessor  # its refusals, for GET /v1/prune/methods

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_pruning(vllm_config)
