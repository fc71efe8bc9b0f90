"""vLLM general plugin: swap in the pruning model classes and their processors.

Runs in every vLLM process (API server, engine core, workers), so it must be
idempotent and cheap: the model modules are registered by import path and
loaded lazily by vLLM when the architecture is actually used.
"""

from __future__ import annotations

# Architecture name (as in config.json) -> our subclass, as "module:Class".
OVERRIDES = {
    "LlavaForConditionalGeneration": "vllm_prune.models.llava:PruneLlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration": (
        "vllm_prune.models.llava_next:PruneLlavaNextForConditionalGeneration"
    ),
    "Qwen2VLForConditionalGeneration": (
        "vllm_prune.models.qwen2_vl:PruneQwen2VLForConditionalGeneration"
    ),
    "Qwen2_5_VLForConditionalGeneration": (
        "vllm_prune.models.qwen2_vl:PruneQwen2_5_VLForConditionalGeneration"
    ),
}

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry

    for architecture, target in OVERRIDES.items():
        ModelRegistry.register_model(architecture, target)
    _registered = True
