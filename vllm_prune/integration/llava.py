"""LLaVA-1.5 with visual-token pruning before the KV cache exists.

Processor (API-server process): reads the prune spec from the request's
``mm_processor_kwargs``, strips it before the Hugging Face processor runs,
stores ``keep`` per image and emits exactly ``keep`` image placeholders, so the
prompt, the scheduler's token budget and the KV cache all see ``keep`` tokens.

Model (engine process): the vision tower and projector run on the whole image
(576 tokens on a 24 x 24 grid at 336 px); the method then picks ``keep`` rows,
which ``embed_multimodal`` returns. An in-tower method (``flowcut``) cuts tokens
inside the tower instead (``integration.in_tower``), so its later layers and the
projector run on fewer; a batch with one runs its images one by one. The LLM
layers are vLLM's, untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from transformers import BatchFeature, CLIPVisionConfig
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    _build_llava_or_pixtral_hf_info,
    _build_llava_or_pixtral_hf_processor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalKwargsItems
from vllm.multimodal.parse import (
    ImageEmbeddingItems,
    MultiModalDataItems,
)
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    PromptReplacement,
)

from ..methods import get_method
from ..methods.base import IN_TOWER, TOWER_ATTENTION, VISION_ATTENTION, TowerCut
from ..plan import PrunePlan, apply_plan, needs, square_grid
from ..signals.observe import observe
from ..signals.tower import capture_tower
from . import wire
from .in_tower import cut_in_tower
from .parallel import refuse_pipeline_parallel, sum_over_tensor_parallel
from .plugin import check_not_swapped
from .processing import PruneProcessorMixin
from .tower_batches import TowerBatchesMixin

TOWER_NEEDS = (VISION_ATTENTION, TOWER_ATTENTION)


class PruneLlavaMultiModalProcessor(PruneProcessorMixin, LlavaMultiModalProcessor):
    """LLaVA: N from vLLM's own count, one ``<image>`` token repeated."""

    def _visual_tokens(self, mm_items: MultiModalDataItems, processed: BatchFeature) -> list[int]:
        images = self._images(mm_items)
        if isinstance(images, ImageEmbeddingItems):
            return [images.get_feature_size(i) for i in range(images.get_count())]
        sizes = [images.get_image_size(i) for i in range(images.get_count())]
        info = self.info  # type: ignore[attr-defined]
        return [
            info.get_num_image_tokens(image_width=s.width, image_height=s.height) for s in sizes
        ]

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptReplacement]:
        image_token_id = self.info.get_hf_config().image_token_index  # type: ignore[attr-defined]

        def replacement(item_idx: int) -> list[int]:
            return [image_token_id] * wire.num_placeholders(out_mm_kwargs, item_idx)

        return [
            PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)
        ]

    @classmethod
    def vision_attention_refusal(cls, hf_config: Any) -> str | None:
        if isinstance(hf_config.vision_config, CLIPVisionConfig) and isinstance(
            hf_config.vision_feature_layer, int
        ):
            return None
        return (
            "it needs a CLIP vision tower with a [CLS] token and one feature layer; "
            f"this model has {type(hf_config.vision_config).__name__}"
        )


def _build_processor(
    info: LlavaProcessingInfo, dummy_inputs: BaseDummyInputsBuilder
) -> BaseMultiModalProcessor:
    if isinstance(info, LlavaProcessingInfo):
        return PruneLlavaMultiModalProcessor(info, dummy_inputs)
    # Pixtral-HF checkpoints share the architecture name; they are served unpruned.
    return _build_llava_or_pixtral_hf_processor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    _build_processor,
    info=_build_llava_or_pixtral_hf_info,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class PruneLlavaForConditionalGeneration(TowerBatchesMixin, LlavaForConditionalGeneration):
    prune_processor = PruneLlavaMultiModalProcessor  # its refusals, for GET /v1/prune/methods

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        refuse_pipeline_parallel(vllm_config.parallel_config.pipeline_parallel_size)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        check_not_swapped(type(self), vllm_config.model_config.architecture)
        self._init_tower_batches(vllm_config)

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = wire.pop_plans(kwargs)
        if plans is None:
            return super().embed_multimodal(**kwargs)
        wanted = frozenset(need for need in TOWER_NEEDS if needs(plans, need))
        layers = self.vision_tower.vision_model.encoder.layers  # up to the selected layer
        with capture_tower(
            [layer.self_attn.attn for layer in layers],
            self.config.vision_config.num_hidden_layers,
            wanted,
            sum_over_tensor_parallel,
        ) as captured:
            if needs(plans, IN_TOWER):
                embeddings, cuts = self._embed_one_by_one(plans, **kwargs)
            else:
                tokens = [plan.tokens for plan in plans]
                embeddings, cuts = self._encode_in_batches(kwargs, tokens), [None] * len(plans)
        measured = captured.per_image([image.shape[0] for image in embeddings])
        llm = self.language_model.model
        out = []
        for image, plan, seen, cut in zip(embeddings, plans, measured, cuts, strict=True):
            observed = observe(llm, image, plan, seen, sum_over_ranks=sum_over_tensor_parallel)
            if cut is None:
                out.append(apply_plan(image, square_grid(image.shape[0]), plan, **observed))
            else:
                grid = square_grid(self._patches())
                out.append(apply_plan(image, grid, plan, tower_kept=cut.kept, **observed))
        return out

    def _embed_one_by_one(
        self, plans: list[PrunePlan], **kwargs: object
    ) -> tuple[list[torch.Tensor], list[TowerCut | None]]:
        """Each image through the tower on its own, in-tower methods cutting as they go."""
        image_input = self._parse_and_validate_image_input(**kwargs)
        assert image_input is not None and image_input["type"] == "pixel_values"
        layers = self.vision_tower.vision_model.encoder.layers
        embeddings, cuts = [], []
        for pixels, plan in zip(image_input["pixel_values"], plans, strict=True):
            cut = None
            with ExitStack() as stack:
                if IN_TOWER in plan.needs:
                    cut = get_method(plan.method).tower_cut(
                        self._patches(), plan.keep, len(layers) - 1
                    )
                    stack.enter_context(cut_in_tower(layers, cut, sum_over_tensor_parallel))
                features = self._image_pixels_to_features(self.vision_tower, pixels[None])
            embeddings.append(self.multi_modal_projector(features)[0])
            cuts.append(cut)
        return embeddings, cuts

    def _patches(self) -> int:
        """The tower's patches of one image."""
        vision = self.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2
