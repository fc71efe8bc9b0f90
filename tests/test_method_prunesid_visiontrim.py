"""PruneSID and VisionTrim on their own: pure torch, small hand-made cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vllm_prune.methods import Context, get_method
from vllm_prune.methods import prunesid as prunesid_module
from vllm_prune.methods import visiontrim as visiontrim_module
from vllm_prune.methods.prunesid import group_budgets, group_nms, principal_groups
from vllm_prune.methods.visiontrim import complement, text_count


def distinct_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_both_register_on_import_with_their_needs():
    assert get_method("prunesid") is not None and prunesid_module.PruneSID.name == "prunesid"
    assert get_method("prunesid").needs == frozenset({"vision_attention"})
    assert visiontrim_module.VisionTrim.name == "visiontrim"
    assert get_method("visiontrim").needs == frozenset(
        {"vision_attention", "tower_attention", "text"}
    )
    assert [p.name for p in get_method("visiontrim").params] == ["prune_text_share"]


# ---- PruneSID ---------------------------------------------------------------------------


def test_prunesid_groups_are_torch_pca_lowrank_from_the_fixed_start():
    """The same algorithm as the source's ``torch.pca_lowrank`` given the same start."""
    for n, d in [(48, 32), (40, 64)]:  # both of _svd_lowrank's branches
        x = distinct_rows(n, d)
        torch.manual_seed(prunesid_module.SEED)
        v = torch.pca_lowrank(torch.sigmoid(x).T, q=4)[2]
        assert torch.equal(principal_groups(x, 4), torch.argmax(v.abs(), dim=1))


def test_prunesid_nms_keeps_the_best_and_suppresses_its_close_group_members():
    """Group 0 = {0, 1, 2}, group 1 = {3, 4}. 0 is best in group 0 and close to 1 (not
    to 2): 1 goes. 3 and 4 are close too but in another group than 0; 4 is better."""
    sim = torch.eye(5)
    sim[0, 1] = sim[1, 0] = 0.9
    sim[3, 4] = sim[4, 3] = 0.9
    sim[0, 3] = sim[3, 0] = 0.95  # across groups: never suppresses
    group = torch.tensor([0, 0, 0, 1, 1])
    scores = torch.tensor([0.5, 0.4, 0.1, 0.2, 0.3])
    assert group_nms(sim, group, scores, 0.5).tolist() == [True, False, True, False, True]
    # A threshold above every similarity: nothing is suppressed.
    assert group_nms(sim, group, scores, 0.99).all()


def test_prunesid_nms_is_sequential_inside_a_group():
    """Chain 0 - 1 - 2 (0 close to 1, 1 close to 2, 0 not close to 2): 0 suppresses 1,
    so 2 survives (a parallel 'suppressed by any better neighbour' would drop it)."""
    sim = torch.eye(3)
    sim[0, 1] = sim[1, 0] = sim[1, 2] = sim[2, 1] = 0.9
    kept = group_nms(sim, torch.zeros(3, dtype=torch.long), torch.tensor([0.3, 0.2, 0.1]), 0.5)
    assert kept.tolist() == [True, False, True]


def test_prunesid_budgets_follow_the_sources_bounds_and_shares():
    # Caps 5 * ceil(8 / 64) = 5, held to sizes and survivors: (5, 2, 1); lower bounds 1
    # each; rest 5 shared by survivors 6:2:1 -> cumulative round(5 * (6, 8, 9) / 9) =
    # (3, 4, 5): +3, +1, +1, capped -> (4, 2, 1) = 7, one short: the most-survivor group.
    budget = group_budgets(torch.tensor([10, 4, 1]), torch.tensor([6, 2, 1]), 8, 5)
    assert budget.tolist() == [5, 2, 1]
    # Caps too small for keep: raised by one per group (up to the size) until they hold it.
    budget = group_budgets(torch.tensor([6, 6, 0]), torch.tensor([1, 1, 0]), 10, 5)
    assert budget.tolist() == [5, 5, 0]
    assert int(group_budgets(torch.tensor([3, 4, 5]), torch.tensor([1, 2, 3]), 12, 5).sum()) == 12


def test_prunesid_never_keeps_two_identical_rows_while_distinct_ones_are_left():
    """Orthonormal rows (cosine 0) with two duplicated pairs, the most attended: every
    distinct row survives the NMS, each pair's second row is suppressed. Up to keep 5
    (one group, capped at 5 * ceil(K / 64) = 5 survivors) no pair is kept whole; above
    the caps the source fills from suppressed tokens, by attention."""
    x = torch.linalg.qr(distinct_rows(32, 32)).Q
    x[1] = x[0]
    x[9] = x[8]
    attention = torch.full((32,), 1.0 / 32)
    attention[[0, 1, 8, 9]] = 0.5
    for keep in (1, 2, 3, 4, 5):
        kept = set(
            get_method("prunesid")
            .reduce(x, (4, 8), keep, Context(cls_attention=attention))
            .indices.tolist()
        )
        assert not {0, 1} <= kept and not {8, 9} <= kept, keep
        if keep >= 2:
            assert len(kept & {0, 1}) == 1 and len(kept & {8, 9}) == 1, keep


@pytest.mark.parametrize("keep", [1, 2, 3, 5, 17, 63, 64, 100, 143, 144])
def test_prunesid_exact_count_and_deterministic(keep):
    x = distinct_rows(144, 32, seed=3)
    attention = torch.rand(144, generator=torch.Generator().manual_seed(4))
    ctx = Context(cls_attention=attention)
    a = get_method("prunesid").reduce(x, (12, 12), keep, ctx)
    b = get_method("prunesid").reduce(x.clone(), (12, 12), keep, ctx)
    assert a.indices.shape == (keep,) and a.indices.dtype == torch.int64
    assert bool((a.indices.diff() > 0).all())
    assert torch.equal(a.indices, b.indices) and torch.equal(a.features, b.features)
    assert torch.equal(a.features, x[a.indices])
    if keep == 144:
        assert torch.equal(a.indices, torch.arange(144))


def test_prunesid_keep_one_is_the_most_attended_token():
    x = distinct_rows(16, 8)
    attention = torch.rand(16, generator=torch.Generator().manual_seed(5))
    out = get_method("prunesid").reduce(x, (4, 4), 1, Context(cls_attention=attention))
    assert out.indices.tolist() == [int(torch.argmax(attention))]


def test_prunesid_refuses_without_attention():
    with pytest.raises(ValueError):
        get_method("prunesid").reduce(distinct_rows(16, 8), (4, 4), 4, Context())


# ---- VisionTrim -------------------------------------------------------------------------


def test_visiontrim_text_count_holds_one_dominant_token():
    assert [text_count(k, 0.25) for k in (1, 3, 4, 64, 576)] == [0, 0, 1, 16, 144]
    assert text_count(8, 1.0) == 7 and text_count(8, 0.0) == 0


def visiontrim_case(n: int = 16, d: int = 8, t: int = 3):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(n, d, generator=g)
    cls = torch.rand(n, generator=g)
    received = torch.rand(n, generator=g)
    text = torch.randn(t, d, generator=g)
    return x, Context(cls_attention=cls, received_attention=received, text_embeddings=text)


def test_visiontrim_keeps_the_top_dominant_tokens_as_they_are():
    x, ctx = visiontrim_case()
    out = get_method("visiontrim").reduce(x, (4, 4), 8, ctx)  # 6 dominant + 2 merged
    score = 0.5 * F.normalize(ctx.cls_attention, dim=0) + 0.5 * F.normalize(
        ctx.received_attention, dim=0
    )
    dominant = torch.topk(score, 6).indices.tolist()
    assert set(dominant) <= set(out.indices.tolist())
    for i in dominant:
        torch.testing.assert_close(out.features[out.indices.tolist().index(i)], x[i])
    # The two others are centres of the rest: merged rows, not the tokens themselves.
    centres = [i for i in out.indices.tolist() if i not in dominant]
    assert len(centres) == 2
    for i in centres:
        assert not torch.equal(out.features[out.indices.tolist().index(i)], x[i])


def test_visiontrim_centres_are_the_most_text_relevant_and_merge_their_members():
    """A direct computation of one merge pass: each centre is its own row plus the mean
    of the rest tokens whose text-routed similarity to it is highest."""
    g = torch.Generator().manual_seed(7)
    rest = torch.randn(10, 6, generator=g)
    text = torch.randn(4, 6, generator=g)
    centres, rows = complement(rest, torch.arange(10), text, 3, passes=1)
    words = F.normalize(text, dim=-1)
    relevance = (100 * words @ F.normalize(rest, dim=-1).T).mean(0)
    expected = torch.sort(torch.topk(relevance, 3).indices).values
    assert torch.equal(centres, expected)
    others = [i for i in range(10) if i not in expected.tolist()]
    routed = (100 * F.normalize(rest[others], dim=-1) @ words.T) @ (
        100 * words @ F.normalize(rest[expected], dim=-1).T
    )
    owner = routed.argmax(dim=1)
    for c in range(3):
        members = [others[j] for j in range(len(others)) if int(owner[j]) == c]
        merged = rest[expected[c]] + (rest[members].mean(0) if members else 0)
        torch.testing.assert_close(rows[c], merged)
    # The passes accumulate: a second pass adds to the first one's centres.
    _, twice = complement(rest, torch.arange(10), text, 3, passes=2)
    again = (100 * F.normalize(rest[others], dim=-1) @ words.T) @ (
        100 * words @ F.normalize(rows, dim=-1).T
    )
    owner = again.argmax(dim=1)
    for c in range(3):
        members = [others[j] for j in range(len(others)) if int(owner[j]) == c]
        torch.testing.assert_close(twice[c], rows[c] + (rest[members].mean(0) if members else 0))


def test_visiontrim_output_stands_for_the_centres_own_tokens():
    x, ctx = visiontrim_case()
    out = get_method("visiontrim").reduce(x, (4, 4), 8, ctx)
    score = 0.5 * F.normalize(ctx.cls_attention, dim=0) + 0.5 * F.normalize(
        ctx.received_attention, dim=0
    )
    dominant = torch.sort(torch.topk(score, 6).indices).values
    left = torch.ones(16, dtype=torch.bool)
    left[dominant] = False
    rest = torch.nonzero(left).squeeze(1)
    centres, rows = complement(x, rest, ctx.text_embeddings, 2)
    expected = torch.sort(torch.cat([dominant, rest[centres]])).values
    assert torch.equal(out.indices, expected)
    for c, i in enumerate(rest[centres].tolist()):
        torch.testing.assert_close(out.features[out.indices.tolist().index(i)], rows[c])


@pytest.mark.parametrize("keep", [1, 2, 3, 4, 5, 8, 15, 16])
def test_visiontrim_exact_count(keep):
    x, ctx = visiontrim_case()
    out = get_method("visiontrim").reduce(x, (4, 4), keep, ctx)
    assert out.features.shape == (keep, 8) and out.indices.shape == (keep,)
    assert bool((out.indices.diff() > 0).all())
    again = get_method("visiontrim").reduce(x.clone(), (4, 4), keep, ctx)
    assert torch.equal(out.indices, again.indices) and torch.equal(out.features, again.features)


def test_visiontrim_keeping_everything_returns_every_row():
    x, ctx = visiontrim_case()
    out = get_method("visiontrim").reduce(x, (4, 4), 16, ctx)
    assert torch.equal(out.indices, torch.arange(16))
    torch.testing.assert_close(out.features, x)


def test_visiontrim_share_and_empty_question():
    x, ctx = visiontrim_case()
    score = 0.5 * F.normalize(ctx.cls_attention, dim=0) + 0.5 * F.normalize(
        ctx.received_attention, dim=0
    )
    top8 = torch.sort(torch.topk(score, 8).indices).values
    ctx.params = {"prune_text_share": 0.0}
    out = get_method("visiontrim").reduce(x, (4, 4), 8, ctx)
    assert torch.equal(out.indices, top8) and torch.equal(out.features, x[top8])
    # No question tokens: every kept token is a dominant one.
    empty = Context(
        cls_attention=ctx.cls_attention,
        received_attention=ctx.received_attention,
        text_embeddings=torch.zeros(0, 8),
    )
    out = get_method("visiontrim").reduce(x, (4, 4), 8, empty)
    assert torch.equal(out.indices, top8)


def test_visiontrim_refuses_without_text_or_attention():
    x, ctx = visiontrim_case()
    method = get_method("visiontrim")
    for missing in ("text_embeddings", "cls_attention", "received_attention"):
        partial = Context(
            cls_attention=ctx.cls_attention,
            received_attention=ctx.received_attention,
            text_embeddings=ctx.text_embeddings,
        )
        setattr(partial, missing, None)
        with pytest.raises(ValueError, match=missing):
            method.reduce(x, (4, 4), 8, partial)
    ctx.text_embeddings = torch.zeros(3, 5)  # not the features' width
    with pytest.raises(ValueError, match="text_embeddings"):
        method.reduce(x, (4, 4), 8, ctx)
