"""The [CLS] row of a vision-tower layer's attention, without the full attention map.

Every tower vLLM builds (CLIP, InternViT, Llama 4's) hands its layer's queries, keys
and values to one attention core (vLLM's ``MMEncoderAttention``): a forward pre-hook
there reads them after the projections, any query/key norm and any rotary embedding,
exactly as the attention uses them. The [CLS] query against every key gives one
softmax row per head, [B, heads, S], instead of the [B, heads, S, S] map. Methods that
declare the ``vision_attention`` need (FasterVLM's ``cls_attention``, VisionZip) read
it through their ``Context``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .heads import SumOverRanks, mean_over_heads, one_rank

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ClsAttention:
    attention: torch.Tensor  # [B, S]: [CLS] attention to each token, mean over all heads
    keys: torch.Tensor  # [B, S, head_dim]: keys, mean over all heads


def split_heads(
    core: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> QKV:
    """Queries, keys and values of this rank's heads, float32 [B, S, heads, head_dim]."""

    def heads(states: torch.Tensor) -> torch.Tensor:
        if states.dim() == 2:  # [S, heads * head_dim] for a single unbatched image
            states = states.unsqueeze(0)
        return states.float().reshape(
            states.shape[0], states.shape[1], core.num_heads, core.head_size
        )

    return heads(query), heads(key), heads(value)


@contextmanager
def tap_attention(core: nn.Module, read: Callable[[QKV], None]) -> Iterator[None]:
    """While active, each forward of the attention core ``core`` (called with the query,
    key and value; ``num_heads`` of this rank, ``head_size``, ``scale``) hands ``read``
    its split heads."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        given = dict(zip(("query", "key", "value"), args[:3], strict=False))
        given.update({k: v for k, v in kwargs.items() if k in ("query", "key", "value")})
        read(split_heads(core, given["query"], given["key"], given["value"]))

    handle = core.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def capture_cls_attention(
    core: nn.Module, sum_over_ranks: SumOverRanks = one_rank
) -> Iterator[list[ClsAttention]]:
    """While active, each forward of the attention core ``core`` appends its [CLS] row
    (the first token's). With tensor parallelism the heads are split over the ranks:
    ``sum_over_ranks`` sums over them, so every rank gets the mean over all heads."""
    captured: list[ClsAttention] = []

    def keep_cls_row(qkv: QKV) -> None:
        query, key, _ = qkv
        logits = torch.einsum("bhd,bshd->bhs", query[:, 0], key) * core.scale
        attention = mean_over_heads(logits.softmax(dim=-1), 1, sum_over_ranks)
        captured.append(ClsAttention(attention, mean_over_heads(key, 2, sum_over_ranks)))

    with tap_attention(core, keep_cls_row):
        yield captured
