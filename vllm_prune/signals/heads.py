"""Means over attention heads that hold when the heads are split over tensor-parallel ranks.

With ``--tensor-parallel-size N`` each rank computes attention for its own heads
only, so a rank's mean over "all heads" would be a mean over 1/N of them, and
ranks would keep different tokens (and then all-reduce different sequences). Every
head mean a method reads goes through ``mean_over_heads``, with the integration
layer's sum over the tensor-parallel group (``integration.parallel``); on one rank
the sum is the identity and this is a plain mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Sums a tensor over the ranks that split the heads; the same tensor on every rank after.
SumOverRanks = Callable[[torch.Tensor], torch.Tensor]


def one_rank(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def mean_over_heads(
    per_head: torch.Tensor, dim: int, sum_over_ranks: SumOverRanks = one_rank
) -> torch.Tensor:
    """Mean over the heads on ``dim`` of ``per_head``, counting every rank's heads.

    The sum and the head count travel in one collective, as float32.
    """
    local = per_head.float().sum(dim=dim)
    count = torch.full((1,), float(per_head.shape[dim]), device=local.device)
    total = sum_over_ranks(torch.cat([local.reshape(-1), count]))
    return (total[:-1] / total[-1]).reshape(local.shape)
