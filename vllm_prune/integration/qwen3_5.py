"""Qwen3.5 (dense and MoE) with visual-token pruning before the KV cache exists.

Its vision side is Qwen3-VL's tower without DeepStack, and vLLM builds it as a
Qwen3-VL subclass, so the Qwen3-VL glue applies unchanged (``integration.qwen3_vl``):
``keep`` image pads, the retained rows' M-RoPE offsets, text after the image where it
would be unpruned. Its LLM is hybrid: linear-attention (Gated DeltaNet) layers, three
of every four, beside gated full attention. Linear attention has no attention map, so
the methods that read one from a scout pass through the first LLM layers are refused
with a 400; the others (they read the features, the question's embeddings or nothing)
run as on every family. Ours subclass the class vLLM itself loads on the platform
(``compat.qwen3_5_models``: on CUDA in 0.34, the NVIDIA model of ``vllm.models.qwen3_5``).
"""

from __future__ import annotations

from typing import Any

from vllm.config import VllmConfig
from vllm.model_executor.models.qwen3_5 import (
    Qwen3_5MoeProcessingInfo,
    Qwen3_5ProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder
from vllm.multimodal import MULTIMODAL_REGISTRY

from .compat import qwen3_5_models
from .qwen3_vl import PruneQwen3ModelMixin, PruneQwen3VLMultiModalProcessor

# The classes vLLM loads here (0.34 on CUDA: its NVIDIA implementation).
Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration = qwen3_5_models()


class PruneQwen3_5MultiModalProcessor(PruneQwen3VLMultiModalProcessor):
    family = "Qwen3.5"

    @classmethod
    def scout_refusal(cls, hf_config: Any) -> str | None:
        return (
            "Qwen3.5's LLM starts with linear-attention (Gated DeltaNet) layers, which "
            "have no attention map to read"
        )


@MULTIMODAL_REGISTRY.register_processor(
    PruneQwen3_5MultiModalProcessor,
    info=Qwen3_5ProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PruneQwen3_5ForConditionalGeneration(PruneQwen3ModelMixin, Qwen3_5ForConditionalGeneration):
    prune_processor = PruneQwen3_5MultiModalProcessor  # its refusals, for GET /v1/prune/methods

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_pruning(vllm_config)


@MULTIMODAL_REGISTRY.register_processor(
    PruneQwen3_5MultiModalProcessor,
    info=Qwen3_5MoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PruneQwen3_5MoeForConditionalGeneration(
    PruneQwen3ModelMixin, Qwen3_5MoeForConditionalGeneration
):
    prune_processor = PruneQwen3_5MultiModalProcessor  # its refusals, for GET /v1/prune/methods

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._init_pruning(vllm_config)
