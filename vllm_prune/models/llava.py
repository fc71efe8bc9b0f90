"""LLaVA-1.5 with visual-token pruning before the KV cache exists.

Processor (API-server process): reads the prune spec from the request's
``mm_processor_kwargs``, strips it before the Hugging Face processor runs,
stores ``keep`` per image and emits exactly ``keep`` image placeholders, so the
prompt, the scheduler's token budget and the KV cache all see ``keep`` tokens.

Model (engine process): the vision tower and projector run on the whole image
(576 tokens on a 24 x 24 grid at 336 px); the method then picks ``keep`` rows,
which ``embed_multimodal`` returns. The LLM layers are vLLM's, untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import BatchFeature, CLIPVisionConfig
from vllm.inputs.engine import MultiModalInput
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
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import (
    ImageEmbeddingItems,
    ImageProcessorItems,
    MultiModalDataItems,
)
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    ProcessorInputs,
    PromptReplacement,
    TimingContext,
)

from .. import metrics
from ..methods import get_method
from ..methods.base import SCOUT, TEXT, VISION_ATTENTION
from ..methods.fastv import LAYER_FIELD
from ..spec import METHOD_FIELD, PruneSpec, needs_text, prune_field_names
from . import fields
from .scout import scout
from .vision_attention import ClsAttention, capture_cls_attention, per_image


class PruneLlavaMultiModalProcessor(LlavaMultiModalProcessor):
    def _visual_tokens(self, mm_items: MultiModalDataItems) -> list[int]:
        """Unpruned visual tokens of each image, as vLLM itself counts them."""
        if "image" not in mm_items:
            return []
        images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
        if isinstance(images, ImageEmbeddingItems):
            return [images.get_feature_size(i) for i in range(images.get_count())]
        counts = []
        for i in range(images.get_count()):
            size = images.get_image_size(i)
            counts.append(
                self.info.get_num_image_tokens(image_width=size.width, image_height=size.height)
            )
        return counts

    def _apply_hf_processor_main(
        self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        spec = fields.parse(hf_kwargs)
        self._check_supported(spec.method, mm_items)
        text_ids = self._text_ids(spec)
        plain_kwargs = {k: v for k, v in hf_kwargs.items() if k not in prune_field_names()}
        processed = super()._apply_hf_processor_main(mm_items, plain_kwargs)
        counts = self._visual_tokens(mm_items)
        if counts:
            processed.update(fields.encode(spec, counts, text_ids))
        return processed

    def _text_ids(self, spec: PruneSpec) -> list[int]:
        """The question's token ids, for methods that score against it."""
        if SCOUT in get_method(spec.method).needs:
            layer = spec.params.get(LAYER_FIELD)
            layers = self.info.get_hf_config().text_config.num_hidden_layers
            if layer is not None and layer > layers:
                raise fields.refuse(
                    LAYER_FIELD,
                    f"'{LAYER_FIELD}' must be at most {layers} for this model; got {layer}",
                )
        if not needs_text(spec.method):
            return []
        ids = self.info.get_tokenizer().encode(spec.text or "", add_special_tokens=False)
        if not ids:
            raise fields.refuse(
                METHOD_FIELD,
                f"'{spec.method}' scores visual tokens against the question, and the last "
                "user message has no text",
            )
        return list(ids)

    def _check_supported(self, method: str, mm_items: MultiModalDataItems) -> None:
        """Refuse here, with a 400, what the model could not do in the engine."""
        if VISION_ATTENTION not in get_method(method).needs or "image" not in mm_items:
            return
        if isinstance(
            mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems)),
            ImageEmbeddingItems,
        ):
            raise fields.refuse(
                METHOD_FIELD,
                f"'{method}' reads the vision tower's attention, so it cannot prune "
                "precomputed image embeddings; send the image itself",
            )
        hf_config = self.info.get_hf_config()
        if not isinstance(hf_config.vision_config, CLIPVisionConfig) or not isinstance(
            hf_config.vision_feature_layer, int
        ):
            raise fields.refuse(
                METHOD_FIELD,
                f"'{method}' needs a CLIP vision tower with a [CLS] token and one feature "
                f"layer; this model has {type(hf_config.vision_config).__name__}",
            )

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        config = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        config.update(fields.field_config("image"))
        return config

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptReplacement]:
        image_token_id = self.info.get_hf_config().image_token_index

        def replacement(item_idx: int) -> list[int]:
            return [image_token_id] * fields.num_placeholders(out_mm_kwargs, item_idx)

        return [
            PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)
        ]

    def apply(self, inputs: ProcessorInputs, timing_ctx: TimingContext) -> MultiModalInput:
        result = super().apply(inputs, timing_ctx)
        spec_fields = inputs.hf_processor_mm_kwargs
        # Only client requests carry a method (the server always sets one);
        # vLLM's start-up profiling runs come through here without one.
        if spec_fields.get(METHOD_FIELD) is not None:
            placeholders = result["mm_placeholders"].get("image", [])
            model_config = self.info.ctx.model_config
            metrics.record_prompt(
                method=str(spec_fields[METHOD_FIELD]),
                tokens_before=self._visual_tokens(inputs.mm_data_items),
                tokens_after=[p.length for p in placeholders],
                bytes_per_token=metrics.kv_bytes_per_token(
                    model_config.hf_text_config, model_config.dtype
                ),
            )
        return result


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
class PruneLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = fields.pop_plans(kwargs)
        if plans is None:
            return super().embed_multimodal(**kwargs)
        if not fields.needs(plans, VISION_ATTENTION):
            embeddings = super().embed_multimodal(**kwargs)
            vision: list[ClsAttention | None] = [None] * len(plans)
        else:
            # The last layer vLLM builds is the selected feature layer.
            selected = self.vision_tower.vision_model.encoder.layers[-1].self_attn
            with capture_cls_attention(selected) as captured:
                embeddings = super().embed_multimodal(**kwargs)
            vision = list(per_image(captured, [image.shape[0] for image in embeddings]))
        return [
            fields.apply_plan(
                image, fields.square_grid(image.shape[0]), plan, **self._observe(image, plan, seen)
            )
            for image, plan, seen in zip(embeddings, plans, vision, strict=True)
        ]

    def _observe(
        self, image: torch.Tensor, plan: fields.PrunePlan, seen: ClsAttention | None
    ) -> dict[str, torch.Tensor]:
        """What the plan's method declared it needs, measured on this image."""
        needs = get_method(plan.method).needs
        observed: dict[str, torch.Tensor] = {}
        if seen is not None:
            observed.update(cls_attention=seen.attention, vision_keys=seen.keys)
        if TEXT in needs or SCOUT in needs:
            llm = self.language_model.model
            text = llm.embed_tokens(plan.text_ids.to(image.device))
            observed["text_embeddings"] = text
            if SCOUT in needs:
                result = scout(llm.layers, image, text, int(plan.params[LAYER_FIELD]))
                found = {
                    "text_attention": result.text_attention,
                    "question_attention": result.question_attention,
                    "visual_attention": result.visual_attention,
                    "visual_hidden": result.visual_hidden,
                    "last_hidden": result.last_hidden,
                }
                observed.update({k: v for k, v in found.items() if v is not None})
        return observed
