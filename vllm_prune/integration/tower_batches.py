"""The vision tower's batches within the encoder budget, for every family.

vLLM's scheduler counts an image (or a video) against a step's encoder budget by its
pruned placeholder, while the tower still encodes all of it: one step may hand the tower
up to ``N / keep`` times what its start-up profile encoded at once. A pruning model
encodes the items of one call in batches whose unpruned rows stay within
``max_num_encoder_input_tokens`` (an item larger than that alone), cut and batched again
by vLLM's own steps: the processor's field layout splits the call's inputs into items,
and ``group_and_batch_mm_kwargs`` batches each run of them as the runner does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalKwargsItems
from vllm.multimodal.processing import BaseMultiModalProcessor
from vllm.multimodal.utils import group_and_batch_mm_kwargs

from .. import layout

logger = logging.getLogger("vllm.prune")


class TowerBatchesMixin:
    """Mixed into a pruning model before vLLM's class; ``_init_tower_batches`` in its
    ``__init__``. ``super().embed_multimodal`` here is vLLM's own."""

    def _init_tower_batches(self, vllm_config: VllmConfig) -> None:
        self._tower_model_config = vllm_config.model_config
        self._encoder_budget = int(vllm_config.scheduler_config.max_num_encoder_input_tokens)
        self._fields_processor: BaseMultiModalProcessor | None = None

    def _tower_batches(
        self, kwargs: dict[str, object], rows: Sequence[int], modality: str = "image"
    ) -> list[tuple[dict[str, object], int, int]]:
        """(inputs, start, end) of each batch of items, whose unpruned ``rows`` stay within
        ``max_num_encoder_input_tokens``; the call's own inputs where one batch holds all."""
        chunks = layout.batches(rows, self._encoder_budget)
        if len(chunks) <= 1:
            return [(kwargs, 0, len(rows))]
        logger.info(
            "vllm-prune: the tower encodes %d %ss in %d batches (%d unpruned rows; "
            "max_num_encoder_input_tokens is %d)",
            len(rows),
            modality,
            len(chunks),
            sum(rows),
            self._encoder_budget,
        )
        if self._fields_processor is None:
            self._fields_processor = MULTIMODAL_REGISTRY.create_processor(self._tower_model_config)
        batches = split_batch(self._fields_processor, kwargs, chunks, modality)
        return [(b, start, end) for b, (start, end) in zip(batches, chunks, strict=True)]

    def _encode_in_batches(
        self, kwargs: dict[str, object], rows: Sequence[int], modality: str = "image"
    ) -> list[torch.Tensor]:
        """vLLM's own ``embed_multimodal`` over the batches, one output per item in order."""
        out: list[torch.Tensor] = []
        for batch, _, _ in self._tower_batches(kwargs, rows, modality):
            out += list(super().embed_multimodal(**batch))  # type: ignore[misc]
        return out


def split_batch(
    processor: BaseMultiModalProcessor,
    kwargs: Mapping[str, object],
    chunks: Sequence[tuple[int, int]],
    modality: str = "image",
) -> list[dict[str, object]]:
    """One call's model inputs cut into the (start, end) runs of items ``chunks``."""
    hf_inputs = BatchFeature(dict(kwargs))
    fields = processor._get_mm_fields_config(hf_inputs, {})
    items = MultiModalKwargsItems.from_hf_inputs(hf_inputs, fields)[modality]
    device = next((v.device for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    batches = []
    for start, end in chunks:
        pairs = [(modality, item) for item in items[start:end]]
        ((_, _, batch),) = group_and_batch_mm_kwargs(pairs, device=device)
        batches.append(dict(batch))
    return batches
