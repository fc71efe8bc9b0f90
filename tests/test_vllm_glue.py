"""The vLLM glue without an engine: the plugin entry point and the prune fields."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch

from vllm_prune.models import fields


def test_plugin_entry_point_registers_our_llava():
    (entry,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "vllm_prune"]
    register = entry.load()
    register()
    register()  # idempotent

    from vllm import ModelRegistry

    model_cls = ModelRegistry._try_load_model_cls("LlavaForConditionalGeneration")
    assert model_cls.__name__ == "PruneLlavaForConditionalGeneration"


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"prune": "none"},
        {"prune": "pooling", "prune_ratio": 0.75},
        {"prune": "pooling", "prune_keep": 143},
        {"prune": "random", "prune_ratio": 0.889, "prune_seed": 12},
        {"prune": "random", "prune_keep": 575},
        {"prune": "divprune", "prune_ratio": 0.889},
        {"prune": "dart", "prune_keep": 64, "prune_pivots": 5},
    ],
)
def test_processor_count_and_model_rows_always_agree(spec):
    """What the processor promises (placeholders) is what the model returns (rows)."""
    counts = [576, 576]
    encoded = fields.encode(spec, counts)
    # What vLLM hands embed_multimodal: the batched fields, stacked.
    kwargs = {key: value for key, value in encoded.items()}
    plans = fields.pop_plans(kwargs)
    assert kwargs == {}
    assert len(plans) == 2
    for keep, plan in zip(encoded[fields.KEEP_KEY].tolist(), plans, strict=True):
        rows = fields.apply_plan(torch.randn(576, 8), fields.square_grid(576), plan)
        assert rows.shape[0] == keep == plan.keep
    for name in ("prune_seed", "prune_pivots"):
        if name in spec:
            assert plans[0].params[name] == spec[name]


def test_bad_spec_becomes_vllms_validation_error_naming_the_field():
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError) as caught:
        fields.encode({"prune": "pooling", "prune_keep": 600}, [576])
    assert caught.value.parameter == "prune_keep"
