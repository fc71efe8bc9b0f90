"""The document served at ``GET /v1/prune/methods``: what a client may ask for."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from vllm_prune import auto
from vllm_prune.methods import get_method, method_names
from vllm_prune.spec import BUDGET_FIELD, KEEP_FIELD, METHOD_FIELD, RATIO_FIELD

from .request_fields import ServerDefaults

METHODS_PATH = "/v1/prune/methods"


def methods_document(
    defaults: ServerDefaults,
    support: dict[str, str | None] | None = None,
    vllm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``support``: per method, why the served model refuses it (None where it runs);
    ``vllm``: the version gate's state (``compat.Gate.report``)."""
    data = []
    for name in method_names():
        entry = get_method(name).describe()
        if support is not None:
            entry.update(supported=support[name] is None, refusal=support[name])
        data.append(entry)
    policy = defaults.policy
    reading = defaults.load.reading()
    return {
        "object": "list",
        "data": data,
        **({"vllm": vllm} if vllm is not None else {}),
        "auto": {
            "policy": {
                **asdict(policy),
                "ratios": [policy.ratio(k) for k in range(policy.levels + 1)],
                "thresholds": [round(policy.threshold(k), 4) for k in range(1, policy.levels + 1)],
                "smoothing_s": auto.SMOOTHING_S,
            },
            "reading": asdict(reading),
        },
        "fields": {
            METHOD_FIELD: {
                "type": "string",
                "allowed": [*method_names(), auto.AUTO],
                "default": defaults.method or "none",
                "description": "Pruning method; 'none' turns pruning off, 'auto' lets the "
                "server's load pick the method and ratio.",
            },
            RATIO_FIELD: {
                "type": "float",
                "minimum": 0.0,
                "maximum_exclusive": 1.0,
                "default": defaults.ratio,
                "description": "Fraction of each image's visual tokens removed; "
                "keep = max(1, round(N * (1 - prune_ratio))).",
            },
            KEEP_FIELD: {
                "type": "int",
                "minimum": 1,
                "maximum": "the image's visual tokens N",
                "default": None,
                "description": "Absolute number of visual tokens kept per image; "
                f"not together with {RATIO_FIELD}.",
            },
            BUDGET_FIELD: {
                "type": "int",
                "minimum": "the number of images",
                "maximum": "the request's visual tokens",
                "default": None,
                "description": "Visual tokens kept across all images of the request, spread "
                "in proportion to each image's tokens; not together with "
                f"{RATIO_FIELD} or {KEEP_FIELD}.",
            },
        },
    }
