"""The [CLS] row of a vision-tower layer's attention, without the full attention map.

A forward hook on the layer's fused QKV projection keeps its output; the [CLS]
query against every key gives one softmax row per head, [B, heads, S], instead
of the [B, heads, S, S] map. Methods that declare the ``vision_attention`` need
(FasterVLM's ``cls_attention``, VisionZip) read it through their ``Context``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .heads import SumOverRanks, mean_over_heads, one_rank


@dataclass(frozen=True)
class ClsAttention:
    attention: torch.Tensor  # [B, S]: [CLS] attention to each token, mean over all heads
    keys: torch.Tensor  # [B, S, head_dim]: keys, mean over all heads


def split_heads(
    attention_module: nn.Module, qkv_output: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of this rank's heads, float32 [B, S, heads, head_dim]."""
    qkv = qkv_output[0] if isinstance(qkv_output, tuple) else qkv_output
    if qkv.dim() == 2:  # [S, 3 * D] for a single unbatched image
        qkv = qkv.unsqueeze(0)
    batch, tokens, _ = qkv.shape
    shape = (batch, tokens, attention_module.num_heads_per_partition, attention_module.head_dim)
    query, key, value = qkv.float().chunk(3, dim=-1)
    return query.view(shape), key.view(shape), value.view(shape)


@contextmanager
def capture_cls_attention(
    attention_module: nn.Module, sum_over_ranks: SumOverRanks = one_rank
) -> Iterator[list[ClsAttention]]:
    """While active, each forward of ``attention_module`` appends its [CLS] row.

    ``attention_module`` is a vLLM CLIP-style attention: ``qkv_proj`` returning
    ``(qkv, bias)``, ``num_heads_per_partition``, ``head_dim`` and ``scale``. With
    tensor parallelism its heads are split over the ranks: ``sum_over_ranks`` sums
    over them, so every rank gets the mean over all heads.
    """
    captured: list[ClsAttention] = []

    def keep_cls_row(module: nn.Module, inputs: object, output: object) -> None:
        query, key, _ = split_heads(attention_module, output)
        logits = torch.einsum("bhd,bshd->bhs", query[:, 0], key) * attention_module.scale
        attention = mean_over_heads(logits.softmax(dim=-1), 1, sum_over_ranks)
        captured.append(ClsAttention(attention, mean_over_heads(key, 2, sum_over_ranks)))

    handle = attention_module.qkv_proj.register_forward_hook(keep_cls_row)
    try:
        yield captured
    finally:
        handle.remove()
