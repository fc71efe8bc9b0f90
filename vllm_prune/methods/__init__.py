"""Visual-token pruning methods: pure torch, one file each, no vLLM imports.

Importing this package registers every built-in method.
"""

from . import (  # noqa: F401  (registration)
    balanced,
    cdprune,
    cls_attention,
    dart,
    divprune,
    evs,
    fastv,
    fastv_reverse,
    fastv_vis,
    fastv_window,
    flowcut,
    hiprune,
    holov,
    mustdrop,
    none,
    otprune,
    pooling,
    prunesid,
    random_drop,
    sparsevlm,
    vidcom2,
    visiontrim,
    visionzip,
    vispruner,
)
from .base import Context, Param, PruneMethod, Reduced
from .registry import get_method, method_by_id, method_id, method_names, register

__all__ = [
    "Context",
    "Param",
    "PruneMethod",
    "Reduced",
    "get_method",
    "method_by_id",
    "method_id",
    "method_names",
    "register",
]
