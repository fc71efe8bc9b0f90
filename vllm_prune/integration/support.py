"""Which methods a served model runs, from its Hugging Face config.

``GET /v1/prune/methods`` reports it, so a client learns what the model refuses before
sending images. The answer is each family processor's own refusal
(``PruneProcessorMixin.family_refusal``), the one a request would get as a 400; where
the version gate switched pruning off, every method but ``none`` gives its reason.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..methods import method_names
from .compat import gate
from .plugin import OVERRIDES

UNPRUNED = "vllm-prune does not prune this model family; its images are served unpruned"


def method_support(hf_config: Any) -> dict[str, str | None]:
    """Per method: why the model refuses it, or None where it runs."""
    off = gate().off_reason()
    if off is not None:
        return {m: None if m == "none" else off for m in method_names()}
    architectures = getattr(hf_config, "architectures", None) or []
    target = next((OVERRIDES[a] for a in architectures if a in OVERRIDES), None)
    if target is None:
        return {m: None if m == "none" else UNPRUNED for m in method_names()}
    module, _, name = target.partition(":")
    processor = getattr(importlib.import_module(module), name).prune_processor
    return {m: processor.family_refusal(m, hf_config) for m in method_names()}
