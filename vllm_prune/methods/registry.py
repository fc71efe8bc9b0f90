"""Name -> method. Adding a method is one new file that calls ``register``."""

from __future__ import annotations

from .base import PruneMethod

_METHODS: dict[str, PruneMethod] = {}


def register(method_cls: type[PruneMethod]) -> type[PruneMethod]:
    """Class decorator: make ``method_cls`` selectable as ``prune=<name>``."""
    name = method_cls.name
    if name in _METHODS and type(_METHODS[name]) is not method_cls:
        raise ValueError(f"prune method {name!r} is registered twice")
    _METHODS[name] = method_cls()
    return method_cls


def get_method(name: str) -> PruneMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(
            f"unknown prune method {name!r}; allowed: {', '.join(method_names())}"
        ) from None


def method_names() -> list[str]:
    """Registered names in a fixed order; the position is the wire id of a method."""
    return sorted(_METHODS)


def method_id(name: str) -> int:
    get_method(name)
    return method_names().index(name)


def method_by_id(index: int) -> PruneMethod:
    names = method_names()
    if not 0 <= index < len(names):
        raise KeyError(f"prune method id {index} out of range [0, {len(names)})")
    return _METHODS[names[index]]
