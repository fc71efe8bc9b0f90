"""Pruning inside vLLM's CLIP-style vision tower, for ``IN_TOWER`` methods.

Hooks on the tower's layers: one on each attention core keeps that layer's queries,
keys and values (``signals.cls_attention.tap_attention``); one on each encoder layer
measures a ``TowerLayer`` from them and its output, hands it to the method's
``TowerCut`` and, where the cut drops patches, returns the layer's
output with only the surviving tokens ([CLS] always first), so vLLM's own loop runs the
later layers on fewer tokens. One image per forward: images of one batch keep different counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from ..methods.base import TowerCut, TowerLayer
from ..signals.cls_attention import QKV, tap_attention
from ..signals.heads import SumOverRanks, mean_over_heads, one_rank


def measure_layer(
    core: nn.Module, qkv: QKV, output: torch.Tensor, sum_over_ranks: SumOverRanks = one_rank
) -> TowerLayer:
    """What one layer measured, from its attention core ``core``, its split heads ``qkv``
    and its ``output`` (image 0; all heads, every rank's)."""
    query, key, value = (states[0] for states in qkv)  # [S, heads, d]
    logits = torch.einsum("hd,shd->hs", query[0], key) * core.scale
    cls_attention = mean_over_heads(logits.softmax(dim=-1), 0, sum_over_ranks)
    semantic = mean_over_heads(
        torch.einsum("hd,shd->hs", value[0], value).softmax(dim=-1), 0, sum_over_ranks
    )
    value_norm = mean_over_heads(value, 1, sum_over_ranks).abs().sum(dim=-1)
    hidden = output.reshape(-1, output.shape[-1])
    return TowerLayer(
        cls_attention=cls_attention[1:],
        value_attention=semantic[1:],
        value_norm=value_norm[1:],
        hidden=hidden[1:],
    )


@contextmanager
def cut_in_tower(
    layers: Sequence[nn.Module], cut: TowerCut, sum_over_ranks: SumOverRanks = one_rank
) -> Iterator[TowerCut]:
    """While active, one image's forward through ``layers`` (vLLM CLIP encoder layers,
    their attention core at ``self_attn.attn``) is cut as ``cut`` decides."""
    latest: dict[int, QKV] = {}

    def keep_qkv(index: int):
        def read(qkv: QKV) -> None:
            latest[index] = qkv

        return read

    def hook_for(index: int):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
            core = layers[index].self_attn.attn
            measured = measure_layer(core, latest.pop(index), output, sum_over_ranks)
            positions = cut.step(index, measured)
            if positions is None:
                return None
            rows = torch.cat([positions.new_zeros(1), positions + 1]).to(output.device)
            return output.index_select(output.dim() - 2, rows)

        return hook

    with ExitStack() as stack:
        for index, layer in enumerate(layers):
            stack.enter_context(tap_attention(layer.self_attn.attn, keep_qkv(index)))
            stack.callback(layer.register_forward_hook(hook_for(index)).remove)
        yield cut
