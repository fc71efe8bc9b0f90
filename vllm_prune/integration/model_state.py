"""Model Runner V2's model state for a pruning M-RoPE model: the kept rows' positions.

MRv2 asks a model for its state class (``get_model_state_cls``, the extension point
vLLM's own EVS and out-of-tree plugins use). Ours is the state vLLM would use without
vllm-prune (``DefaultModelState``, or ``MambaHybridModelState`` for Qwen3.5's hybrid
LLM) with ``PrunedPositionsState`` before it: the kept rows' (t, h, w) offsets, which
the model's ``embed_input_ids`` strips from their embeddings (``positions``), are added
to the request's own prefill positions before the step's positions are built, outside
the forward, so FULL and breakable CUDA graphs replay with the right positions.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from vllm.multimodal.utils import copy_mm_embedding_modality
from vllm.v1.worker.gpu.model_states import resolve_model_state_cls
from vllm.v1.worker.gpu.model_states.default import DefaultModelState

from .positions import MODEL_STATE_LINE, POSITION_CHANNELS

logger = logging.getLogger("vllm.prune")


class PrunedPositionsState(DefaultModelState):
    """Writes the kept rows' offsets into the request's positions; mixed before the state
    vLLM would use (``pruned_positions_state``).

    ``prepare_inputs_embeds`` runs the model's ``embed_input_ids``, which strips the
    offset channels and keeps each scheduled token's offset; they are then added to the
    request's rows of ``RopeState.prefill_positions`` (one per dimension), which
    ``prepare_inputs`` turns into the step's positions before the forward. Each image row
    is embedded once (a preempted request's positions are computed anew when it
    returns), so each offset is added once. A drafter's rows (``gather_mm_embeddings``)
    lose the channels, as the target's do.
    """

    def __init__(self, vllm_config: Any, model: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(vllm_config, model, *args, **kwargs)
        model._offsets_in_model_state = True  # its forward must then find none left
        self._width = int(vllm_config.model_config.get_inputs_embeds_size())
        logger.info("%s", MODEL_STATE_LINE)

    def prepare_inputs_embeds(
        self, scheduled_encoder_inputs: Any, input_batch: Any, req_states: Any
    ) -> torch.Tensor:
        embeds = super().prepare_inputs_embeds(scheduled_encoder_inputs, input_batch, req_states)
        offsets = self.model.take_position_offsets()
        if offsets is not None:
            self._write_offsets(offsets, input_batch)
        return embeds

    def _write_offsets(self, offsets: torch.Tensor, input_batch: Any) -> None:
        """Adds ``offsets`` ([3, the step's tokens]) to the positions of the requests'
        tokens they belong to."""
        rope = self.rope_state
        assert rope is not None and rope.num_dims == POSITION_CHANNELS, rope
        starts = input_batch.query_start_loc_np
        computed = input_batch.num_computed_prefill_tokens_np
        target = rope.prefill_positions.gpu
        for batch, request in enumerate(input_batch.idx_mapping_np.tolist()):
            step = offsets[:, int(starts[batch]) : int(starts[batch + 1])]
            moved = step.any(dim=0).nonzero().squeeze(1)
            if moved.numel() == 0:
                continue
            rows = target[POSITION_CHANNELS * request : POSITION_CHANNELS * (request + 1)]
            columns = (moved + int(computed[batch])).to(rows.device)
            rows[:, columns] += step[:, moved].to(rows.device, rows.dtype)

    def gather_mm_embeddings(
        self, input_batch: Any, draft_lookahead: int = 0
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """For a drafter (EAGLE, MTP): the target's rows without our position channels."""
        embeds, is_embed = super().gather_mm_embeddings(input_batch, draft_lookahead)
        stripped = [copy_mm_embedding_modality(e, e[:, : self._width]) for e in embeds]
        return stripped, is_embed


def vllms_model_state(model: Any, vllm_config: Any) -> type:
    """The state class vLLM would pick for ``model`` if it did not define
    ``get_model_state_cls`` (or the one its vLLM class defines)."""
    for base in type(model).__mro__:
        if base.__module__.startswith("vllm.") and "get_model_state_cls" in vars(base):
            # Bound as the class defines it: a method or a staticmethod (0.34 has both).
            return vars(base)["get_model_state_cls"].__get__(model, type(model))()
    return resolve_model_state_cls(vllm_config, _Unhooked(model))


class _Unhooked:
    """The model as ``resolve_model_state_cls`` sees it without our hook."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        if name == "get_model_state_cls":
            raise AttributeError(name)
        return getattr(self._model, name)


@functools.cache
def pruned_positions_state(base: type) -> type:
    """``base`` (the state vLLM would use) with ``PrunedPositionsState`` before it."""
    if not issubclass(base, DefaultModelState):
        raise TypeError(
            f"vllm-prune: pruned M-RoPE positions need a model state built on vLLM's "
            f"DefaultModelState; this model's is {base.__qualname__}. Serve it unpruned "
            "(VLLM_PLUGINS='')"
        )
    if base is DefaultModelState:
        return PrunedPositionsState
    return type(f"Pruned{base.__name__}", (PrunedPositionsState, base), {})
