"""Pruning inside vLLM's CLIP-style vision tower, for ``IN_TOWER`` methods (FlowCut).

Hooks on the tower's layers: one on each attention core keeps that layer's queries,
keys and values (``signals.cls_attention.tap_attention``); one on each encoder layer
reads what the method needs from them and, where the method cuts, returns the layer's
output with only the surviving tokens ([CLS] always first), so vLLM's own loop runs the
later layers on fewer tokens. One image per forward: images of one batch keep different counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..methods.flowcut import FlowCutState
from ..signals.cls_attention import QKV, tap_attention
from ..signals.heads import SumOverRanks, mean_over_heads, one_rank


def flow_signals(
    core: nn.Module, qkv: QKV, sum_over_ranks: SumOverRanks = one_rank
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlowCut's per-patch inputs from one layer's attention core ``core`` and its split
    heads ``qkv``: [CLS] attention, semantic attention and value L1 norm, each [S - 1]
    (image 0; all heads, every rank's)."""
    query, key, value = (states[0] for states in qkv)  # [S, heads, d]
    logits = torch.einsum("hd,shd->hs", query[0], key) * core.scale
    cls_attention = mean_over_heads(logits.softmax(dim=-1), 0, sum_over_ranks)
    semantic = mean_over_heads(
        torch.einsum("hd,shd->hs", value[0], value).softmax(dim=-1), 0, sum_over_ranks
    )
    value_norm = mean_over_heads(value, 1, sum_over_ranks).abs().sum(dim=-1)
    return cls_attention[1:], semantic[1:], value_norm[1:]


@contextmanager
def flowcut_in_tower(
    layers: Sequence[nn.Module], state: FlowCutState, sum_over_ranks: SumOverRanks = one_rank
) -> Iterator[FlowCutState]:
    """While active, one image's forward through ``layers`` (vLLM CLIP encoder layers,
    their attention core at ``self_attn.attn``) is cut as ``state`` decides."""
    latest: dict[int, QKV] = {}

    def keep_qkv(index: int):
        def read(qkv: QKV) -> None:
            latest[index] = qkv

        return read

    def cut(index: int):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
            core = layers[index].self_attn.attn
            signals = flow_signals(core, latest.pop(index), sum_over_ranks)
            positions = state.step(index, *signals)
            if positions is None:
                return None
            rows = torch.cat([positions.new_zeros(1), positions + 1]).to(output.device)
            return output.index_select(output.dim() - 2, rows)

        return hook

    with ExitStack() as stack:
        for index, layer in enumerate(layers):
            stack.enter_context(tap_attention(layer.self_attn.attn, keep_qkv(index)))
            stack.callback(layer.register_forward_hook(cut(index)).remove)
        yield state
