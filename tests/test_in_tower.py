"""FlowCut inside vLLM's own CLIP tower, against Hugging Face's CLIP cut by hand.

The engine's path (``integration.in_tower`` hooks on vLLM's tower layers) must keep
the patches, and return the rows, that the same FlowCut steps give when Hugging
Face's CLIP (eager attention, the same weights) is run layer by layer and its
attention probabilities and value projections are read directly; the later layers
must run on fewer tokens; and the rows must not be those of an uncut tower
(so the test can fail).
"""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig

from devtools.vllm_tower import build_towers, one_rank
from vllm_prune.integration.in_tower import cut_in_tower
from vllm_prune.methods.base import TowerLayer
from vllm_prune.methods.flowcut import FlowCutState

CONFIG = CLIPVisionConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=4,
    image_size=112,
    patch_size=14,
)
PATCHES = (112 // 14) ** 2  # 64
BUILT = 7  # up to layer -2, as LLaVA builds it
KEEP = 12


@pytest.fixture(scope="module")
def towers():
    with one_rank():
        yield build_towers(CONFIG, BUILT, seed=0, query_scale=30.0)


class Recording(FlowCutState):
    """FlowCut's cut, keeping what each layer measured."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.measures: list[TowerLayer] = []

    def step(self, layer: int, measured: TowerLayer) -> torch.Tensor | None:
        self.measures.append(measured)
        return super().step(layer, measured)


def reference_cut(
    reference, pixels: torch.Tensor, state: FlowCutState, measures: list[TowerLayer]
) -> torch.Tensor:
    """Hugging Face's layers one by one, what a layer measures read from its attention map."""
    model = reference
    heads, head_dim = CONFIG.num_attention_heads, CONFIG.hidden_size // CONFIG.num_attention_heads
    hidden = model.pre_layrnorm(model.embeddings(pixels))
    for index, layer in enumerate(model.encoder.layers[:BUILT]):
        normed = layer.layer_norm1(hidden)
        _, probabilities = layer.self_attn(normed)  # [1, heads, S, S]
        values = layer.self_attn.v_proj(normed)[0].view(-1, heads, head_dim)  # [S, heads, d]
        hidden = layer(hidden, None)
        measured = TowerLayer(
            cls_attention=probabilities[0, :, 0].mean(0)[1:],
            value_attention=torch.einsum("hd,shd->hs", values[0], values).softmax(-1).mean(0)[1:],
            value_norm=values.mean(1).abs().sum(-1)[1:],
            hidden=hidden[0, 1:],
        )
        measures.append(measured)
        positions = state.step(index, measured)
        if positions is not None:
            hidden = hidden[:, torch.cat([torch.zeros(1, dtype=torch.long), positions + 1])]
    return hidden[0, 1:]


def test_vllm_tower_cut_by_the_hooks_equals_the_reference_cut(towers):
    ours, reference = towers
    pixels = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    lengths: list[int] = []
    layers = ours.vision_model.encoder.layers
    handles = [
        layer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[-2]))
        for layer in layers
    ]
    ours_state = Recording(PATCHES, KEEP, BUILT - 1)
    with torch.no_grad(), cut_in_tower(layers, ours_state):
        rows = ours(pixels, feature_select_strategy="default")[0]
    for handle in handles:
        handle.remove()
    reference_state = FlowCutState(PATCHES, KEEP, BUILT - 1)
    measures: list[TowerLayer] = []
    with torch.no_grad():
        expected = reference_cut(reference, pixels, reference_state, measures)
        uncut = ours(pixels, feature_select_strategy="default")[0]

    assert rows.shape == (KEEP, CONFIG.hidden_size)
    assert ours_state.kept.tolist() == reference_state.kept.tolist()
    # Every field a method gets from a layer is the reference's, layer by layer.
    assert len(ours_state.measures) == len(measures) == BUILT
    for ours_layer, reference_layer in zip(ours_state.measures, measures, strict=True):
        for name in ("cls_attention", "value_attention", "value_norm", "hidden"):
            torch.testing.assert_close(
                getattr(ours_layer, name), getattr(reference_layer, name), rtol=1e-4, atol=1e-4
            )
    torch.testing.assert_close(rows, expected, rtol=1e-4, atol=1e-4)
    # The later layers ran on fewer tokens, cut more than once (not only at the end).
    assert lengths[0] == PATCHES + 1 and lengths[-1] == KEEP + 1
    assert len(set(lengths)) > 2, lengths
    # Cut rows are not the uncut tower's rows of the same patches.
    assert not torch.allclose(rows, uncut[ours_state.kept], rtol=1e-3, atol=1e-3)
    # The hooks are gone: the tower runs uncut again.
    assert ours(pixels, feature_select_strategy="default").shape[1] == PATCHES
