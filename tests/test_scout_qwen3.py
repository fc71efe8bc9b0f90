"""The scout pass on Qwen3-VL's LLM against Hugging Face's own Qwen3-VL text model.

What Qwen3-VL adds to a Llama-style layer: per-head query/key norms, interleaved M-RoPE
(the scout's positions: the image's grid, then the question after it), and DeepStack,
the tower's rows the LLM adds to the visual tokens' hidden states after each of its
first layers. vLLM's layers get the weights of a seeded transformers
``Qwen3VLTextModel``; the scout's rows and hidden states must equal what transformers'
eager attention reports for the same embeddings, positions and DeepStack rows.
"""

from __future__ import annotations

import pytest
import torch

from devtools.tiny_families import build_tiny_qwen3
from vllm_prune.integration.positions import grid_offsets
from vllm_prune.signals.scout import scout

from .test_scout import assert_scout_matches, beside_transformers

GRID, TEXT = (5, 8), 7  # the image's token grid, the question's tokens
VISUAL = GRID[0] * GRID[1]


@pytest.fixture(scope="module")
def layers_and_reference(tmp_path_factory):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel
    from vllm.model_executor.models.qwen3_vl import Qwen3VLDecoderLayer

    path = build_tiny_qwen3(tmp_path_factory.mktemp("scout-qwen3") / "tiny-qwen3-vl")
    with beside_transformers(
        path,
        lambda vllm_config, config, prefix: Qwen3VLDecoderLayer(config=config, prefix=prefix),
        Qwen3VLTextModel,
        norms=(1.0, 0.3),  # its norms start at 1
    ) as found:
        yield found


@pytest.mark.parametrize("layer", [1, 2])
def test_scout_matches_transformers_qwen3_vl_with_deepstack(layers_and_reference, layer):
    layers, reference = layers_and_reference
    hidden_size = reference.config.hidden_size
    g = torch.Generator().manual_seed(layer)
    visual = torch.randn(VISUAL, hidden_size, generator=g)
    text = torch.randn(TEXT, hidden_size, generator=g)
    deepstack = [torch.randn(VISUAL, hidden_size, generator=g) for _ in range(2)]
    h, w = GRID
    positions = torch.cat(
        [grid_offsets(torch.arange(VISUAL), w), (torch.arange(TEXT) + max(h, w)).expand(3, -1)],
        dim=1,
    )

    ours = scout(layers, visual, text, layer, positions, deepstack=deepstack)
    with torch.no_grad():
        out = reference(
            inputs_embeds=torch.cat([visual, text])[None],
            position_ids=positions[:, None, :],
            visual_pos_masks=(torch.arange(VISUAL + TEXT) < VISUAL)[None],
            deepstack_visual_embeds=deepstack,
            output_attentions=True,
            output_hidden_states=True,
        )
    # transformers records each layer's output before DeepStack is added to it; the input
    # of layer ``layer - 1`` (what the scout reports) has it.
    entering = out.hidden_states[layer - 1][0].clone()
    if layer >= 2:
        entering[:VISUAL] += deepstack[layer - 2]
    assert_scout_matches(ours, out, layer, VISUAL, entering)


def test_deepstack_changes_what_the_scout_reads(layers_and_reference):
    """Without its DeepStack rows the second layer's reading differs (so they are used)."""
    layers, reference = layers_and_reference
    g = torch.Generator().manual_seed(9)
    visual = torch.randn(VISUAL, reference.config.hidden_size, generator=g)
    text = torch.randn(TEXT, reference.config.hidden_size, generator=g)
    deepstack = [torch.randn(VISUAL, visual.shape[1], generator=g) for _ in range(2)]
    positions = torch.arange(VISUAL + TEXT).expand(3, -1)
    with_rows = scout(layers, visual, text, 2, positions, deepstack=deepstack)
    without = scout(layers, visual, text, 2, positions)
    assert not torch.allclose(with_rows.question_attention, without.question_attention)
