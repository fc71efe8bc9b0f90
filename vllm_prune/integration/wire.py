"""The prune fields that travel with each image or video from the processor to the model.

The processor (API-server process) decides ``keep`` per image and stores it,
with the method and its parameters, as small per-image tensors beside
``pixel_values``. vLLM ships them to the engine with the image (they are part
of the multimodal item, so the encoder cache is keyed on them too), and the
model's ``embed_multimodal`` pops them and decodes one ``PrunePlan`` per image.
Every image carries the fields, unpruned ones included (method ``none``), so
items from different requests always batch together. A video carries the same
fields under ``video_``-prefixed names (a field belongs to one modality), plus
each frame's ``keep`` (``video_prune_frame_keeps``). An image of the generic
adapter carries its parts (``prune_parts``: run, rows, keep, grid and separator rows of
each tile, row or run; ``layout``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from vllm.multimodal.inputs import MultiModalFieldConfig

from ..layout import Part
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
FRAME_KEEPS_KEY = "prune_frame_keeps"  # videos: the tokens each frame keeps (padded with -1)
PARTS_KEY = "prune_parts"  # generic adapter: [P, 6] run, size, keep, h, w, newlines (-1 pads)
PART_COLUMNS = 6
MODALITIES = ("image", "video")


def key(name: str, modality: str) -> str:
    """A field's name for ``modality``: ``prune_keep`` (image), ``video_prune_keep``."""
    return name if modality == "image" else f"{modality}_{name}"


def keys(modality: str) -> tuple[str, ...]:
    names = (*KEYS, PARTS_KEY) if modality == "image" else (*KEYS, FRAME_KEEPS_KEY)
    return tuple(key(name, modality) for name in names)


def field_config(modality: str = "image") -> dict[str, MultiModalFieldConfig]:
    return {k: MultiModalFieldConfig.batched(modality, keep_on_cpu=True) for k in keys(modality)}


def encode(
    spec: PruneSpec,
    num_tokens: Sequence[int],
    keeps: Sequence[int],
    text_ids: Sequence[int] = (),
    patches: Sequence[int] | None = None,
    modality: str = "image",
    frame_keeps: Sequence[Sequence[int]] = (),
    parts: Sequence[Sequence[tuple[Part, int]]] = (),
) -> dict[str, torch.Tensor]:
    """Per-item prune fields of one modality for items of ``num_tokens`` visual tokens,
    each keeping ``keeps`` (``spec.keeps_for``; a video's ``frame_keeps`` per frame).

    ``patches``: each item's patches before training-aware merging (default: no
    merging, the same as ``num_tokens``). ``parts``: each image's parts with the
    tokens each keeps (the generic adapter; none for the family files).
    """
    method = get_method(spec.method)
    values = [float(spec.params[p.name]) for p in method.params]
    count = len(num_tokens)
    fields = {
        METHOD_KEY: torch.full((count,), method_id(spec.method), dtype=torch.long),
        KEEP_KEY: torch.tensor(list(keeps), dtype=torch.long),
        PARAMS_KEY: torch.tensor([values] * count, dtype=torch.float64).reshape(count, len(values)),
        TEXT_IDS_KEY: torch.tensor([list(text_ids)] * count, dtype=torch.long).reshape(
            count, len(text_ids)
        ),
        TOKENS_KEY: torch.tensor(list(num_tokens), dtype=torch.long),
        PATCHES_KEY: torch.tensor(list(patches if patches is not None else num_tokens)),
    }
    if modality != "image":
        longest = max((len(f) for f in frame_keeps), default=0)
        padded = [list(f) + [-1] * (longest - len(f)) for f in frame_keeps]
        fields[FRAME_KEEPS_KEY] = torch.tensor(padded, dtype=torch.long).reshape(count, longest)
    if parts:
        longest = max(len(p) for p in parts)
        rows = [
            [_part_row(part, kept) for part, kept in item]
            + [[-1] * PART_COLUMNS] * (longest - len(item))
            for item in parts
        ]
        fields[PARTS_KEY] = torch.tensor(rows, dtype=torch.long).reshape(
            count, longest, PART_COLUMNS
        )
    return {key(name, modality): value for name, value in fields.items()}


def _part_row(part: Part, kept: int) -> list[int]:
    h, w = part.grid or (0, 0)  # 0 x 0: the grid is not known
    return [part.run, part.size, kept, h, w, part.newlines]


def _parts(rows: torch.Tensor) -> tuple[tuple[Part, int], ...]:
    """One image's (part, keep) pairs without the rows that pad them to the request's longest."""
    found = []
    for run, size, kept, h, w, newlines in rows.reshape(-1, PART_COLUMNS).tolist():
        if run >= 0:
            found.append((Part(run, size, (h, w) if h > 0 else None, newlines), kept))
    return tuple(found)


def _per_item(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0))
    return [torch.as_tensor(v) for v in value]  # type: ignore[union-attr]


def pop_plans(kwargs: dict[str, object], modality: str = "image") -> list[PrunePlan] | None:
    """Remove one modality's prune fields from the model kwargs and decode one plan per item."""
    if key(KEEP_KEY, modality) not in kwargs:
        return None
    methods = _per_item(kwargs.pop(key(METHOD_KEY, modality)))
    keeps = _per_item(kwargs.pop(key(KEEP_KEY, modality)))
    params = _per_item(kwargs.pop(key(PARAMS_KEY, modality)))
    texts = _per_item(kwargs.pop(key(TEXT_IDS_KEY, modality)))
    tokens = _per_item(kwargs.pop(key(TOKENS_KEY, modality)))
    kwargs.pop(key(PATCHES_KEY, modality))
    frames: list[tuple[int, ...]] = [()] * len(keeps)
    if modality != "image":
        frames = [_unpadded(f) for f in _per_item(kwargs.pop(key(FRAME_KEEPS_KEY, modality)))]
    parts: list[tuple[tuple[Part, int], ...]] = [()] * len(keeps)
    if key(PARTS_KEY, modality) in kwargs:
        parts = [_parts(p) for p in _per_item(kwargs.pop(key(PARTS_KEY, modality)))]
    plans = []
    for m, k, p, t, f, s, n in zip(
        methods, keeps, params, texts, frames, parts, tokens, strict=True
    ):
        method = method_by_id(int(m))
        values = dict(zip((q.name for q in method.params), p.reshape(-1).tolist(), strict=True))
        for q in method.params:
            if q.kind is int:
                values[q.name] = int(values[q.name])
        plans.append(
            PrunePlan(
                method=method.name,
                keep=int(k),
                params=values,
                text_ids=t.reshape(-1),
                frame_keeps=f,
                parts=s,
                tokens=int(n),
            )
        )
    return plans


@dataclass(frozen=True)
class Counts:
    """One image's visual tokens at each stage: patches -> merged tokens -> kept."""

    patches: int
    tokens: int
    keep: int


def item_counts(item: Mapping[str, object], modality: str = "image") -> Counts:
    """The counts stored in one processed item (``out_mm_kwargs[modality][i]``)."""
    return Counts(
        patches=int(item[key(PATCHES_KEY, modality)].data),  # type: ignore[attr-defined]
        tokens=int(item[key(TOKENS_KEY, modality)].data),  # type: ignore[attr-defined]
        keep=int(item[key(KEEP_KEY, modality)].data),  # type: ignore[attr-defined]
    )


def num_placeholders(
    out_mm_kwargs: Mapping[str, object], item_idx: int, modality: str = "image"
) -> int:
    """The ``keep`` the processor stored for item ``item_idx`` of ``modality``."""
    item = out_mm_kwargs[modality][item_idx]  # type: ignore[index]
    return int(item[key(KEEP_KEY, modality)].data)


def frame_keeps(item: Mapping[str, object]) -> list[int]:
    """The tokens each frame of a processed video item keeps."""
    return list(_unpadded(item[key(FRAME_KEEPS_KEY, "video")].data))  # type: ignore[attr-defined]


def _unpadded(frame_keeps: torch.Tensor) -> tuple[int, ...]:
    """One video's per-frame counts without the -1 that pads them to the longest video."""
    return tuple(v for v in frame_keeps.reshape(-1).tolist() if v >= 0)


def item_parts(item: Mapping[str, object]) -> tuple[tuple[Part, int], ...]:
    """The (part, keep) pairs of a processed image item; () where it has none."""
    field = item.get(PARTS_KEY)
    return () if field is None else _parts(field.data)  # type: ignore[attr-defined]
