"""The attention each token receives in a vision-tower layer, over heads and queries.

HiPrune's score: the layer's attention map averaged over heads and over every query
row, one value per key. A forward hook on the layer's fused QKV projection computes
it head by head from the queries and keys, so only one head's [S, S] map exists at
a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .cls_attention import split_heads
from .heads import SumOverRanks, mean_over_heads, one_rank


@contextmanager
def capture_received_attention(
    attention_module: nn.Module, sum_over_ranks: SumOverRanks = one_rank
) -> Iterator[list[torch.Tensor]]:
    """While active, each forward of ``attention_module`` appends its [B, S] scores.

    ``attention_module`` as for ``capture_cls_attention``; with tensor parallelism
    ``sum_over_ranks`` adds the other ranks' heads.
    """
    captured: list[torch.Tensor] = []

    def keep_received(module: nn.Module, inputs: object, output: object) -> None:
        query, key, _ = split_heads(attention_module, output)  # [B, S, heads, head_dim]
        per_head = torch.stack(
            [
                (
                    torch.einsum("bqd,bkd->bqk", query[:, :, h], key[:, :, h])
                    * attention_module.scale
                )
                .softmax(dim=-1)
                .mean(dim=1)
                for h in range(query.shape[2])
            ],
            dim=1,
        )  # [B, heads, S]
        captured.append(mean_over_heads(per_head, 1, sum_over_ranks))

    handle = attention_module.qkv_proj.register_forward_hook(keep_received)
    try:
        yield captured
    finally:
        handle.remove()
