"""The scout pass against an independent reference: Hugging Face's own Llama.

vLLM's decoder layers (the ones the engine runs) get the weights of a seeded
transformers ``LlamaModel``; the scout's attention rows and hidden states must
equal what transformers' eager attention reports for the same sequence.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from devtools.tiny_llava import build_tiny_llava
from devtools.vllm_tower import one_rank
from vllm_prune.signals.scout import scout

VISUAL, TEXT = 40, 7


@contextmanager
def beside_transformers(path, make_layer, reference_class, *, norms=None, configure=None):
    """vLLM's decoder layers for the checkpoint at ``path`` (``make_layer(vllm_config,
    text_config, prefix)``) with the weights of a seeded transformers ``reference_class``
    (eager attention). ``norms``: (mean, std) drawn for the reference's 1-D weights, so
    its norms matter; ``configure``: edits the text config before either is built."""
    from vllm.config import ModelConfig, VllmConfig
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    model_config = ModelConfig(model=str(path), dtype="float32", enforce_eager=True)
    vllm_config = VllmConfig(model_config=model_config)
    text_config = model_config.hf_config.text_config
    if configure is not None:
        configure(text_config)
    with one_rank(vllm_config):
        layers = [
            make_layer(vllm_config, text_config, f"model.layers.{i}")
            for i in range(text_config.num_hidden_layers)
        ]
        torch.manual_seed(0)
        text_config._attn_implementation = "eager"
        reference = reference_class(text_config).eval()
        if norms is not None:
            with torch.no_grad():
                for parameter in reference.parameters():
                    if parameter.dim() == 1:
                        parameter.normal_(*norms)
        for ours, theirs in zip(layers, reference.layers, strict=True):
            copy_weights(ours, theirs)
        # As vLLM's loader does: turns weights into the CPU kernels' runtime format.
        process_weights_after_loading(
            torch.nn.ModuleList(layers), model_config, torch.device("cpu")
        )
        yield layers, reference


@pytest.fixture(scope="module")
def layers_and_reference(tmp_path_factory):
    from transformers import LlamaModel
    from vllm.model_executor.models.llama import LlamaDecoderLayer

    path = build_tiny_llava(tmp_path_factory.mktemp("scout") / "tiny-llava")
    with beside_transformers(
        path,
        lambda vllm_config, config, prefix: LlamaDecoderLayer(vllm_config, prefix, config),
        LlamaModel,
    ) as found:
        yield found


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """A transformers decoder layer's weights into vLLM's (fused QKV and gate-up), with the
    per-head query/key norms and the norms around the MLP where the layer has them."""
    attn, mlp = theirs.self_attn, theirs.mlp
    with torch.no_grad():
        ours.self_attn.qkv_proj.weight.copy_(
            torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        )
        ours.self_attn.o_proj.weight.copy_(attn.o_proj.weight)
        ours.mlp.gate_up_proj.weight.copy_(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        ours.mlp.down_proj.weight.copy_(mlp.down_proj.weight)
        ours.input_layernorm.weight.copy_(theirs.input_layernorm.weight)
        ours.post_attention_layernorm.weight.copy_(theirs.post_attention_layernorm.weight)
        for name in ("q_norm", "k_norm"):
            if hasattr(attn, name):
                getattr(ours.self_attn, name).weight.copy_(getattr(attn, name).weight)
        for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            if hasattr(theirs, name):
                getattr(ours, name).weight.copy_(getattr(theirs, name).weight)


@pytest.mark.parametrize("layer", [1, 2])
def test_scout_matches_transformers_llama(layers_and_reference, layer):
    ours, out = scout_and_reference(*layers_and_reference, layer)
    assert_scout_matches(ours, out, layer, VISUAL)


def scout_and_reference(layers, reference, layer: int):
    """The scout at ``layer`` and transformers' output on the same seeded image and question."""
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
    return ours, out


def assert_scout_matches(ours, out, layer: int, visual: int, entering=None) -> None:
    """The scout's rows and hidden states against transformers' output ``out`` (attentions
    and hidden states) for a sequence of ``visual`` image tokens, then the question.
    ``entering``: the input of layer ``layer - 1`` where transformers does not report it."""
    attention = out.attentions[layer - 1][0].mean(dim=0)  # [L, L], mean over heads
    if entering is None:
        entering = out.hidden_states[layer - 1][0]  # input of layer ``layer - 1``
    close = {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(ours.text_attention, attention[-1, :visual], **close)
    torch.testing.assert_close(ours.question_attention, attention[visual:, :visual], **close)
    torch.testing.assert_close(ours.visual_attention, attention[visual - 1, :visual], **close)
    torch.testing.assert_close(ours.visual_hidden, entering[:visual], **close)
    torch.testing.assert_close(ours.last_hidden, entering[-1], **close)


def test_scout_rows_differ_between_questions(layers_and_reference):
    """The reading depends on the question (else text-guided methods would not be)."""
    layers, reference = layers_and_reference
    g = torch.Generator().manual_seed(5)
    visual = torch.randn(VISUAL, reference.config.hidden_size, generator=g)
    first = scout(layers, visual, torch.randn(TEXT, visual.shape[1], generator=g), 2)
    second = scout(layers, visual, torch.randn(TEXT, visual.shape[1], generator=g), 2)
    assert not torch.allclose(first.text_attention, second.text_attention)


def test_scout_without_a_question_reads_the_last_visual_token(layers_and_reference):
    """``fastv_vis`` needs no question: the last visual token's row is causal."""
    layers, reference = layers_and_reference
    g = torch.Generator().manual_seed(7)
    visual = torch.randn(VISUAL, reference.config.hidden_size, generator=g)
    asked = scout(layers, visual, torch.randn(TEXT, visual.shape[1], generator=g), 2)
    alone = scout(layers, visual, visual.new_zeros(0, visual.shape[1]), 2)
    assert alone.text_attention is None and alone.last_hidden is None
    assert alone.question_attention.shape == (0, VISUAL)
    torch.testing.assert_close(alone.visual_attention, asked.visual_attention)
    torch.testing.assert_close(alone.visual_hidden, asked.visual_hidden)
