"""Parsing and validating the prune fields of a request."""

from __future__ import annotations

import pytest

from vllm_prune.spec import PruneSpec, PruneSpecError


@pytest.mark.parametrize(
    ("ratio", "keep"), [(0.75, 144), (0.889, 64), (0.0, 576), (0.5, 288), (0.999, 1)]
)
def test_keep_from_ratio_on_llava_grid(ratio, keep):
    spec = PruneSpec.from_fields({"prune": "pooling", "prune_ratio": ratio})
    assert spec.keep_for(576) == keep


def test_keep_is_absolute_and_checked_against_the_image():
    spec = PruneSpec.from_fields({"prune": "random", "prune_keep": 100})
    assert spec.keep_for(576) == 100
    with pytest.raises(PruneSpecError) as caught:
        spec.keep_for(64)
    assert caught.value.field == "prune_keep"


def test_no_method_means_no_spec_and_defaults_fill_in():
    assert PruneSpec.from_fields({}) is None
    spec = PruneSpec.from_fields({"prune": "pooling"}, default_ratio=0.5)
    assert spec.ratio == 0.5


def test_none_ignores_ratio_and_keeps_everything():
    spec = PruneSpec.from_fields({"prune": "none", "prune_ratio": 0.9})
    assert spec.keep_for(576) == 576
    assert spec.to_fields() == {"prune": "none"}


def test_method_params_default_and_round_trip():
    spec = PruneSpec.from_fields({"prune": "random", "prune_ratio": 0.75})
    assert spec.params == {"prune_seed": 0}
    again = PruneSpec.from_fields(spec.to_fields())
    assert again == spec


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prune": "fastest"}, "prune"),
        ({"prune": None, "prune_ratio": 0.5}, "prune_ratio"),
        ({"prune": "pooling", "prune_ratio": 1}, "prune_ratio"),
        ({"prune": "pooling", "prune_ratio": float("nan")}, "prune_ratio"),
        ({"prune": "pooling", "prune_ratio": "0.5"}, "prune_ratio"),
        ({"prune": "pooling", "prune_keep": True}, "prune_keep"),
        ({"prune": "pooling", "prune_keep": -3}, "prune_keep"),
        ({"prune": "pooling", "prune_keep": 3, "prune_ratio": 0.1}, "prune_ratio"),
        ({"prune": "random", "prune_seed": 2**32}, "prune_seed"),
        ({"prune": "pooling", "prune_seed": 1}, "prune_seed"),
    ],
)
def test_errors_name_the_field(fields, field):
    with pytest.raises(PruneSpecError) as caught:
        PruneSpec.from_fields(fields)
    assert caught.value.field == field
    assert f"'{field}'" in str(caught.value)


def test_budget_is_spread_in_proportion_with_at_least_one_token_per_image():
    spec = PruneSpec.from_fields({"prune": "pooling", "prune_budget": 200})
    assert spec.keeps_for([576, 576]) == [100, 100]
    assert sum(spec.keeps_for([2928, 576, 256])) == 200
    # 1 each, then 197 over 2927 : 575 : 255 = 153.5, 30.2, 13.4 -> 154, 30, 13.
    assert spec.keeps_for([2928, 576, 256]) == [155, 31, 14]
    assert PruneSpec.from_fields({"prune": "random", "prune_budget": 3}).keeps_for([5, 900, 9]) == [
        1,
        1,
        1,
    ]
    assert PruneSpec.from_fields({"prune": "none", "prune_budget": 3}).keeps_for([5, 9]) == [5, 9]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prune": "pooling", "prune_budget": 0}, "prune_budget"),
        ({"prune": "pooling", "prune_budget": 1.5}, "prune_budget"),
        ({"prune": "pooling", "prune_budget": 10, "prune_ratio": 0.5}, "prune_ratio"),
        ({"prune": "pooling", "prune_budget": 10, "prune_keep": 5}, "prune_keep"),
    ],
)
def test_bad_budgets_name_the_field(fields, field):
    with pytest.raises(PruneSpecError) as caught:
        PruneSpec.from_fields(fields)
    assert caught.value.field == field


def test_budget_outside_the_request_is_refused():
    spec = PruneSpec.from_fields({"prune": "pooling", "prune_budget": 2000})
    with pytest.raises(PruneSpecError) as caught:
        spec.keeps_for([576, 576])
    assert caught.value.field == "prune_budget" and "[2, 1152]" in str(caught.value)
    with pytest.raises(PruneSpecError):
        PruneSpec.from_fields({"prune": "pooling", "prune_budget": 1}).keeps_for([576, 576])
