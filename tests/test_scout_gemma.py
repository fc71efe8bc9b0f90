"""The scout pass on Gemma 3's decoder layers against Hugging Face's own Gemma 3.

What Gemma 3 adds to a Llama-style layer: per-head query/key norms before the rotary
embedding, norms on both sides of the attention and of the MLP, and sliding-window
local layers (the window is set shorter than the sequence here, so it matters). vLLM's
layers get the weights of a seeded transformers ``Gemma3TextModel`` (its norms drawn
away from zero, where they start); the scout's rows and hidden states must equal what
transformers' eager attention reports.
"""

from __future__ import annotations

import pytest

from .test_scout import VISUAL, assert_scout_matches, beside_transformers, scout_and_reference

GEMMA_WINDOW = 16  # shorter than the sequence, so the local layers' window matters


@pytest.fixture(scope="module")
def gemma_layers_and_reference(tmp_path_factory):
    from transformers import Gemma3TextModel
    from vllm.model_executor.models.gemma3 import Gemma3DecoderLayer

    from devtools.tiny_internvl_gemma import build_tiny_gemma3

    path = build_tiny_gemma3(tmp_path_factory.mktemp("scout-gemma") / "tiny-gemma3")
    with beside_transformers(
        path,
        lambda vllm_config, config, prefix: Gemma3DecoderLayer(config, prefix=prefix),
        Gemma3TextModel,
        norms=(0.0, 0.5),  # Gemma's norms scale by 1 + w and start at w = 0
        configure=lambda config: setattr(config, "sliding_window", GEMMA_WINDOW),
    ) as found:
        yield found


@pytest.mark.parametrize("layer", [1, 2])  # read in the sliding layer, then the global one
def test_scout_matches_transformers_gemma3(gemma_layers_and_reference, layer):
    layers, reference = gemma_layers_and_reference
    assert [x.self_attn.is_sliding for x in layers[:2]] == [True, False]
    ours, out = scout_and_reference(layers, reference, layer)
    assert_scout_matches(ours, out, layer, VISUAL)
