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


# Architecture -> (module, class) that vLLM itself registered, recorded before ours
# replace them: the class vLLM would load on this platform and release.
VLLMS_OWN: dict[str, tuple[str, str]] = {}

_registered = False


def check_not_swapped(model_cls: type, architecture: str) -> None:
    """Fail at load where our class for ``architecture`` does not subclass the class vLLM
    itself would load (vLLM 0.34 loads Qwen3.5 on CUDA from an NVIDIA package of its own):
    vllm-prune adds pruning to vLLM's implementation, it never replaces it."""
    if architecture not in VLLMS_OWN:
        return
    import importlib

    module, name = VLLMS_OWN[architecture]
    own = getattr(importlib.import_module(module), name)
    if not issubclass(model_cls, own):
        raise TypeError(
            f"vllm-prune: its class for {architecture} ({model_cls.__module__}."
            f"{model_cls.__qualname__}) does not subclass the one vLLM loads here "
            f"({module}.{name}); it would swap vLLM's implementation. Serve with "
            "VLLM_PLUGINS='' (unpruned) and report this vLLM version"
        )


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
        own = ModelRegistry.models.get(architecture)
        if own is not None and hasattr(own, "module_name"):
            VLLMS_OWN[architecture] = (own.module_name, own.class_name)
        ModelRegistry.register_model(architecture, target)
    trace.rank = parallel.tensor_parallel_rank
