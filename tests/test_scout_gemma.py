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
import torch

from devtools.vllm_tower import one_rank
from vllm_prune.signals.scout import scout

from .test_scout import TEXT, VISUAL, copy_weights

GEMMA_WINDOW = 16  # shorter than the sequence, so the local layers' window matters


@pytest.fixture(scope="module")
def gemma_layers_and_reference(tmp_path_factory):
    from transformers import Gemma3TextModel
    from vllm.config import ModelConfig, VllmConfig
    from vllm.model_executor.model_loader.utils import process_weights_after_loading
    from vllm.model_executor.models.gemma3 import Gemma3DecoderLayer

    from devtools.tiny_internvl_gemma import build_tiny_gemma3

    path = build_tiny_gemma3(tmp_path_factory.mktemp("scout-gemma") / "tiny-gemma3")
    model_config = ModelConfig(model=str(path), dtype="float32", enforce_eager=True)
    vllm_config = VllmConfig(model_config=model_config)
    text_config = model_config.hf_config.text_config
    text_config.sliding_window = GEMMA_WINDOW
    with one_rank(vllm_config):
        layers = [
            Gemma3DecoderLayer(text_config, prefix=f"model.layers.{i}")
            for i in range(text_config.num_hidden_layers)
        ]
        torch.manual_seed(0)
        text_config._attn_implementation = "eager"
        reference = Gemma3TextModel(text_config).eval()
        with torch.no_grad():
            for parameter in reference.parameters():  # norms start at 0: make them matter
                if parameter.dim() == 1:
                    parameter.normal_(0.0, 0.5)
        for ours, theirs in zip(layers, reference.layers, strict=True):
            copy_weights(ours, theirs)
            with torch.no_grad():
                for name in ("q_norm", "k_norm"):
                    getattr(ours.self_attn, name).weight.copy_(
                        getattr(theirs.self_attn, name).weight
                    )
                for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
                    getattr(ours, name).weight.copy_(getattr(theirs, name).weight)
        process_weights_after_loading(
            torch.nn.ModuleList(layers), model_config, torch.device("cpu")
        )
        yield layers, reference


@pytest.mark.parametrize("layer", [1, 2])  # read in the sliding layer, then the global one
def test_scout_matches_transformers_gemma3(gemma_layers_and_reference, layer):
    layers, reference = gemma_layers_and_reference
    assert [x.self_attn.is_sliding for x in layers[:2]] == [True, False]
    g = torch.Generator().manual_seed(layer)
    visual = torch.randn(VISUAL, reference.config.hidden_size, generator=g)
    text = torch.randn(TEXT, reference.config.hidden_size, generator=g)

    ours = scout(layers, visual, text, layer)
    with torch.no_grad():
        out = reference(
            inputs_embeds=torch.cat([visual, text])[None],
            output_attentions=True,
            output_hidden_states=True,
        )
    attention = out.attentions[layer - 1][0].mean(dim=0)
    entering = out.hidden_states[layer - 1][0]

    close = {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(ours.question_attention, attention[VISUAL:, :VISUAL], **close)
    torch.testing.assert_close(ours.visual_attention, attention[VISUAL - 1, :VISUAL], **close)
    torch.testing.assert_close(ours.visual_hidden, entering[:VISUAL], **close)
    torch.testing.assert_close(ours.last_hidden, entering[-1], **close)
