"""The per-request prune spec: parsed once, validated with errors that name the field.

The same fields travel from the HTTP request (top-level ``prune``,
``prune_ratio``, ``prune_keep`` and the method's own parameters) into vLLM's
``mm_processor_kwargs``, where the processor parses them again; both sides use
``PruneSpec.from_fields`` so they can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .methods import get_method, method_names
from .methods.base import TEXT, proportional_quotas

METHOD_FIELD = "prune"
RATIO_FIELD = "prune_ratio"
KEEP_FIELD = "prune_keep"
# A total of kept visual tokens across all images of the request.
BUDGET_FIELD = "prune_budget"
# The question that text-guided methods score against. The server fills it from
# the request's last user message; inside mm_processor_kwargs it is part of the
# multimodal hash, so one question's selection is never served to another.
TEXT_FIELD = "prune_text"
# How much of a long question text-guided methods score against: its end (where a
# chat's question usually is). The server keeps the last MAX_TEXT_CHARS characters of
# the last user message, the processor the last MAX_QUESTION_TOKENS of its tokens, so
# a long question costs the scout pass a bounded sequence and is never refused.
MAX_TEXT_CHARS = 16_384
MAX_QUESTION_TOKENS = 512
DEFAULT_RATIO = 0.75


class PruneSpecError(ValueError):
    """A prune field is wrong; ``field`` names it for the HTTP 400 body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def method_param_names() -> set[str]:
    return {p.name for name in method_names() for p in get_method(name).params}


def prune_field_names() -> set[str]:
    """Every request field that belongs to the prune spec."""
    return {METHOD_FIELD, RATIO_FIELD, KEEP_FIELD, BUDGET_FIELD, TEXT_FIELD} | method_param_names()


def client_field_names() -> list[str]:
    """The prune fields a client may send (``prune_text`` is the server's), sorted."""
    return sorted(prune_field_names() - {TEXT_FIELD})


def needs_text(method: str) -> bool:
    return TEXT in get_method(method).needs


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PruneSpecError(name, f"'{name}' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise PruneSpecError(name, f"'{name}' must be finite, got {value!r}")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PruneSpecError(name, f"'{name}' must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class PruneSpec:
    method: str
    ratio: float | None = None
    keep: int | None = None
    budget: int | None = None
    params: dict[str, int | float] = field(default_factory=dict)
    text: str | None = None  # only for methods that need text

    @classmethod
    def from_fields(
        cls, fields: Mapping[str, Any], default_ratio: float = DEFAULT_RATIO
    ) -> PruneSpec | None:
        """Parse the prune fields of a request; ``None`` when it names no method."""
        if fields.get(METHOD_FIELD) is None:
            stray = sorted(
                k
                for k, v in fields.items()
                if k in prune_field_names() and k != METHOD_FIELD and v is not None
            )
            if stray:
                raise PruneSpecError(
                    stray[0],
                    f"'{stray[0]}' needs '{METHOD_FIELD}' to name a method; "
                    f"allowed methods: {', '.join(method_names())}",
                )
            return None

        name = fields[METHOD_FIELD]
        if not isinstance(name, str) or name not in method_names():
            raise PruneSpecError(
                METHOD_FIELD,
                f"'{METHOD_FIELD}' must be one of {', '.join(method_names())}; got {name!r}",
            )
        method = get_method(name)

        ratio = fields.get(RATIO_FIELD)
        keep = fields.get(KEEP_FIELD)
        budget = fields.get(BUDGET_FIELD)
        sent = [
            f
            for f, v in ((RATIO_FIELD, ratio), (KEEP_FIELD, keep), (BUDGET_FIELD, budget))
            if v is not None
        ]
        if len(sent) > 1:
            raise PruneSpecError(
                sent[0],
                f"send one of '{RATIO_FIELD}', '{KEEP_FIELD}' or '{BUDGET_FIELD}', not "
                f"{' and '.join(repr(f) for f in sent)}",
            )
        if ratio is not None:
            ratio = _number(RATIO_FIELD, ratio)
            if not 0.0 <= ratio < 1.0:
                raise PruneSpecError(
                    RATIO_FIELD,
                    f"'{RATIO_FIELD}' is the fraction of visual tokens removed and "
                    f"must be in [0, 1); got {ratio}",
                )
        if keep is not None:
            keep = _integer(KEEP_FIELD, keep)
            if keep < 1:
                raise PruneSpecError(
                    KEEP_FIELD,
                    f"'{KEEP_FIELD}' must be an integer >= 1 (and at most the "
                    f"image's visual tokens); got {keep}",
                )
        if budget is not None:
            budget = _integer(BUDGET_FIELD, budget)
            if budget < 1:
                raise PruneSpecError(
                    BUDGET_FIELD,
                    f"'{BUDGET_FIELD}' is the visual tokens kept across all images and videos "
                    f"of the request and must be an integer >= the number of images and video "
                    f"frames; got {budget}",
                )
        if name == "none":
            ratio = keep = budget = None  # validated above, but nothing is pruned
        elif ratio is None and keep is None and budget is None:
            ratio = default_ratio

        declared = {p.name: p for p in method.params}
        params: dict[str, int | float] = {}
        for key in sorted(method_param_names() & set(fields)):
            if fields[key] is None:
                continue
            if key not in declared:
                allowed = ", ".join(declared) or "none"
                raise PruneSpecError(
                    key,
                    f"'{key}' does not apply to prune method '{name}' (its parameters: {allowed})",
                )
        for param in method.params:
            value = fields.get(param.name)
            if value is None:
                params[param.name] = param.default
                continue
            value = _integer(param.name, value) if param.kind is int else _number(param.name, value)
            if not param.minimum <= value <= param.maximum:
                raise PruneSpecError(
                    param.name,
                    f"'{param.name}' must be in [{param.minimum}, {param.maximum}]; got {value}",
                )
            params[param.name] = value

        text = fields.get(TEXT_FIELD)
        if text is not None and not isinstance(text, str):
            raise PruneSpecError(TEXT_FIELD, f"'{TEXT_FIELD}' must be a string")
        if text is not None and len(text) > MAX_TEXT_CHARS:
            raise PruneSpecError(
                TEXT_FIELD, f"'{TEXT_FIELD}' must be at most {MAX_TEXT_CHARS} characters"
            )
        # Methods that ignore the text keep it out of the spec (and the cache key).
        text = text if needs_text(name) else None
        return cls(method=name, ratio=ratio, keep=keep, budget=budget, params=params, text=text)

    def keep_for(self, num_tokens: int, frames: int = 1) -> int:
        """How many of an image's (or a video's) ``num_tokens`` visual tokens survive.

        A video of ``frames`` frames keeps at least one token per frame.
        """
        if self.method == "none":
            return num_tokens
        if self.keep is not None:
            if not frames <= self.keep <= num_tokens:
                what = "this image" if frames == 1 else f"this video of {frames} frames"
                raise PruneSpecError(
                    KEEP_FIELD,
                    f"'{KEEP_FIELD}' must be in [{frames}, {num_tokens}] for {what} "
                    f"({num_tokens} visual tokens); got {self.keep}",
                )
            return self.keep
        assert self.ratio is not None
        return max(frames, round(num_tokens * (1.0 - self.ratio)))

    def keeps_for(self, num_tokens: list[int], frames: list[int] | None = None) -> list[int]:
        """Tokens kept per image or video of one request (the budget is shared, the rest each).

        ``frames``: each item's frames (1 for an image); a video keeps at least one
        token per frame. The budget is spread in proportion to the items' tokens (the
        same ratio for every item, largest remainders rounded up) above those
        minimums. It cannot follow a method's scores: each item's placeholder count is
        fixed here, in the API server, before any model has looked at an image.
        """
        frames = frames or [1] * len(num_tokens)
        if self.budget is None or self.method == "none":
            return [self.keep_for(n, f) for n, f in zip(num_tokens, frames, strict=True)]
        total, least = sum(num_tokens), sum(frames)
        if not least <= self.budget <= total:
            raise PruneSpecError(
                BUDGET_FIELD,
                f"'{BUDGET_FIELD}' must be in [{least}, {total}] for this request "
                f"({len(num_tokens)} images and videos, {least} images and video frames, "
                f"{total} visual tokens); got {self.budget}",
            )
        above = [n - f for n, f in zip(num_tokens, frames, strict=True)]
        shares = proportional_quotas(above, self.budget - least)
        return [f + share for f, share in zip(frames, shares, strict=True)]

    def to_fields(self) -> dict[str, Any]:
        """The request fields that reproduce this spec (for ``mm_processor_kwargs``)."""
        fields: dict[str, Any] = {METHOD_FIELD: self.method}
        if self.keep is not None:
            fields[KEEP_FIELD] = self.keep
        elif self.budget is not None:
            fields[BUDGET_FIELD] = self.budget
        elif self.ratio is not None:
            fields[RATIO_FIELD] = self.ratio
        fields.update(self.params)
        if self.text is not None:
            fields[TEXT_FIELD] = self.text
        return fields
