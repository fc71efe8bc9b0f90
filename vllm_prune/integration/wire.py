"""The prune fields that travel with each image from the processor to the model.

The processor (API-server process) decides ``keep`` per image and stores it,
with the method and its parameters, as small per-image tensors beside
``pixel_values``. vLLM ships them to the engine with the image (they are part
of the multimodal item, so the encoder cache is keyed on them too), and the
model's ``embed_multimodal`` pops them and decodes one ``PrunePlan`` per image.
Every image carries the fields, unpruned ones included (method ``none``), so
items from different requests always batch together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from vllm.multimodal.inputs import MultiModalFieldConfig

from ..methods import get_method, method_by_id, method_id
from ..plan import PrunePlan
from ..spec import PruneSpec

METHOD_KEY = "prune_method"
KEEP_KEY = "prune_keep"
PARAMS_KEY = "prune_params"
TEXT_IDS_KEY = "prune_text_ids"  # the question's token ids (empty for other methods)
TOKENS_KEY = "prune_tokens"  # the image's unpruned visual tokens, N
PATCHES_KEY = "prune_patches"  # its vision-tower patches before training-aware merging
KEYS = (METHOD_KEY, KEEP_KEY, PARAMS_KEY, TEXT_IDS_KEY, TOKENS_KEY, PATCHES_KEY)


def field_config(modality: str = "image") -> dict[str, MultiModalFieldConfig]:
    return {key: MultiModalFieldConfig.batched(modality, keep_on_cpu=True) for key in KEYS}


def encode(
    spec: PruneSpec,
    num_tokens: Sequence[int],
    text_ids: Sequence[int] = (),
    patches: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image prune fields for images of ``num_tokens`` visual tokens each.

    ``patches``: each image's patches before training-aware merging (default:
    no merging, the same as ``num_tokens``). Raises ``PruneSpecError`` when the
    spec does not fit these images (``prune_keep`` above N, ``prune_budget``).
    """
    keeps = spec.keeps_for(list(num_tokens))
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


def num_placeholders(out_mm_kwargs: Mapping[str, object], item_idx: int) -> int:
    """The ``keep`` the processor stored for image ``item_idx``."""
    item = out_mm_kwargs["image"][item_idx]  # type: ignore[index]
    return int(item[KEEP_KEY].data)
