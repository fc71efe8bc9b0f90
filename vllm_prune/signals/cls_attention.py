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
        qkv = output[0] if isinstance(output, tuple) else output
        if qkv.dim() == 2:  # [S, 3 * D] for a single unbatched image
            qkv = qkv.unsqueeze(0)
        batch, tokens, _ = qkv.shape
        heads = attention_module.num_heads_per_partition
        head_dim = attention_module.head_dim
        query, key, _ = qkv.float().chunk(3, dim=-1)
        query = query.view(batch, tokens, heads, head_dim)
        key = key.view(batch, tokens, heads, head_dim)
        logits = torch.einsum("bhd,bshd->bhs", query[:, 0], key) * attention_module.scale
        attention = mean_over_heads(logits.softmax(dim=-1), 1, sum_over_ranks)
        captured.append(ClsAttention(attention, mean_over_heads(key, 2, sum_over_ranks)))

    handle = attention_module.qkv_proj.register_forward_hook(keep_cls_row)
    try:
        yield captured
    finally:
        handle.remove()


def per_image(captured: list[ClsAttention], num_tokens: list[int]) -> list[ClsAttention]:
    """One entry per image, restricted to the last ``n`` tokens (the ones the LLM gets).

    With LLaVA's ``default`` feature strategy the [CLS] token itself is dropped,
    so the visual tokens are the last S - 1 of the layer's S.
    """
    attention = torch.cat([c.attention for c in captured])
    keys = torch.cat([c.keys for c in captured])
    if attention.shape[0] != len(num_tokens):
        raise ValueError(
            f"captured [CLS] attention for {attention.shape[0]} images, expected {len(num_tokens)}"
        )
    return [ClsAttention(attention[i, -n:], keys[i, -n:]) for i, n in enumerate(num_tokens)]
