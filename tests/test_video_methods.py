"""Video pruning by hand: the temporal methods against vLLM's own, budgets over frames.

``evs`` and ``vidcom2`` reimplement vLLM's whole-server video pruning
(``vllm.multimodal.video_prune``) as per-request methods; ``select`` must keep exactly
the tokens vLLM keeps for the same count. The rest pins what the API server fixes
(tokens per frame, at least one each) and what the model then keeps.
"""

from __future__ import annotations

import pytest
import torch
from vllm.multimodal.video_prune import evs as vllm_evs
from vllm.multimodal.video_prune import vidcom2 as vllm_vidcom2

from vllm_prune.methods import Context, evs, get_method, method_names, vidcom2
from vllm_prune.methods.base import even_split, frame_counts
from vllm_prune.spec import PruneSpec, PruneSpecError

# (frames, token rows, token columns, channels)
SHAPES = [(4, 8, 8, 32), (6, 4, 4, 8), (3, 3, 4, 20)]


def clip(t: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Frames that mostly repeat the previous one, as a video's tokens do: [T * n, D]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t * n, d, generator=g)
    for f in range(1, t):
        x[f * n : (f + 1) * n] = 0.9 * x[(f - 1) * n : f * n] + 0.1 * torch.randn(n, d, generator=g)
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rate", [0.5, 0.75])  # whole counts: VidCom2's budgets use keep / N
@pytest.mark.parametrize("name", ["evs", "vidcom2"])
def test_select_keeps_exactly_what_vllm_keeps_for_the_same_count(name, shape, rate):
    t, h, w, d = shape
    x = clip(t, h * w, d, seed=h + w)
    theirs = {"evs": vllm_evs, "vidcom2": vllm_vidcom2}[name].compute_retention_mask(
        x, (t, 2 * h, 2 * w), 2, rate
    )
    ours = {"evs": evs, "vidcom2": vidcom2}[name].select(x.reshape(t, h * w, d), int(theirs.sum()))
    assert torch.equal(ours, theirs.nonzero().squeeze(-1))


def test_evs_keeps_the_first_frame_then_what_changed():
    t, n, d = 3, 6, 4
    x = torch.randn(t * n, d, generator=torch.Generator().manual_seed(0))
    x[n : 2 * n] = x[:n]  # frame 1 repeats frame 0 ...
    x[n + 2] = -x[2]  # ... but for token 2
    x[2 * n : 3 * n] = x[:n]  # frame 2 repeats frame 1 but for token 2 (back again) and 5
    x[2 * n + 5] = -x[5]
    kept = evs.select(x.reshape(t, n, d), n + 3).tolist()
    assert kept == [0, 1, 2, 3, 4, 5, n + 2, 2 * n + 2, 2 * n + 5]


@pytest.mark.parametrize("name", ["evs", "vidcom2"])
@pytest.mark.parametrize("keep", [3, 4, 10, 40, 71, 72])
def test_frame_keeps_sum_to_keep_with_at_least_one_per_frame(name, keep):
    t, n, d = 3, 24, 12
    cells = clip(t, n, d).reshape(t, n, d)
    keeps = get_method(name).frame_keeps(cells, t, keep)
    assert sum(keeps) == keep and len(keeps) == t
    assert all(1 <= k <= n for k in keeps)


def test_evs_frame_keeps_follow_the_change():
    """Frame 1 repeats frame 0, frame 2 is new: frame 2 gets what frame 1 does not."""
    t, n, d = 3, 16, 8
    g = torch.Generator().manual_seed(3)
    first = torch.randn(n, d, generator=g)
    cells = torch.stack([first, first.clone(), torch.randn(n, d, generator=g)])
    assert get_method("evs").frame_keeps(cells, t, n + 9) == [16, 1, 8]


def test_vidcom2_gives_the_distinct_frame_more():
    t, n, d = 4, 16, 8
    g = torch.Generator().manual_seed(4)
    base = torch.randn(n, d, generator=g)
    frames = [base + 0.01 * torch.randn(n, d, generator=g) for _ in range(t)]
    frames[2] = torch.randn(n, d, generator=g) * 3  # the odd one out
    keeps = get_method("vidcom2").frame_keeps(torch.stack(frames), t, 24)
    assert keeps[2] == max(keeps) and keeps[2] > 24 // t


@pytest.mark.parametrize("name", ["evs", "vidcom2"])
def test_reduce_video_keeps_each_frames_count_in_frame_order(name):
    t, h, w, d = 4, 3, 5, 16
    x = clip(t, h * w, d)
    keeps = [7, 1, 3, 15]
    out = get_method(name).reduce_video(x, (t, h, w), keeps, Context())
    assert out.features.shape == (sum(keeps), d)
    assert torch.equal(out.features, x[out.indices])
    assert bool((out.indices.diff() > 0).all())
    assert torch.bincount(out.indices // (h * w), minlength=t).tolist() == keeps


def test_evs_within_a_frame_keeps_its_most_changed_tokens_and_spreads_the_first():
    t, n, d = 2, 9, 4
    x = torch.randn(t * n, d, generator=torch.Generator().manual_seed(5))
    x[n:] = x[:n]
    x[n + 4] = -x[4]
    out = get_method("evs").reduce_video(x, (t, 3, 3), [3, 1], Context())
    assert out.indices.tolist() == [0, 4, 8, n + 4]  # frame 0 evenly, frame 1 what changed


def test_temporal_methods_prune_an_image_as_one_frame():
    x = clip(1, 36, 8)
    for name in ("evs", "vidcom2"):
        out = get_method(name).reduce(x, (6, 6), 9, Context())
        assert out.indices.numel() == 9 and bool((out.indices.diff() > 0).all())
    assert get_method("evs").reduce(x, (6, 6), 2, Context()).indices.tolist() == [0, 35]


def test_spatial_methods_split_a_video_evenly_and_are_not_temporal():
    temporal = [m for m in method_names() if get_method(m).temporal]
    assert temporal == ["evs", "vidcom2"]
    assert get_method("pooling").frame_keeps(None, 4, 10) == [3, 3, 2, 2]
    assert even_split(3, 3) == [1, 1, 1]
    with pytest.raises(ValueError):
        even_split(4, 3)
    scores = torch.tensor([[9.0, 8.0, 1.0], [0.5, 0.7, 0.1], [3.0, 2.0, 0.0]])
    # Kept: all of frame 0, none of frame 1, two of frame 2: frame 1 takes its best token
    # (0.7) in place of the worst-scoring kept one (frame 0's 1.0).
    assert frame_counts(torch.tensor([0, 1, 2, 6, 7]), scores) == [2, 1, 2]


def test_a_video_keeps_at_least_one_token_per_frame_and_a_budget_spans_images_and_videos():
    ratio = PruneSpec.from_fields({"prune": "pooling", "prune_ratio": 0.99})
    assert ratio.keep_for(64, frames=4) == 4
    keep = PruneSpec.from_fields({"prune": "pooling", "prune_keep": 3})
    with pytest.raises(PruneSpecError) as caught:
        keep.keep_for(64, frames=4)
    assert caught.value.field == "prune_keep"
    assert "[4, 64] for this video of 4 frames" in str(caught.value)
    budget = PruneSpec.from_fields({"prune": "pooling", "prune_budget": 37})
    # An image of 100 tokens and a video of 4 x 50: 1 + 4 reserved, the rest by size.
    assert budget.keeps_for([100, 200], [1, 4]) == [1 + 11, 4 + 21]
    with pytest.raises(PruneSpecError) as caught:
        PruneSpec.from_fields({"prune": "pooling", "prune_budget": 4}).keeps_for([100, 200], [1, 4])
    assert caught.value.field == "prune_budget" and "[5, 300]" in str(caught.value)
