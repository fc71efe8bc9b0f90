"""M-RoPE positions of pruned images: each retained row keeps its unpruned position.

Which rows an image keeps is known only after the vision tower runs
(``embed_multimodal``), while vLLM computes a prompt's M-RoPE positions when the
request arrives (``get_mrope_input_positions``). So a pruned image's placeholders get
the position where its grid starts, the text after it continues where it would
without pruning, and each retained row's (t, h, w) offset inside the grid travels
with its embedding as ``POSITION_CHANNELS`` extra channels: ``embed_input_ids`` strips
them and ``forward`` adds them, in place, to this step's positions (vLLM rewrites that
buffer from its per-request copy every step). Shared by the Qwen family files and the
generic adapter's M-RoPE families (GLM-4.1V / 4.5V), whose prompt positions are
vLLM's own, computed on the prompt as it would be unpruned (``unpruned_positions``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from vllm.config import CUDAGraphMode
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange

POSITION_CHANNELS = 3  # (t, h, w) offset of each retained row inside its image grid


def graph_refusal(compilation_config: Any) -> str | None:
    """Why the LLM's CUDA graphs would lose a pruned prompt's positions, or None.

    The retained rows' offsets are added to the positions in ``forward``, so every
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
        "vllm-prune: pruned images and videos of an M-RoPE model need their positions added "
        f"in the model's forward, which {graphs} replay without running; serve with the default "
        "piecewise CUDA graphs (vllm-prune serve sets VLLM_USE_BREAKABLE_CUDAGRAPH=0) or "
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


class PositionOffsetsMixin:
    """Strips the offset channels from the image rows and adds them to the positions;
    ``self`` is also a vLLM M-RoPE model class. Call ``_init_positions`` after its
    ``__init__``."""

    def _init_positions(self, compilation_config: Any) -> None:
        refusal = graph_refusal(compilation_config)
        if refusal is not None:
            raise ValueError(refusal)
        self._position_offsets: torch.Tensor | None = None

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
            multimodal_embeddings = [e[:, :hidden] for e in multimodal_embeddings]
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
            offsets, self._position_offsets = self._position_offsets, None
            # In place: the same buffer feeds the captured graphs; vLLM rewrites
            # it from the request's own positions at the next step.
            positions[:, : offsets.shape[1]] += offsets.to(positions.dtype)
        return super().forward(  # type: ignore[misc]
            input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs
        )
