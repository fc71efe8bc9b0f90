"""The prune fields that travel with each image from the processor to the model.

The processor (API-server process) decides ``keep`` per image and stores it,
with the method and its parameters, as three small per-image tensors beside
``pixel_values``. vLLM ships them to the engine with the image (they are part
of the multimodal item, so the encoder cache is keyed on them too), and the
model's ``embed_multimodal`` pops them and reduces each image to ``keep`` rows.
Every image carries the fields, unpruned ones included (method ``none``), so
items from different requests always batch together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.inputs import MultiModalFieldConfig

from .. import trace
from ..methods import Context, Reduced, get_method, method_by_id, method_id
from ..spec import PruneSpec, PruneSpecError

METHOD_KEY = "prune_method"
KEEP_KEY = "prune_keep"
PARAMS_KEY = "prune_params"
TEXT_IDS_KEY = "prune_text_ids"  # the question's token ids (empty for other methods)
TOKENS_KEY = "prune_tokens"  # the image's unpruned visual tokens, N
PATCHES_KEY = "prune_patches"  # its vision-tower patches before training-aware merging
KEYS = (METHOD_KEY, KEEP_KEY, PARAMS_KEY, TEXT_IDS_KEY, TOKENS_KEY, PATCHES_KEY)


def field_config(modality: str = "image") -> dict[str, MultiModalFieldConfig]:
    return {key: MultiModalFieldConfig.batched(modality, keep_on_cpu=True) for key in KEYS}


def refuse(field: str, message: str) -> VLLMValidationError:
    """vLLM's own validation error, which its server turns into an HTTP 400 naming the field."""
    return VLLMValidationError(message, parameter=field)


def parse(hf_kwargs: Mapping[str, object]) -> PruneSpec:
    """The request's prune spec (``none`` when it names no method)."""
    try:
        return PruneSpec.from_fields(hf_kwargs) or PruneSpec(method="none")
    except PruneSpecError as err:
        raise refuse(err.field, str(err)) from err


def encode(
    spec: PruneSpec,
    num_tokens: Sequence[int],
    text_ids: Sequence[int] = (),
    patches: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image prune fields for images of ``num_tokens`` visual tokens each.

    ``patches``: each image's patches before training-aware merging (default:
    no merging, the same as ``num_tokens``).
    """
    try:
        keeps = spec.keeps_for(list(num_tokens))
    except PruneSpecError as err:
        raise refuse(err.field, str(err)) from err
    method = get_method(spec.method)
    values = [float(spec.params[p.name]) for p in method.params]
    count = len(num_tokens)
    return {
        METHOD_KEY: torch.full((count,), method_id(spec.method), dtype=torch.long),
        KEEP_KEY: torch.tensor(keeps, dtype=torch.long),
        PARAMS_KEY: torch.tensor([values] * count, dtype=torch.float64).reshape(count, len(values)),
        TEXT_IDS_KEY: torch.tensor([list(text_ids)] * count, dtype=torch.long).reshape(
            count, len(text_ids)
        ),
        TOKENS_KEY: torch.tensor(list(num_tokens), dtype=torch.long),
        PATCHES_KEY: torch.tensor(list(patches if patches is not None else num_tokens)),
    }


@dataclass(frozen=True)
class Counts:
    """One image's visual tokens at each stage: patches -> merged tokens -> kept."""

    patches: int
    tokens: int
    keep: int


def item_counts(item: Mapping[str, object]) -> Counts:
    """The counts stored in one processed image item (``out_mm_kwargs["image"][i]``)."""
    return Counts(
        patches=int(item[PATCHES_KEY].data),  # type: ignore[attr-defined]
        tokens=int(item[TOKENS_KEY].data),  # type: ignore[attr-defined]
        keep=int(item[KEEP_KEY].data),  # type: ignore[attr-defined]
    )


@dataclass(frozen=True)
class PrunePlan:
    """What the model does to one image: which method, how many rows, which params."""

    method: str
    keep: int
    params: dict[str, int | float]
    text_ids: torch.Tensor  # [T], int64; empty unless the method needs text


def _per_item(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0))
    return [torch.as_tensor(v) for v in value]  # type: ignore[union-attr]


def pop_plans(kwargs: dict[str, object]) -> list[PrunePlan] | None:
    """Remove the prune fields from the model kwargs and decode one plan per image."""
    if KEEP_KEY not in kwargs:
        return None
    methods = _per_item(kwargs.pop(METHOD_KEY))
    keeps = _per_item(kwargs.pop(KEEP_KEY))
    params = _per_item(kwargs.pop(PARAMS_KEY))
    texts = _per_item(kwargs.pop(TEXT_IDS_KEY))
    kwargs.pop(TOKENS_KEY)
    kwargs.pop(PATCHES_KEY)
    plans = []
    for m, k, p, t in zip(methods, keeps, params, texts, strict=True):
        method = method_by_id(int(m))
        values = dict(zip((q.name for q in method.params), p.reshape(-1).tolist(), strict=True))
        for q in method.params:
            if q.kind is int:
                values[q.name] = int(values[q.name])
        plans.append(
            PrunePlan(method=method.name, keep=int(k), params=values, text_ids=t.reshape(-1))
        )
    return plans


def square_grid(num_tokens: int) -> tuple[int, int]:
    """The token grid of a square image; a 1 x N strip when N is not a square."""
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else (1, num_tokens)


def reduce_plan(
    features: torch.Tensor,
    grid: tuple[int, int],
    plan: PrunePlan,
    *,
    part: str | None = None,
    **observed: torch.Tensor,
) -> Reduced:
    """The ``plan.keep`` rows of one image's features and the tokens they stand for.

    Every family prunes through here, so this is where ``VLLM_PRUNE_TRACE`` records
    them. ``part``: which grid of the image this is, when it has several (LLaVA-NeXT).
    ``observed``: what the model measured for the method's needs (``Context`` fields).
    """
    ctx = Context(params=dict(plan.params), **observed)
    reduced = get_method(plan.method).reduce(features, grid, plan.keep, ctx)
    trace.record(plan.method, features, grid, reduced, part=part)
    return reduced


def apply_plan(
    features: torch.Tensor, grid: tuple[int, int], plan: PrunePlan, **observed: torch.Tensor
) -> torch.Tensor:
    """The ``plan.keep`` rows of one image's features that go to the LLM."""
    return reduce_plan(features, grid, plan, **observed).features


def needs(plans: Sequence[PrunePlan], need: str) -> bool:
    return any(need in get_method(plan.method).needs for plan in plans)


def num_placeholders(out_mm_kwargs: Mapping[str, object], item_idx: int) -> int:
    """The ``keep`` the processor stored for image ``item_idx``."""
    item = out_mm_kwargs["image"][item_idx]  # type: ignore[index]
    return int(item[KEEP_KEY].data)
