"""The attention each token receives in a vision-tower layer, over heads and queries.

HiPrune's score: the layer's attention map averaged over heads and over every query
row, one value per key. Read at the layer's attention core (``cls_attention.tap_attention``),
head by head from the queries and keys, so only one head's [S, S] map exists at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .cls_attention import QKV, tap_attention
from .heads import SumOverRanks, mean_over_heads, one_rank


@contextmanager
def capture_received_attention(
    core: nn.Module, sum_over_ranks: SumOverRanks = one_rank
) -> Iterator[list[torch.Tensor]]:
    """While active, each forward of the attention core ``core`` appends its [B, S] scores.

    ``core`` as for ``capture_cls_attention``; with tensor parallelism ``sum_over_ranks``
    adds the other ranks' heads.
    """
    captured: list[torch.Tensor] = []

    def keep_received(qkv: QKV) -> None:
        query, key, _ = qkv  # [B, S, heads, head_dim]
        per_head = torch.stack(
            [
                (torch.einsum("bqd,bkd->bqk", query[:, :, h], key[:, :, h]) * core.scale)
                .softmax(dim=-1)
                .mean(dim=1)
                for h in range(query.shape[2])
            ],
            dim=1,
        )  # [B, heads, S]
        captured.append(mean_over_heads(per_head, 1, sum_over_ranks))

    with tap_attention(core, keep_received):
        yield captured
