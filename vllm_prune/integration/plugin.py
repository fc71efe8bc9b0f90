"""vLLM general plugin: swap in the pruning model classes and their processors.

Runs in every vLLM process (API server, engine core, workers), so it must be
idempotent and cheap: the model modules are registered by import path and
loaded lazily by vLLM when the architecture is actually used. The version gate
(``compat.gate``) decides what it registers: on a refused vLLM or where the
load-time check finds a broken reliance, nothing of that part (one log line
says why), so vLLM serves every model unpruned, exactly as without the plugin.
"""

from __future__ import annotations

import logging
from typing import Any

from ..observability import trace
from . import compat, parallel

logger = logging.getLogger("vllm.prune")  # under vLLM's handler, so it is printed

# Architecture name (as in config.json) -> our family file's subclass, as "module:Class".
# Every other multimodal architecture goes to the generic adapter (``generic_targets``).
OVERRIDES = {
    "LlavaForConditionalGeneration": (
        "vllm_prune.integration.llava:PruneLlavaForConditionalGeneration"
    ),
    "LlavaNextForConditionalGeneration": (
        "vllm_prune.integration.llava_next:PruneLlavaNextForConditionalGeneration"
    ),
    "Qwen2VLForConditionalGeneration": (
        "vllm_prune.integration.qwen2_vl:PruneQwen2VLForConditionalGeneration"
    ),
    "Qwen2_5_VLForConditionalGeneration": (
        "vllm_prune.integration.qwen2_vl:PruneQwen2_5_VLForConditionalGeneration"
    ),
    "Qwen3VLForConditionalGeneration": (
        "vllm_prune.integration.qwen3_vl:PruneQwen3VLForConditionalGeneration"
    ),
    "Qwen3VLMoeForConditionalGeneration": (
        "vllm_prune.integration.qwen3_vl:PruneQwen3VLMoeForConditionalGeneration"
    ),
    "Qwen3_5ForConditionalGeneration": (
        "vllm_prune.integration.qwen3_5:PruneQwen3_5ForConditionalGeneration"
    ),
    "Qwen3_5MoeForConditionalGeneration": (
        "vllm_prune.integration.qwen3_5:PruneQwen3_5MoeForConditionalGeneration"
    ),
}

GENERIC_MODULE = "vllm_prune.integration.generic"
MODELS_PACKAGE = "vllm.model_executor.models."


def generic_targets(registry: Any) -> dict[str, str]:
    """Every multimodal architecture vLLM registered -> its generic pruning subclass.

    By import path only (``integration.generic`` builds the class when vLLM loads it),
    so this is cheap in every process; whether pruning holds is decided there, at start.
    """
    from vllm.model_executor.models.registry import _MULTIMODAL_MODELS

    targets = {}
    for architecture in _MULTIMODAL_MODELS:
        registered = registry.models.get(architecture)
        module = getattr(registered, "module_name", "")
        if architecture in OVERRIDES or not module.startswith(MODELS_PACKAGE):
            continue
        name = f"Prune__{module[len(MODELS_PACKAGE) :]}__{registered.class_name}"
        targets[architecture] = f"{GENERIC_MODULE}:{name}"
    return targets


_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    gate = compat.gate()
    if gate.refusal is not None:
        logger.warning("%s; pruning is off and every model is served unpruned", gate.refusal)
        return
    if gate.unchecked_warning() is not None:
        logger.warning("%s", gate.unchecked_warning())
    if gate.holds(compat.MEDIA):
        from . import media  # noqa: F401  registers the guarded media connector
    else:
        logger.warning(
            "vllm-prune's guarded media connector is not registered on vLLM %s: %s",
            gate.version,
            "; ".join(gate.broken(compat.MEDIA)),
        )
    if not gate.pruning:
        logger.warning("%s; every model is served unpruned", gate.off_reason())
        return
    from vllm import ModelRegistry

    for architecture, target in {**generic_targets(ModelRegistry), **OVERRIDES}.items():
        ModelRegistry.register_model(architecture, target)
    trace.rank = parallel.tensor_parallel_rank
