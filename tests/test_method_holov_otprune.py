"""HoloV and OTPrune on their own: pure torch, by hand and against plain ports of the sources."""

from __future__ import annotations

import pytest
import torch

import vllm_prune.methods.holov  # noqa: F401  (registration)
import vllm_prune.methods.otprune  # noqa: F401  (registration)
from vllm_prune.methods.base import Context
from vllm_prune.methods.cdprune import dpp_greedy_map
from vllm_prune.methods.holov import allocate, region_count, region_sizes
from vllm_prune.methods.otprune import ot_kernel
from vllm_prune.methods.registry import get_method

GRID = (24, 24)
N = GRID[0] * GRID[1]


def random_case(n: int = N, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) + 0.5 * torch.randn(1, d, generator=g)
    attention = (3 * torch.randn(n, generator=g)).softmax(0)
    return x, attention


# --- HoloV -------------------------------------------------------------------------


def source_holov(x: torch.Tensor, a: torch.Tensor, regions: int, keep: int) -> set[int]:
    """The source's loop (obananas/HoloV ``llava/model/utils.py::HoloV``), one image,
    returning the kept token indices; asserts no region overflows (no zero padding)."""
    n = x.shape[0]
    size, rest = n // regions, n % regions
    starts, scores = [], []
    start = 0
    for p in range(regions):
        m = size + (1 if p < rest else 0)
        xs, at = x[start : start + m], a[start : start + m]
        f = xs / (xs.norm(dim=1, keepdim=True) + 1e-6)
        s = (f @ f.T) * (1 - torch.eye(m))
        mean = s.sum(dim=1) / (m - 1)
        var = ((s - mean[:, None]) ** 2).sum(dim=1) / (m - 1)
        scaled = at * 1e3
        var = var * scaled.abs().mean() / (var.abs().mean() + 1e-6)
        scores.append((scaled + 0.09 * var).mean())
        starts.append((start, m))
        start += m
    p = torch.stack(scores)
    w = p / (p.sum() + 1e-6)
    alloc = (w * keep).floor().long()
    remaining = keep - int(alloc.sum())
    if remaining > 0:
        for i in torch.topk(w, k=min(remaining, len(w))).indices[:remaining]:
            alloc[i] += 1
    kept: set[int] = set()
    for (start, m), q in zip(starts, alloc.tolist(), strict=True):
        assert q <= m
        if q > 0:
            kept |= {start + int(i) for i in torch.topk(a[start : start + m], q).indices}
    return kept


def test_holov_regions_are_the_sources_16_at_576_tokens_and_64_kept():
    assert region_count(576, 64) == 16
    assert region_count(576, 144) == 7  # (1024 / 576) 576 / 144 = 7.1
    assert region_count(2880, 720) == 7
    assert region_count(576, 1) == 1  # never more regions than kept tokens
    assert region_count(576, 576) == 1
    assert region_count(1, 1) == 1
    assert region_sizes(10, 3) == [4, 3, 3]
    assert sum(region_sizes(577, 16)) == 577


@pytest.mark.parametrize("keep", [64, 144, 32])
def test_holov_keeps_the_sources_tokens_where_no_region_overflows(keep):
    x, a = random_case()
    kept = get_method("holov").reduce(x, GRID, keep, Context(cls_attention=a)).indices
    assert set(kept.tolist()) == source_holov(x, a, region_count(N, keep), keep)


def test_holov_gives_more_tokens_to_the_more_attended_region():
    """576 tokens, 64 kept: 16 regions of 36; region 5 has four times the attention."""
    x, _ = random_case()
    a = torch.ones(N)
    a[5 * 36 : 6 * 36] = 4.0
    a = a / a.sum()
    a += torch.linspace(0, 1e-6, N)  # no ties within a region
    kept = get_method("holov").reduce(x, GRID, 64, Context(cls_attention=a)).indices
    per_region = torch.bincount(kept // 36, minlength=16)
    # Shares 4/19 and 1/19 of 64: 13.47 and 3.37 -> 13 and 3, leftovers to the largest.
    assert int(per_region[5]) >= 13
    assert int(per_region.sum()) == 64
    assert all(int(c) in (3, 4) for r, c in enumerate(per_region) if r != 5)


def test_holov_diversity_weighs_a_region_whose_similarities_spread():
    """8 tokens, 2 kept: 2 regions of 4, equal attention. Region 0's tokens are mutually
    orthogonal (every similarity 0, no spread); region 1 is two pairs (similarities 1
    and 0). With no diversity weight the regions tie (one token each); with the
    source's 0.09, region 1 scores 1.09 times region 0 and takes both."""
    x = torch.zeros(8, 8)
    x[0, 0] = x[1, 1] = x[2, 2] = x[3, 3] = 1.0
    x[4, 4] = x[5, 4] = x[6, 5] = x[7, 5] = 1.0
    a = 1 / 8 + torch.arange(8).remainder(4) * 1e-4  # equal regions; a region's last wins
    holov = get_method("holov")
    ctx = Context(cls_attention=a, params={"prune_diversity": 0.0})
    assert holov.reduce(x, (2, 4), 2, ctx).indices.tolist() == [3, 7]
    ctx.params = {}
    assert holov.reduce(x, (2, 4), 2, ctx).indices.tolist() == [6, 7]


def test_holov_keeps_the_most_attended_tokens_of_each_region():
    x, _ = random_case(n=8, d=16)
    a = torch.tensor([0.05, 0.2, 0.1, 0.15, 0.1, 0.05, 0.3, 0.05])
    ctx = Context(cls_attention=a, params={"prune_diversity": 0.0})
    # 2 regions of 4 (mean attention 0.125 each): one token each, 1 and 6.
    assert get_method("holov").reduce(x, (2, 4), 2, ctx).indices.tolist() == [1, 6]


def test_holov_redistributes_a_full_regions_surplus_for_exactly_keep():
    """8 tokens, 4 kept: 3 regions of 3, 3, 2. Region 0's share is 4 x 0.3 / 0.34 = 3.5
    of its 3 tokens: 3 + the leftover (the source keeps 3 and pads a zero row); the
    surplus token goes to the next largest share, region 1 (tied with 2, earlier),
    whose most attended token is 4."""
    assert region_sizes(8, region_count(8, 4)) == [3, 3, 2]
    x, _ = random_case(n=8, d=16)
    a = torch.tensor([0.3, 0.3, 0.3, 0.02, 0.03, 0.01, 0.02, 0.02])
    ctx = Context(cls_attention=a, params={"prune_diversity": 0.0})
    out = get_method("holov").reduce(x, (2, 4), 4, ctx)
    assert out.indices.tolist() == [0, 1, 2, 4]
    torch.testing.assert_close(out.features, x[out.indices])


def test_holov_allocation_sums_exactly_and_respects_sizes():
    # Region 0 full; the weightless rest share the surplus 4 by room (3 : 2 -> 2.4 : 1.6,
    # floors 2 and 1, the leftover to the larger).
    assert allocate([10.0, 0.0, 0.0], [3, 3, 2], 7) == [3, 3, 1]
    assert allocate([1.0, 1.0, 1.0], [3, 3, 2], 4) == [2, 1, 1]
    # Nothing positive or finite: shared by region size.
    assert allocate([0.0, 0.0, 0.0], [3, 3, 2], 4) == [2, 1, 1]
    assert allocate([float("nan"), 1.0, 1.0], [3, 3, 2], 8) == [3, 3, 2]
    assert allocate([-1.0, 2.0, 1.0], [3, 3, 2], 3) == [0, 2, 1]


def test_holov_keep_all_is_every_token_and_refuses_without_attention():
    x, a = random_case()
    out = get_method("holov").reduce(x, GRID, N, Context(cls_attention=a))
    assert torch.equal(out.indices, torch.arange(N))
    assert torch.equal(out.features, x)
    with pytest.raises(ValueError):
        get_method("holov").reduce(x, GRID, 64, Context())
    with pytest.raises(ValueError):
        get_method("holov").reduce(x, GRID, 64, Context(cls_attention=a[:-1]))


def test_holov_exact_count_on_odd_sizes():
    for n, keep in [(7, 1), (7, 2), (7, 6), (13, 5), (577, 64), (3, 2)]:
        x, a = random_case(n=n, d=8)
        out = get_method("holov").reduce(x, (1, n), keep, Context(cls_attention=a))
        assert out.indices.numel() == keep and bool((out.indices.diff() > 0).all())


# --- OTPrune -----------------------------------------------------------------------


def naive_kernel(x: torch.Tensor, gamma: float) -> torch.Tensor:
    xn = x.double() / x.double().norm(dim=0, keepdim=True)
    s = xn @ xn.T
    return torch.eye(x.shape[0], dtype=torch.float64) + gamma * s @ s.T


def naive_greedy(kernel: torch.Tensor, keep: int) -> list[int]:
    """Each step the token that most raises log det of the chosen block."""
    chosen: list[int] = []
    for _ in range(keep):
        gains = torch.full((kernel.shape[0],), float("-inf"), dtype=torch.float64)
        for i in range(kernel.shape[0]):
            if i not in chosen:
                idx = torch.tensor([*chosen, i])
                gains[i] = torch.logdet(kernel[idx][:, idx])
        chosen.append(int(torch.argmax(gains)))
    return chosen


@pytest.mark.parametrize(("n", "d"), [(12, 5), (12, 32)])  # the Gram and the S @ S paths
def test_otprune_kernel_is_identity_plus_gamma_s_s_transposed(n, d):
    x, _ = random_case(n=n, d=d, seed=3)
    torch.testing.assert_close(ot_kernel(x, 0.5), naive_kernel(x, 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [0.01, 1.0])
def test_otprune_matches_a_naive_greedy_log_det(gamma):
    x, _ = random_case(n=20, d=48, seed=4)
    kernel = ot_kernel(x, gamma)
    assert dpp_greedy_map(kernel, 8).tolist() == naive_greedy(kernel, 8)
    out = get_method("otprune").reduce(x, (4, 5), 8, Context(params={"prune_gamma": gamma}))
    assert out.indices.tolist() == sorted(naive_greedy(kernel, 8))
    torch.testing.assert_close(out.features, x[out.indices])


def test_otprune_takes_every_distinct_row_before_a_duplicate():
    g = torch.Generator().manual_seed(5)
    distinct = torch.randn(12, 256, generator=g)
    x = distinct.repeat(3, 1)  # 36 rows, each distinct one three times
    for keep in (6, 12):
        out = get_method("otprune").reduce(x, (6, 6), keep, Context())
        assert len({int(i) % 12 for i in out.indices}) == keep


def test_otprune_takes_one_token_from_each_cluster_first():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(8, 256, generator=g), dim=-1) * 10
    x = centres.repeat_interleave(72, dim=0) + 0.01 * torch.randn(N, 256, generator=g)
    out = get_method("otprune").reduce(x, GRID, 8, Context())
    assert sorted((out.indices // 72).tolist()) == list(range(8))


def test_otprune_exact_count_keep_all_and_same_for_bfloat16_reruns():
    x, _ = random_case(d=32)
    otprune = get_method("otprune")
    for keep in (1, 2, 100, N - 1):
        out = otprune.reduce(x, GRID, keep, Context())
        assert out.indices.numel() == keep and bool((out.indices.diff() > 0).all())
    assert otprune.reduce(x, GRID, 1, Context()).indices.tolist() == [
        int(torch.argmax(ot_kernel(x, 0.01).diagonal()))
    ]
    out = otprune.reduce(x, GRID, N, Context())
    assert torch.equal(out.indices, torch.arange(N)) and torch.equal(out.features, x)
    b = x.bfloat16()
    first = otprune.reduce(b, GRID, 144, Context())
    again = otprune.reduce(b.clone(), GRID, 144, Context())
    assert torch.equal(first.indices, again.indices) and first.features.dtype == torch.bfloat16
