"""``prunesid``: principal-component groups, similarity NMS inside each (PruneSID).

As the source (PruneSID, Fang et al., ICLR 2026, "Prune Redundancy, Preserve Essence";
ZhengyaoFang/PruneSID, ``prunesid_llava/clip_encoder.py``), for ``keep`` = K:

1. Principal-semantic grouping (PSCA): ``G = max(1, K // 4)`` groups. The tokens'
   sigmoids, as a [D, N] matrix with each token centred over its channels, go through a
   rank-``G`` PCA (``torch.pca_lowrank``: a randomized range finder, two subspace
   iterations, then an SVD); each token joins the component on which its loading
   ``|V|`` is largest.
2. Intra-group NMS: inside each group, the token with the highest [CLS] attention
   (selected tower layer, averaged over heads) is kept and every group member whose
   cosine similarity to it exceeds ``tau = (K / 32) * mean`` (the mean over the strict
   upper triangle of the tokens' cosine similarities) is suppressed; repeated on the
   members left. Kept tokens outrank suppressed ones, which keep their attention.
3. Budget: each group gets at least ``min(1, n_g)`` and at most
   ``min(5 * ceil(K / 64), n_g, m_g)`` tokens (``n_g`` members, ``m_g`` NMS survivors;
   the cap is raised by one for every group, up to ``n_g``, until the caps hold K); the
   rest is shared in proportion to ``m_g`` by rounding the cumulative shares, capped,
   and any shortfall is filled from the groups with the most survivors first. Each
   group keeps its best tokens by the NMS order.

Adapted:

- The source groups and compares the vision tower's hidden states of layer -2 (before
  the projector); here both run on the rows the LLM receives (the projector's
  outputs), as ``vispruner`` does.
- The source reserves one of the K tokens for [CLS]; the LLM's features have no [CLS]
  row, so all K go to the groups.
- Deterministic: the source's range finder starts from ``torch.randn``, so its groups
  change from run to run; here the start is a Gaussian from a fixed-seed CPU generator
  (same tokens on every rank and every run), otherwise the same algorithm (two
  iterations, no oversampling). The sign of each component does not matter (``|V|``).
  ``G`` is held to ``min(N, D)``.
- The source scores kept tokens ``1000 - rank``, which outranks attention only for the
  first thousand picks of a run; here a kept token always outranks a suppressed one.
  A group's picks come in descending attention, so kept tokens are ordered by
  attention (ties: lower index first), then suppressed ones by attention.

Cost: the NMS is sequential inside a group. All groups run together, one step per
pick (each step reads one similarity row per group still running); tokens with no
group member above ``tau`` either way can neither suppress nor be suppressed and are
kept without a step, so the loop runs as many steps as the largest group has
survivors among the rest, not N. The [N, N] similarities (and the [N, D] x [D, N]
product behind them) dominate the cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import (
    VISION_ATTENTION,
    Context,
    PruneMethod,
    Reduced,
    check_inputs,
    require,
    select_rows,
)
from .registry import register

POWER_ITERATIONS = 2  # torch.pca_lowrank's default niter, as the source calls it
SEED = 0  # the range finder's fixed start
CAP_PER_64 = 5  # the source's per-group cap: 5 * ceil(K / 64)
THRESHOLD_PER = 32  # tau = (K / 32) * mean similarity


def principal_groups(features: torch.Tensor, groups: int) -> torch.Tensor:
    """Each token's group: the principal component of the centred sigmoids on which its
    loading is largest in magnitude, [N] int64 in [0, groups).

    ``torch.pca_lowrank(sigmoid(features).T, q=groups)`` with a fixed-seed start.
    """
    n, d = features.shape
    a = torch.sigmoid(features.float())  # [N, D], the source's A^T
    a = a - a.mean(dim=1, keepdim=True)  # pca_lowrank centres A [D, N] over its rows
    start = torch.Generator().manual_seed(SEED)
    if d < n:  # _svd_lowrank transposes a wide matrix: basis of the token side
        basis = approximate_basis(a, groups, start)  # [N, q]
        u, _, _ = torch.linalg.svd(basis.T @ a, full_matrices=False)  # [q, q]
        loadings = basis @ u  # [N, q]
    else:
        basis = approximate_basis(a.T, groups, start)  # [D, q]
        _, _, vh = torch.linalg.svd(basis.T @ a.T, full_matrices=False)  # [q, N]
        loadings = vh.T  # [N, q]
    return torch.argmax(loadings.abs(), dim=1)


def approximate_basis(a: torch.Tensor, q: int, generator: torch.Generator) -> torch.Tensor:
    """Halko et al.'s Algorithm 4.4 as ``torch._lowrank.get_approximate_basis``, from a
    seeded start: ``q`` orthonormal columns spanning ``a``'s range, [m, q]."""
    start = torch.randn(a.shape[1], q, generator=generator).to(a.device)
    basis = torch.linalg.qr(a @ start).Q
    for _ in range(POWER_ITERATIONS):
        basis = torch.linalg.qr(a.T @ basis).Q
        basis = torch.linalg.qr(a @ basis).Q
    return basis


def group_nms(
    similarity: torch.Tensor, group: torch.Tensor, scores: torch.Tensor, threshold: float
) -> torch.Tensor:
    """The source's NMS in every group at once: which tokens survive, [N] bool.

    In each group, repeatedly: the best-scoring token left (ties: lower index) is kept,
    and each member left whose similarity to it (its row) exceeds ``threshold`` goes.
    """
    n = group.numel()
    same = group[:, None] == group[None, :]
    close = (similarity > threshold) & same
    close.fill_diagonal_(False)
    # Tokens that can neither suppress nor be suppressed are kept without a step.
    linked = torch.nonzero(close.any(dim=0) | close.any(dim=1)).squeeze(1)
    kept = torch.ones(n, dtype=torch.bool, device=group.device)
    if linked.numel() == 0:
        return kept
    # The linked tokens ordered by group, then score descending, then index: each
    # group's next pick is its first alive position.
    order = torch.argsort(scores[linked], descending=True, stable=True)
    order = order[torch.argsort(group[linked][order], stable=True)]
    members = linked[order]
    member_group = group[members]
    local_close = close[members][:, members]  # [c, c], rows: the suppressing pick
    count = members.numel()
    positions = torch.arange(count, device=group.device)
    groups = int(group.max()) + 1
    alive = torch.ones(count, dtype=torch.bool, device=group.device)
    survived = torch.zeros(count, dtype=torch.bool, device=group.device)
    while bool(alive.any()):
        first = torch.full((groups,), count, dtype=torch.long, device=group.device)
        first.scatter_reduce_(0, member_group, torch.where(alive, positions, count), "amin")
        picks = first[first < count]
        survived[picks] = True
        alive &= ~local_close[picks].any(dim=0)
        alive[picks] = False
    kept[members] = survived
    return kept


def group_budgets(
    sizes: torch.Tensor, survivors: torch.Tensor, keep: int, cap: int
) -> torch.Tensor:
    """Tokens each group keeps, summing to ``keep`` (the source's bounds and shares,
    without its [CLS] slot). ``sizes`` / ``survivors``: [G] int64 on the CPU."""
    low = sizes.clamp(max=1)
    high = torch.minimum(torch.minimum(sizes, survivors), torch.tensor(cap))
    if int(high.sum()) < keep:  # raise every cap by one, up to the group's size, until enough
        raises = torch.arange(int(sizes.max()) + 1)
        totals = torch.minimum(high[None, :] + raises[:, None], sizes[None, :]).sum(dim=1)
        high = torch.minimum(high + raises[int(torch.nonzero(totals >= keep)[0, 0])], sizes)
    rest = keep - int(low.sum())
    shares = torch.cumsum(survivors / survivors.sum(), dim=0)  # float32, as the source
    cumulative = torch.round(shares * rest).long()
    extra = torch.diff(cumulative, prepend=torch.zeros(1, dtype=torch.long))
    budget = torch.minimum(low + extra, high)
    # Shortfall: groups with the most survivors first, each up to its cap.
    short = keep - int(budget.sum())
    if short > 0:
        by_survivors = torch.argsort(survivors, descending=True, stable=True)
        room = (high - budget)[by_survivors]
        before = torch.cumsum(room, dim=0) - room
        budget[by_survivors] += torch.clamp(short - before, min=0).minimum(room)
    assert int(budget.sum()) == keep
    return budget


@register
class PruneSID(PruneMethod):
    name = "prunesid"
    summary = (
        "Principal-component groups of tokens, similarity NMS by [CLS] attention in each, "
        "budget by survivors (PruneSID)."
    )
    needs = frozenset({VISION_ATTENTION})

    def reduce(
        self, features: torch.Tensor, grid: tuple[int, int], keep: int, ctx: Context
    ) -> Reduced:
        check_inputs(features, grid, keep)
        n, d = features.shape
        device = features.device
        scores = require(ctx, "cls_attention", self, shape=(n,)).to(device, torch.float32)
        groups = min(max(1, keep // 4), n, d)
        group = principal_groups(features, groups)

        unit = F.normalize(features.float(), dim=-1)
        similarity = unit @ unit.T
        pairs = n * (n - 1)
        mean = float((similarity.sum() - similarity.diagonal().sum()) / pairs) if pairs else 0.0
        kept = group_nms(similarity, group, scores, keep / THRESHOLD_PER * mean)

        sizes = torch.bincount(group, minlength=groups).cpu()
        survivors = torch.bincount(group[kept], minlength=groups).cpu()
        budget = group_budgets(sizes, survivors, keep, CAP_PER_64 * math.ceil(keep / 64))

        # Each group's tokens in the NMS order: kept, then suppressed, each by attention.
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[torch.argsort((~kept[order]).to(torch.uint8), stable=True)]
        order = order[torch.argsort(group[order], stable=True)].cpu()
        starts = torch.cumsum(sizes, dim=0) - sizes
        member_group = group.cpu()[order]
        place = torch.arange(n) - starts[member_group]
        return select_rows(features, order[place < budget[member_group]])
