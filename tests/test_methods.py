"""The selection methods on their own: pure torch, no engine."""

from __future__ import annotations

import pytest
import torch

from vllm_prune.methods import Context, get_method, method_names
from vllm_prune.methods.base import IN_TOWER
from vllm_prune.methods.pooling import pooled_grid

GRID = (24, 24)
N = GRID[0] * GRID[1]
# Methods that select from the features they are given (an in-tower method is given only
# the rows the tower kept: its own tests below).
PRUNING = [
    name for name in method_names() if name != "none" and IN_TOWER not in get_method(name).needs
]
PARAMS = {
    "prune_seed": 0,
    "prune_pivots": 8,
    "prune_layer": 2,
    "prune_window": 4,
    "prune_alpha": 0.5,
    "prune_theta": 0.5,
    "prune_important": 0.5,
    "prune_object_share": 0.1,
    "prune_diversity": 0.09,
    "prune_gamma": 0.01,
    "prune_text_share": 0.25,
}


def features(dtype: torch.dtype = torch.float32, d: int = 16) -> torch.Tensor:
    return torch.randn(N, d, generator=torch.Generator().manual_seed(1)).to(dtype)


def context(dtype: torch.dtype = torch.float32) -> Context:
    """Parameters and a synthetic vision-tower attention, for every method."""
    g = torch.Generator().manual_seed(2)
    return Context(
        params=PARAMS,
        cls_attention=torch.randn(N, generator=g).softmax(0).to(dtype),
        vision_keys=torch.randn(N, 8, generator=g).to(dtype),
        text_attention=torch.randn(N, generator=g).softmax(0).to(dtype),
        visual_attention=torch.randn(N, generator=g).softmax(0).to(dtype),
        visual_hidden=torch.randn(N, 16, generator=g).to(dtype),
        last_hidden=torch.randn(16, generator=g).to(dtype),
        text_embeddings=torch.randn(5, 16, generator=g).to(dtype),
        question_attention=torch.randn(5, N, generator=g).softmax(-1).to(dtype),
        received_attention=torch.randn(N, generator=g).softmax(0).to(dtype),
        object_attention=torch.randn(N, generator=g).softmax(0).to(dtype),
    )


def test_registry_holds_the_built_in_methods():
    assert method_names() == [
        "balanced",
        "cdprune",
        "cls_attention",
        "dart",
        "divprune",
        "evs",
        "fastv",
        "fastv_reverse",
        "fastv_vis",
        "fastv_window",
        "flowcut",
        "hiprune",
        "holov",
        "mustdrop",
        "none",
        "otprune",
        "pooling",
        "prunesid",
        "random",
        "sparsevlm",
        "vidcom2",
        "visiontrim",
        "visionzip",
        "vispruner",
    ]


@pytest.mark.parametrize("name", ["cls_attention", "holov", "visionzip", "vispruner"])
def test_vision_attention_methods_say_so_and_refuse_without_it(name):
    assert "vision_attention" in get_method(name).needs
    with pytest.raises(ValueError):
        get_method(name).reduce(features(), GRID, 64, Context())


def test_hiprune_says_it_reads_tower_attention_and_refuses_without_it():
    assert "tower_attention" in get_method("hiprune").needs
    with pytest.raises(ValueError):
        get_method("hiprune").reduce(features(), GRID, 64, Context())


def test_hiprune_keeps_anchors_with_their_neighbours_then_registers():
    """Hand-computed on a 4 x 4 grid, keep 8, object share 1.0: round(8 / 5) = 2 anchors.

    Object attention peaks at 3 (top-right corner) and 9 (row 2, column 1). 3's
    neighbours inside the grid are 2 and 7 (the source's +1 would wrap to 4; -4 would
    clamp to 0); 9's are 5, 13, 8 and 10: 8 anchor and buffer tokens, no registers.
    At share 0.5 one anchor (round(0.8)): 3 with 2 and 7, then the 5 registers by
    deep attention, which ranks 15 > 14 > ... > 0, skipping what is chosen.
    """
    x = torch.randn(16, 4)
    objects = torch.zeros(16)
    objects[3], objects[9] = 2.0, 1.0
    ctx = Context(
        params={"prune_object_share": 1.0},
        object_attention=objects,
        received_attention=torch.arange(16.0),
    )
    out = get_method("hiprune").reduce(x, (4, 4), 8, ctx)
    assert out.indices.tolist() == [2, 3, 5, 7, 8, 9, 10, 13]
    torch.testing.assert_close(out.features, x[out.indices])
    ctx.params = {"prune_object_share": 0.5}
    out = get_method("hiprune").reduce(x, (4, 4), 8, ctx)
    assert out.indices.tolist() == [2, 3, 7, 11, 12, 13, 14, 15]
    # No share: the top 8 by deep attention alone.
    ctx.params = {"prune_object_share": 0.0}
    assert get_method("hiprune").reduce(x, (4, 4), 8, ctx).indices.tolist() == list(range(8, 16))


def test_hiprune_object_layer_is_the_sources_share_of_the_depth():
    from vllm_prune.methods.base import object_layer

    assert [object_layer(d) for d in (24, 32, 12, 3, 1)] == [9, 12, 4, 1, 1]


def test_mustdrop_merges_a_flat_window_keeps_key_tokens_then_the_better_question_rank():
    """Hand-computed on a 6 x 6 grid (four 3 x 3 windows), keep 7.

    Window 0 (tokens 0-2, 6-8, 12-14) holds one vector 9 times: similarity 1, merged
    into one row standing for its centre, 7; the other windows are random (mean cosine
    near 0). 28 tokens are left: ceil(0.08 * 28) = 3 key tokens by [CLS] attention, the
    merged window (its 9 x 0.5) then 35 and 34. Three question tokens attend: 20 gets
    0.3 from each (global 0.9, individual 0.3), 21 0.8 from one (0.8, 0.8), 22 0.25
    from each (0.75, 0.25), 23 0.7 from one (0.7, 0.7). Global ranks 20, 21, 22, 23;
    individual 21, 23, 20, 22; better of the two: 21 (0, 1), 20 (0, 2), 23 (1, 3), 22.
    """
    from vllm_prune.methods.mustdrop import window_similarity, windows

    g = torch.Generator().manual_seed(3)
    x = torch.randn(36, 64, generator=g)
    flat = [0, 1, 2, 6, 7, 8, 12, 13, 14]
    assert windows((6, 6))[0].tolist() == flat
    x[flat] = x[0].clone()
    similarity = window_similarity(x, windows((6, 6)))
    assert similarity[0].item() == pytest.approx(1.0)
    assert similarity[1:].abs().max().item() < 0.8
    cls = torch.zeros(36)
    cls[flat], cls[35], cls[34], cls[33] = 0.5, 3.0, 2.0, 1.0
    question = torch.zeros(3, 36)
    question[:, 20], question[0, 21], question[:, 22], question[1, 23] = 0.3, 0.8, 0.25, 0.7
    ctx = Context(
        params={"prune_layer": 2},
        cls_attention=cls,
        text_embeddings=torch.zeros(3, 8),
        question_attention=question,
    )
    out = get_method("mustdrop").reduce(x, (6, 6), 7, ctx)
    assert out.indices.tolist() == [7, 20, 21, 22, 23, 34, 35]
    torch.testing.assert_close(out.features[0], x[0])
    torch.testing.assert_close(out.features[1:], x[out.indices[1:]])
    # With 29 kept, (36 - 29) // 8 = 0 windows may merge: tokens stay themselves.
    out = get_method("mustdrop").reduce(x, (6, 6), 29, ctx)
    assert out.indices.numel() == 29
    torch.testing.assert_close(out.features, x[out.indices])


def test_flowcut_layer_scores_and_drop_count_by_hand():
    from vllm_prune.methods.flowcut import drop_count, layer_scores

    scores = layer_scores(
        torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 4.0])
    )
    torch.testing.assert_close(scores, torch.tensor([1.5, 5.0]))  # (1/4 + 1/2) 2, (3/4 + 1/2) 4
    one_hot = torch.zeros(10)
    one_hot[3] = 1.0
    assert drop_count(torch.ones(10), 4, 2) == 0  # uniform: entropy log n, nothing dropped
    assert drop_count(one_hot, 4, 2) == 4  # entropy 0: round((10 - 2) / sqrt(4))
    assert drop_count(one_hot, 1, 2) == 8  # never below keep
    assert drop_count(torch.ones(10), 0, 2) == 8  # the last cut keeps exactly keep


def test_flowcut_cuts_every_other_layer_by_the_cumulative_flow():
    """Hand-computed: a 6-layer tower whose last layer (5) is the selected one, 10 patches,
    keep 2; cuts after layers 4, 2 and 0 (counting back from the one before the selected).

    V = 1..10 at layer 0, all ones after; S uniform; A one-hot (entropy 0, so
    r = round((n - 2) / sqrt(remaining))). Layer 0: s = 0.1 (i + 1), 11 for patch 9;
    r = 4, the top 6 are patches 4-9. Layer 1 (no cut): A on patch 4, flow =
    (0.83, 0.38, 0.43, 0.48, 0.53, 5.58). Layer 2: A on patch 9, flow =
    (0.5, 0.28, 0.3, 0.33, 0.35, 3.38), r = round(4 / sqrt 2) = 3: patches 4, 8, 9.
    Layer 3: A on patch 8, flow = (0.42, 0.84, 1.85). Layer 4, the last cut, to 2: A on
    patch 8 again, flow = (0.38, 1.09, 1.09): patches 8 and 9. Layer 5 runs on them uncut.
    """
    from vllm_prune.methods.base import TowerLayer
    from vllm_prune.methods.flowcut import FlowCutState

    def one_hot(n: int, at: int) -> torch.Tensor:
        a = torch.zeros(n)
        a[at] = 1.0
        return a

    state = FlowCutState(patches=10, keep=2, selected_layer=5)
    steps = [
        (one_hot(10, 9), torch.arange(1.0, 11.0)),
        (one_hot(6, 0), torch.ones(6)),
        (one_hot(6, 5), torch.ones(6)),
        (one_hot(3, 1), torch.ones(3)),
        (one_hot(3, 1), torch.ones(3)),
        (one_hot(2, 0), torch.ones(2)),
    ]
    cuts = []
    for layer, (attention, norm) in enumerate(steps):
        n = attention.numel()
        measured = TowerLayer(attention, torch.ones(n), norm, torch.zeros(n, 8))
        positions = state.step(layer, measured)
        cuts.append(None if positions is None else positions.tolist())
    assert cuts == [[4, 5, 6, 7, 8, 9], None, [0, 4, 5], None, [1, 2], None]
    assert state.kept.tolist() == [8, 9]


def test_flowcut_reduce_names_the_rows_the_tower_kept():
    rows = torch.randn(3, 4)
    method = get_method("flowcut")
    out = method.reduce(rows, GRID, 3, Context(tower_kept=torch.tensor([5, 17, 300])))
    assert out.indices.tolist() == [5, 17, 300] and torch.equal(out.features, rows)
    with pytest.raises(ValueError):
        method.reduce(rows, GRID, 3, Context())  # no tower_kept
    with pytest.raises(ValueError):
        method.reduce(features(), GRID, 3, Context(tower_kept=torch.tensor([5, 17, 300])))
    with pytest.raises(ValueError):
        method.reduce(rows, GRID, 3, Context(tower_kept=torch.tensor([17, 5, 300])))
    with pytest.raises(ValueError):
        method.reduce(rows, GRID, 3, Context(tower_kept=torch.tensor([5, 17, N])))


def test_cls_attention_keeps_the_most_attended_tokens():
    ctx = context()
    out = get_method("cls_attention").reduce(features(), GRID, 64, ctx)
    expected = torch.sort(torch.topk(ctx.cls_attention, 64).indices).values
    assert torch.equal(out.indices, expected)


def test_visionzip_keeps_dominant_tokens_and_merges_the_rest_into_contextual_ones():
    x, ctx = features(), context()
    out = get_method("visionzip").reduce(x, GRID, 64, ctx)
    dominant = torch.topk(ctx.cls_attention, 54).indices  # the source's 54 + 10 at 64
    kept = set(out.indices.tolist())
    assert set(dominant.tolist()) <= kept
    for row, index in zip(out.features, out.indices, strict=True):
        if index.item() in set(dominant.tolist()):
            torch.testing.assert_close(row, x[index])
    contextual = [i for i in out.indices.tolist() if i not in set(dominant.tolist())]
    assert len(contextual) == 10


def test_visionzip_merges_each_token_into_its_most_similar_target():
    x = features()
    ctx = context()
    # Identical keys: every token is equally similar to every target, so all of
    # them merge into the first target and the other nine stay as they are.
    ctx.vision_keys = torch.ones(N, 8)
    out = get_method("visionzip").reduce(x, GRID, 64, ctx)
    dominant = set(torch.topk(ctx.cls_attention, 54).indices.tolist())
    targets = [i for i in out.indices.tolist() if i not in dominant]
    rest = [i for i in range(N) if i not in dominant]
    first, others = targets[0], targets[1:]
    members = [i for i in rest if i not in others]
    rows = dict(zip(out.indices.tolist(), out.features, strict=True))
    torch.testing.assert_close(rows[first], x[members].mean(0))
    for target in others:
        torch.testing.assert_close(rows[target], x[target])


def test_vispruner_removes_duplicates_by_the_sources_rounds():
    """Hand-computed: 8 tokens on a 2 x 4 grid, keep 4, 2 important by attention.

    Attention ranks 0 > 1 > ... > 7, so 0 and 1 are important and 2..7 remain, in that
    order, for 2 diverse ones. Rows: 2 and 3 are the same direction, 4 and 5 too, 6 and
    7 are orthogonal to everything. Round 1 (r = min(8, 6 - 2) = 4): A = 2, 4, 6 and
    B = 3, 5, 7; A's best similarities to B are 1, 1, 0, so the argsort puts 2, 4 (ties
    in place) then 6, and dropping 4 of 3 leaves none of A: 3, 5, 7 remain. Round 2
    (r = 1): A = 3, 7, B = 5; both score 0 (3, 5, 7 are orthogonal), the stable sort keeps
    them in place and the first, 3, is dropped: 7, 5 remain.
    """
    e = torch.eye(8)
    rows = torch.stack([e[0], e[1], e[2], e[2], e[3], e[3], e[4], e[5]])
    ctx = Context(params={"prune_important": 0.5}, cls_attention=torch.arange(8, 0, -1.0))
    out = get_method("vispruner").reduce(rows, (2, 4), 4, ctx)
    assert out.indices.tolist() == [0, 1, 5, 7]
    # All important: the top 4 by attention; none important: duplicates only.
    ctx.params = {"prune_important": 1.0}
    assert get_method("vispruner").reduce(rows, (2, 4), 4, ctx).indices.tolist() == [0, 1, 2, 3]
    ctx.params = {"prune_important": 0.0}
    kept = get_method("vispruner").reduce(rows, (2, 4), 4, ctx).indices.tolist()
    assert len(kept) == 4 and not ({2, 3} <= set(kept) or {4, 5} <= set(kept))


@pytest.mark.parametrize("name", PRUNING)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("keep", [1, 2, 7, 64, 100, 143, 144, 150, N - 1, N])
def test_exact_count_and_ascending_unique_indices(name, dtype, keep):
    x = features(dtype)
    out = get_method(name).reduce(x, GRID, keep, context(dtype))
    assert out.features.shape == (keep, x.shape[1])
    assert out.features.dtype == dtype
    assert out.indices.shape == (keep,)
    assert bool((out.indices.diff() > 0).all())
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < N


@pytest.mark.parametrize("name", PRUNING)
def test_same_input_same_output(name):
    x = features()
    a = get_method(name).reduce(x, GRID, 144, context())
    b = get_method(name).reduce(x.clone(), GRID, 144, context())
    assert torch.equal(a.features, b.features) and torch.equal(a.indices, b.indices)


def test_random_rows_are_the_selected_tokens_and_the_seed_matters():
    x = features()
    a = get_method("random").reduce(x, GRID, 64, Context(params={"prune_seed": 0}))
    b = get_method("random").reduce(x, GRID, 64, Context(params={"prune_seed": 1}))
    assert torch.equal(a.features, x[a.indices])
    assert not torch.equal(a.indices, b.indices)


def test_pooling_averages_each_cell():
    x = features()
    out = get_method("pooling").reduce(x, GRID, 144, Context())
    grid = x.reshape(12, 2, 12, 2, -1)  # 24 x 24 -> 12 x 12 cells of 2 x 2
    expected = grid.mean(dim=(1, 3)).reshape(144, -1)
    torch.testing.assert_close(out.features, expected)
    # Each pooled row stands for its cell's top-left-of-centre token.
    assert out.indices[:2].tolist() == [0, 2]
    assert out.indices[12].item() == 2 * 24


def test_pooling_at_full_count_is_the_identity():
    x = features()
    out = get_method("pooling").reduce(x, GRID, N, Context())
    assert torch.equal(out.features, x)
    assert torch.equal(out.indices, torch.arange(N))


def test_pooling_to_one_token_is_the_mean():
    x = features()
    out = get_method("pooling").reduce(x, GRID, 1, Context())
    torch.testing.assert_close(out.features[0], x.mean(0))


@pytest.mark.parametrize(
    ("h", "w", "keep"),
    [(24, 24, 144), (24, 24, 64), (24, 24, 150), (12, 48, 100), (1, 576, 9), (24, 24, 575)],
)
def test_pooled_grid_has_enough_cells_and_follows_the_aspect(h, w, keep):
    rows, cols = pooled_grid(h, w, keep)
    assert keep <= rows * cols <= h * w
    assert rows <= h and cols <= w


def test_none_keeps_everything_and_refuses_a_smaller_count():
    x = features()
    out = get_method("none").reduce(x, GRID, N, Context())
    assert torch.equal(out.features, x)
    with pytest.raises(ValueError):
        get_method("none").reduce(x, GRID, N - 1, Context())


@pytest.mark.parametrize("name", PRUNING)
def test_bad_shapes_and_counts_are_refused(name):
    with pytest.raises(ValueError):
        get_method(name).reduce(torch.zeros(10, 4), GRID, 5, Context())
    with pytest.raises(ValueError):
        get_method(name).reduce(features(), GRID, 0, Context())
    with pytest.raises(ValueError):
        get_method(name).reduce(features(), GRID, N + 1, Context())


def test_selection_methods_return_the_rows_they_name():
    x = features()
    for name in ("random", "divprune", "dart", "cls_attention", "fastv", "cdprune"):
        out = get_method(name).reduce(x, GRID, 64, context())
        assert torch.equal(out.features, x[out.indices]), name


def clustered(clusters: int, per_cluster: int, d: int = 16) -> torch.Tensor:
    """``clusters`` well separated directions, each repeated with a little noise."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(clusters, d, generator=g), dim=-1) * 10
    noise = 0.01 * torch.randn(clusters * per_cluster, d, generator=g)
    return centres.repeat_interleave(per_cluster, dim=0) + noise


def test_divprune_takes_one_token_from_each_cluster_first():
    x = clustered(clusters=8, per_cluster=72)  # 576 tokens, 8 near-duplicate groups
    out = get_method("divprune").reduce(x, GRID, 8, Context())
    assert sorted((out.indices // 72).tolist()) == list(range(8))


def test_divprune_beats_random_on_diversity():
    x = features()
    unit = torch.nn.functional.normalize(x, dim=-1)

    def min_distance(indices: torch.Tensor) -> float:
        d = 1 - unit[indices] @ unit[indices].T
        return float(d.fill_diagonal_(float("inf")).min())

    div = get_method("divprune").reduce(x, GRID, 64, Context()).indices
    rnd = get_method("random").reduce(x, GRID, 64, Context(params={"prune_seed": 0})).indices
    assert min_distance(div) > min_distance(rnd)


def test_dart_keeps_the_largest_norm_pivots_and_avoids_their_duplicates():
    x = features()
    x[10] *= 50  # the largest L1 norm: a pivot
    x[11] = x[10] * 0.999  # its near-duplicate: never kept with it
    out = get_method("dart").reduce(x, GRID, 64, Context(params={"prune_pivots": 1}))
    assert 10 in out.indices.tolist()
    assert 11 not in out.indices.tolist()


def test_spatial_coverage_of_the_baselines():
    """The paper's point: random and pooling keep tokens in every region of the image."""
    x = features()
    for name in ("random", "pooling"):
        out = get_method(name).reduce(x, GRID, 64, Context(params=PARAMS))
        rows, cols = out.indices // 24, out.indices % 24
        quadrants = {(int(r) // 12, int(c) // 12) for r, c in zip(rows, cols, strict=True)}
        assert quadrants == {(0, 0), (0, 1), (1, 0), (1, 1)}, name


def test_methods_package_does_not_import_vllm():
    import subprocess
    import sys

    code = "import sys, vllm_prune.methods, vllm_prune.spec; print('vllm' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def end_biased_scores() -> torch.Tensor:
    """Attention that grows toward the end of the sequence: the paper's position bias."""
    g = torch.Generator().manual_seed(3)
    return torch.linspace(0, 4, N) + 0.3 * torch.rand(N, generator=g)


def test_position_bias_fastv_crowds_the_end_while_uniform_methods_cover_every_window():
    """The paper's central claim, on a synthetic end-biased score map."""
    x, ctx = features(), context()
    ctx.text_attention = end_biased_scores()
    fastv = get_method("fastv").reduce(x, GRID, 64, ctx).indices
    assert (fastv // 24 >= 18).float().mean() > 0.9  # nearly all in the last quarter of rows
    ctx.params = {**PARAMS, "prune_window": 8}  # a 3 x 3 grid of 8 x 8 windows
    windows = {(r // 8, c // 8) for r in range(24) for c in range(24)}
    for name in ("random", "pooling", "fastv_window"):
        kept = get_method(name).reduce(x, GRID, 64, ctx).indices
        covered = {(int(i) // 24 // 8, int(i) % 24 // 8) for i in kept}
        assert covered == windows, name
    # fastv's picks leave most windows empty.
    assert len({(int(i) // 24 // 8, int(i) % 24 // 8) for i in fastv}) <= 3


def test_fastv_reverse_and_vis_read_their_own_scores():
    x, ctx = features(), context()
    ctx.text_attention = end_biased_scores()
    reverse = get_method("fastv_reverse").reduce(x, GRID, 64, ctx).indices
    assert (reverse // 24 < 6).float().mean() > 0.9  # the other end
    vis = get_method("fastv_vis").reduce(x, GRID, 64, ctx).indices
    expected = torch.sort(torch.topk(ctx.visual_attention.float(), 64).indices).values
    assert torch.equal(vis, expected)


def test_balanced_alpha_one_is_fastv_and_zero_is_pure_uniqueness():
    x, ctx = features(), context()
    fastv = get_method("fastv").reduce(x, GRID, 64, ctx).indices
    ctx.params = {**PARAMS, "prune_alpha": 1.0}
    assert torch.equal(get_method("balanced").reduce(x, GRID, 64, ctx).indices, fastv)
    ctx.params = {**PARAMS, "prune_alpha": 0.0}
    similarity = torch.nn.functional.cosine_similarity(ctx.visual_hidden, ctx.last_hidden[None])
    expected = torch.sort(torch.topk(-similarity, 64).indices).values
    assert torch.equal(get_method("balanced").reduce(x, GRID, 64, ctx).indices, expected)


def test_cdprune_prefers_relevant_tokens_and_avoids_duplicates():
    x = clustered(clusters=8, per_cluster=72)
    ctx = context()
    ctx.text_embeddings = x[[0]]  # the question "is about" cluster 0
    ctx.params = {**PARAMS, "prune_theta": 0.9}
    kept = get_method("cdprune").reduce(x, GRID, 8, ctx).indices
    assert 0 in (kept // 72).tolist()
    assert len(set((kept // 72).tolist())) == 8  # one per cluster: no duplicates


def test_sparsevlm_raters_are_the_question_tokens_most_related_to_the_image():
    from vllm_prune.methods.sparsevlm import rater_mask

    directions = torch.eye(16)[:4] * 10  # four orthogonal objects, 144 tokens each
    visual = directions.repeat_interleave(144, dim=0)
    everything, nothing = directions.sum(0), torch.zeros(16)
    three_objects = directions[:3].sum(0)
    text = torch.stack([everything, -everything, nothing, three_objects])
    # Softmax over the question per visual token, then the mean over the image:
    # [0.625, 0, 0, 0.375] against a mean of 0.25.
    assert rater_mask(visual, text).tolist() == [True, False, False, True]
    assert rater_mask(visual, text[:1]).tolist() == [True]  # a lone token always rates


def test_sparsevlm_keeps_what_the_raters_attend_to_and_recycles_the_best_of_the_rest():
    from vllm_prune.methods.sparsevlm import cluster_count, rater_mask

    x, ctx = features() + 3, context()  # every visual token leans toward +1
    ctx.text_embeddings = torch.stack([torch.ones(16), -torch.ones(16)])
    assert rater_mask(x, ctx.text_embeddings).tolist() == [True, False]
    # The rater attends to the first 100 tokens, the other token looks elsewhere.
    attention = torch.full((2, N), 1e-4)
    attention[0, :100] = torch.linspace(1.0, 0.5, 100)
    attention[1, 400:] = 1.0
    ctx.question_attention = attention
    keep = 64
    clusters = cluster_count(N, keep)
    assert clusters == (int((N - keep) * 0.3) + 1) // 10 + 1  # the source's sizing: 16
    out = get_method("sparsevlm").reduce(x, GRID, keep, ctx)
    kept = set(range(keep - clusters))  # the best-rated tokens, verbatim
    assert kept <= set(out.indices.tolist())
    rows = dict(zip(out.indices.tolist(), out.features, strict=True))
    for i in kept:
        assert torch.equal(rows[i], x[i])
    recycled = [i for i in out.indices.tolist() if i not in kept]
    assert len(recycled) == clusters
    # Clusters come from the best-rated deleted tokens (the rest of the first 100
    # and then the tied floor), and are means, not copies.
    assert any(keep - clusters <= i < 100 for i in recycled)
    assert not all(torch.equal(rows[i], x[i]) for i in recycled)


def test_sparsevlm_keep_one_and_n_minus_one_keep_only_rated_tokens_or_recycle_one():
    x, ctx = features(), context()
    one = get_method("sparsevlm").reduce(x, GRID, 1, ctx)
    assert torch.equal(one.features, x[one.indices])
    almost = get_method("sparsevlm").reduce(x, GRID, N - 1, ctx)
    assert almost.indices.numel() == N - 1


def test_the_needs_table_names_every_context_field_once():
    """``NEEDS`` is where a need's fields are defined: each ``Context`` field but the
    parameters belongs to exactly one need, and every method declares only known needs."""
    import dataclasses

    from vllm_prune.methods.base import NEEDS

    owned = [field for fields in NEEDS.values() for field in fields]
    context_fields = {f.name for f in dataclasses.fields(Context)} - {"params"}
    assert sorted(owned) == sorted(context_fields)
    for name in method_names():
        assert get_method(name).needs <= NEEDS.keys(), name


def test_a_method_reading_a_field_it_did_not_declare_is_a_programming_error():
    from vllm_prune.methods.base import require

    pooling = get_method("pooling")  # needs only the grid
    with pytest.raises(TypeError, match="'pooling' reads 'cls_attention' but declares no need"):
        require(context(), "cls_attention", pooling)
    visionzip = get_method("visionzip")
    with pytest.raises(ValueError, match="'visionzip' needs 'cls_attention', which was not"):
        require(Context(), "cls_attention", visionzip)


def test_a_context_holds_only_what_its_method_declared():
    observed = {"cls_attention": torch.ones(3), "text_embeddings": torch.ones(2, 4)}
    ctx = Context.for_needs(get_method("visionzip").needs, {"prune_seed": 1}, observed)
    assert ctx.cls_attention is not None and ctx.text_embeddings is None
    assert ctx.params == {"prune_seed": 1}


def test_a_parameter_is_the_requests_value_or_its_default_as_its_kind():
    from vllm_prune.methods.balanced import ALPHA
    from vllm_prune.methods.dart import PIVOTS

    assert Context().param(ALPHA) == 0.5 and Context().param(PIVOTS) == 8
    assert Context(params={"prune_pivots": 3.0}).param(PIVOTS) == 3
    assert isinstance(Context(params={"prune_pivots": 3.0}).param(PIVOTS), int)


def test_fastv_window_keeps_each_windows_top_tokens_by_one_sort():
    """The vectorised windows equal the window-by-window top-k on ragged windows too."""
    from vllm_prune.methods.base import proportional_quotas
    from vllm_prune.methods.fastv_window import top_in_windows, window_of

    h, w, size, keep = 7, 10, 4, 23
    scores = torch.rand(h * w, generator=torch.Generator().manual_seed(3))
    grid = torch.arange(h * w).reshape(h, w)
    members = [
        grid[top : top + size, left : left + size].flatten()
        for top in range(0, h, size)
        for left in range(0, w, size)
    ]
    quotas = proportional_quotas([len(m) for m in members], keep)
    expected = torch.cat(
        [m[torch.topk(scores[m], q).indices] for m, q in zip(members, quotas, strict=True)]
    )
    window = window_of(h, w, size)
    assert [int((window == i).sum()) for i in range(len(members))] == [len(m) for m in members]
    kept = top_in_windows(scores, window, torch.tensor(quotas))
    assert sorted(kept.tolist()) == sorted(expected.tolist())
