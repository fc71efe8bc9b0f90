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

from ..observability import trace
from . import compat, parallel

logger = logging.getLogger("vllm.prune")  # under vLLM's handler, so it is printed

# Architecture name (as in config.json) -> our subclass, as "module:Class".
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

    for architecture, target in OVERRIDES.items():
        ModelRegistry.register_model(architecture, target)
    trace.rank = parallel.tensor_parallel_rank
