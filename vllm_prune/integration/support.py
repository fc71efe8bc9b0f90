"""Which methods a served model runs.

``GET /v1/prune/methods`` reports it, so a client learns what the model refuses before
sending images, and a server whose model is not pruned at all answers a request that
names a method with a 400 saying why. A family file's answer is its processor's own
refusal (``PruneProcessorMixin.family_refusal``), the one a request would get as a 400;
any other model's is the generic adapter's decision (``generic.decide``). Where the
version gate switched pruning off, every method but ``none`` gives its reason.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..methods import method_names
from .compat import gate
from .plugin import OVERRIDES

UNPRUNED = "vllm-prune does not prune this model; its images are served unpruned"


def _all_refused(reason: str) -> dict[str, str | None]:
    return {m: None if m == "none" else reason for m in method_names()}


def method_support(model_config: Any) -> dict[str, str | None]:
    """Per method: why the served model (vLLM's ``ModelConfig``) refuses it, or None."""
    off = gate().off_reason()
    if off is not None:
        return _all_refused(off)
    hf_config = model_config.hf_config
    architectures = getattr(hf_config, "architectures", None) or []
    processor = _family_processor(hf_config)
    if processor is not None:
        return {m: processor.family_refusal(m, hf_config) for m in method_names()}
    if not architectures or not model_config.is_multimodal_model:
        return _all_refused(UNPRUNED)
    from . import generic

    decision = generic.DECISIONS.get(architectures[0])
    if decision is None:  # decided when vLLM builds the model's processor
        from vllm.multimodal import MULTIMODAL_REGISTRY

        MULTIMODAL_REGISTRY.create_processor(model_config)
        decision = generic.DECISIONS.get(architectures[0])
    if decision is None:
        return _all_refused(UNPRUNED)
    if decision.refusal is not None:
        return _all_refused(
            f"vllm-prune serves {decision.architecture} unpruned: {decision.refusal}"
        )
    return generic.refusals(decision, hf_config)


def unpruned_reason(support: dict[str, str | None]) -> str | None:
    """Why the model is not pruned at all (every method but ``none`` refused alike), or None."""
    reasons = {reason for method, reason in support.items() if method != "none"}
    if len(reasons) == 1 and None not in reasons:
        return next(iter(reasons))
    return None


def _family_processor(hf_config: Any) -> type | None:
    """The pruning processor class of the served model's family file, or None (generic)."""
    architectures = getattr(hf_config, "architectures", None) or []
    target = next((OVERRIDES[a] for a in architectures if a in OVERRIDES), None)
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name).prune_processor


def prunes_videos(hf_config: Any) -> bool:
    """Whether a request's videos are pruned: the processor's own ``prunes_videos`` (a
    family file's; the generic adapter serves videos unpruned)."""
    processor = _family_processor(hf_config)
    return processor is not None and bool(processor.prunes_videos)
