"""Pruning inside vLLM's CLIP-style vision tower, for ``IN_TOWER`` methods (FlowCut).

Hooks on the tower's layers: one on each fused QKV projection keeps that layer's
queries, keys and values; one on each encoder layer reads what the method needs
from them and, where the method cuts, returns the layer's output with only the
surviving tokens ([CLS] always first), so vLLM's own loop runs the later layers on
fewer tokens. One image per forward: images of one batch keep different counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..methods.flowcut import FlowCutState
from ..signals.cls_attention import split_heads
from ..signals.heads import SumOverRanks, mean_over_heads, one_rank


def flow_signals(
    attention_module: nn.Module, qkv_output: object, sum_over_ranks: SumOverRanks = one_rank
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlowCut's per-patch inputs from one layer: [CLS] attention, semantic attention
    and value L1 norm, each [S - 1] (image 0; all heads, every rank's)."""
    query, key, value = split_heads(attention_module, qkv_output)  # [1, S, heads, d]
    query, key, value = query[0], key[0], value[0]
    logits = torch.einsum("hd,shd->hs", query[0], key) * attention_module.scale
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
    """While active, one image's forward through ``layers`` (vLLM CLIP encoder layers
    with ``self_attn.qkv_proj``) is cut as ``state`` decides."""
    latest: dict[int, object] = {}

    def keep_qkv(index: int):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            latest[index] = output

        return hook

    def cut(index: int):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
            signals = flow_signals(layers[index].self_attn, latest.pop(index), sum_over_ranks)
            positions = state.step(index, *signals)
            if positions is None:
                return None
            rows = torch.cat([positions.new_zeros(1), positions + 1]).to(output.device)
            return output.index_select(output.dim() - 2, rows)

        return hook

    with ExitStack() as stack:
        for index, layer in enumerate(layers):
            for module, hook in ((layer.self_attn.qkv_proj, keep_qkv), (layer, cut)):
                stack.callback(module.register_forward_hook(hook(index)).remove)
        yield state
