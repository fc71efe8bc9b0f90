"""The vLLM glue without an engine: the plugin entry point and the prune fields."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch

from vllm_prune.integration import wire
from vllm_prune.integration.processing import fit_keeps, parse_spec
from vllm_prune.plan import apply_plan, square_grid


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
        {"prune": "cls_attention", "prune_ratio": 0.75},
        {"prune": "visionzip", "prune_keep": 64},
        {"prune": "fastv_window", "prune_ratio": 0.889, "prune_window": 3, "prune_text": "a b"},
        {"prune": "cdprune", "prune_keep": 10, "prune_text": "a b"},
        {"prune": "sparsevlm", "prune_ratio": 0.75, "prune_text": "a b"},
    ],
)
def test_processor_count_and_model_rows_always_agree(spec):
    """What the processor promises (placeholders) is what the model returns (rows)."""
    counts = [576, 576]
    parsed = parse_spec(spec)
    encoded = wire.encode(parsed, counts, parsed.keeps_for(counts), text_ids=[5, 6])
    # What vLLM hands embed_multimodal: the batched fields, stacked.
    kwargs = {key: value for key, value in encoded.items()}
    plans = wire.pop_plans(kwargs)
    assert kwargs == {}
    assert len(plans) == 2
    for keep, plan in zip(encoded[wire.KEEP_KEY].tolist(), plans, strict=True):
        rows = apply_plan(
            torch.randn(576, 8),
            square_grid(576),
            plan,
            cls_attention=torch.rand(576).softmax(0),
            vision_keys=torch.randn(576, 4),
            text_attention=torch.rand(576).softmax(0),
            visual_attention=torch.rand(576).softmax(0),
            visual_hidden=torch.randn(576, 8),
            last_hidden=torch.randn(8),
            text_embeddings=torch.randn(3, 8),
            question_attention=torch.rand(3, 576).softmax(-1),
        )
        assert rows.shape[0] == keep == plan.keep
    for name in ("prune_seed", "prune_pivots"):
        if name in spec:
            assert plans[0].params[name] == spec[name]


def test_unknown_method_in_the_processor_is_a_validation_error():
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError) as caught:
        parse_spec({"prune": "nope"})
    assert caught.value.parameter == "prune"


def test_tower_hooks_equal_the_full_attention_map():
    """The [CLS] hook's row is the full map's first row, averaged over heads (with the
    keys' head mean); HiPrune's received attention is its column means over heads and
    queries. Both read the attention core's query, key and value however they are passed
    (positionally, as vLLM's towers call it, or by name), and are gone afterwards."""
    from vllm_prune.signals.cls_attention import capture_cls_attention
    from vllm_prune.signals.received_attention import capture_received_attention

    batch, tokens, heads, head_dim = 2, 5, 2, 4

    class Core(torch.nn.Module):  # an attention core: (query, key, value), vLLM's names
        num_heads, head_size, scale = heads, head_dim, head_dim**-0.5

        def forward(self, query, key, value):
            return value

    core = Core()
    q, k, v = torch.randn(3, batch, tokens, heads * head_dim).unbind(0)
    for call in (lambda: core(q, k, v), lambda: core(q, key=k, value=v)):
        with capture_cls_attention(core) as rows, capture_received_attention(core) as cols:
            call()
        qh = q.view(batch, tokens, heads, head_dim).transpose(1, 2)
        kh = k.view(batch, tokens, heads, head_dim).transpose(1, 2)
        full = (qh @ kh.transpose(-1, -2) * head_dim**-0.5).softmax(-1)  # [B, H, S, S]
        torch.testing.assert_close(rows[0].attention, full[:, :, 0].mean(1))
        torch.testing.assert_close(rows[0].keys, kh.mean(1))
        torch.testing.assert_close(cols[0], full.mean(dim=2).mean(dim=1))
        assert not core._forward_pre_hooks


def test_bad_spec_becomes_vllms_validation_error_naming_the_field():
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError) as caught:
        fit_keeps(parse_spec({"prune": "pooling", "prune_keep": 600}), [576], [1])
    assert caught.value.parameter == "prune_keep"
    with pytest.raises(VLLMValidationError) as caught:
        fit_keeps(parse_spec({"prune": "pooling", "prune_keep": 3}), [64], [4])  # 4 frames
    assert caught.value.parameter == "prune_keep"


def test_kv_bytes_per_token_counts_only_layers_that_hold_kv():
    """Qwen3.5's linear-attention layers keep a fixed state, not a KV entry per token."""
    from types import SimpleNamespace

    from vllm_prune.observability.metrics import kv_bytes_per_token

    dense = SimpleNamespace(
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64
    )
    assert kv_bytes_per_token(dense, torch.bfloat16) == 2 * 4 * 2 * 64 * 2
    hybrid = SimpleNamespace(
        **vars(dense),
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    )
    assert kv_bytes_per_token(hybrid, torch.bfloat16) == 2 * 1 * 2 * 64 * 2


def test_qwen_refuses_llm_cuda_graphs_that_replay_a_prefill_without_forward():
    """Pruned Qwen positions are added in ``forward``: piecewise graphs (vLLM's default)
    and no graphs keep it; FULL graphs for prefills and 0.34's breakable graphs do not."""
    from types import SimpleNamespace

    from vllm.config import CompilationConfig, CUDAGraphMode

    from vllm_prune.integration.positions import graph_refusal

    for mode in ("NONE", "PIECEWISE", "FULL_AND_PIECEWISE", "FULL_DECODE_ONLY"):
        assert graph_refusal(CompilationConfig(cudagraph_mode=mode)) is None, mode
    for mode in ("FULL",):
        refusal = graph_refusal(CompilationConfig(cudagraph_mode=mode))
        assert refusal is not None and "cudagraph_mode FULL" in refusal
    # 0.34 adds CompilationConfig.use_breakable_cudagraph (0.32 has no such field).
    breakable = SimpleNamespace(use_breakable_cudagraph=True, cudagraph_mode=CUDAGraphMode.NONE)
    refusal = graph_refusal(breakable)
    assert refusal is not None and "VLLM_USE_BREAKABLE_CUDAGRAPH" in refusal


def test_graphs_and_image_drafters_are_refused_on_model_runner_v1_only():
    """On V2 the model state writes the offsets before the forward: nothing is refused.
    On V1 ``forward`` adds them: FULL prefill graphs and image-reading drafters are."""
    from types import SimpleNamespace

    import pytest
    from vllm.config import CompilationConfig

    from vllm_prune.integration.positions import SPECULATIVE_REFUSAL, PositionOffsetsMixin

    def config(v2: bool, mode: str = "NONE", method: str | None = None) -> SimpleNamespace:
        drafter = None
        if method is not None:
            drafter = SimpleNamespace(method=method, use_eagle=lambda: method in ("eagle3", "mtp"))
        return SimpleNamespace(
            use_v2_model_runner=v2,
            compilation_config=CompilationConfig(cudagraph_mode=mode),
            speculative_config=drafter,
        )

    model = PositionOffsetsMixin()
    for v2_config in (config(True, "FULL"), config(True, method="eagle3")):
        model._init_positions(v2_config)  # nothing refused
    # 0.34 has no use_v2_model_runner: V2 is the only runner.
    model._init_positions(SimpleNamespace(compilation_config=None, speculative_config=None))
    with pytest.raises(ValueError, match="cudagraph_mode FULL"):
        model._init_positions(config(False, "FULL"))
    with pytest.raises(ValueError) as refused:
        model._init_positions(config(False, method="mtp"))
    assert str(refused.value) == SPECULATIVE_REFUSAL and "--speculative-config" in SPECULATIVE_REFUSAL
    model._init_positions(config(False, method="ngram"))  # reads no image
    model._init_positions(config(False, "FULL"), prunes=False)  # unpruned: vLLM's own path


def test_our_v2_model_state_extends_the_one_vllm_would_pick():
    """Default for a plain model, Mamba hybrid for a hybrid one (Qwen3.5): ours is mixed
    before it; without pruning the model keeps vLLM's own."""
    from types import SimpleNamespace

    import torch
    from vllm.v1.worker.gpu.model_states.default import DefaultModelState
    from vllm.v1.worker.gpu.model_states.mamba_hybrid import MambaHybridModelState

    from vllm_prune.integration.model_state import PrunedPositionsState
    from vllm_prune.integration.positions import PositionOffsetsMixin

    class Model(PositionOffsetsMixin, torch.nn.Module):
        pass

    def state_of(hybrid: bool, prunes: bool = True) -> type:
        model_config = SimpleNamespace(is_hybrid=hybrid, is_attention_free=False)
        no_layers = SimpleNamespace(static_forward_context={})  # no encoder-only attention
        vllm_config = SimpleNamespace(
            model_config=model_config, use_v2_model_runner=True, compilation_config=no_layers
        )
        model = Model()
        model._init_positions(vllm_config, prunes=prunes)
        return model.get_model_state_cls()

    plain = state_of(False)
    assert plain is PrunedPositionsState and issubclass(plain, DefaultModelState)
    hybrid = state_of(True)
    assert hybrid.__mro__[1:4] == (PrunedPositionsState, MambaHybridModelState, DefaultModelState)
    assert state_of(True, prunes=False) is MambaHybridModelState


def test_a_class_that_would_swap_vllms_implementation_fails_at_load():
    import pytest
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

    from vllm_prune.integration import plugin
    from vllm_prune.integration.qwen3_5 import PruneQwen3_5ForConditionalGeneration

    vllms = ("vllm.model_executor.models.qwen3_5", "Qwen3_5ForConditionalGeneration")
    saved = dict(plugin.VLLMS_OWN)
    try:
        plugin.VLLMS_OWN["Qwen3_5ForConditionalGeneration"] = vllms
        plugin.check_not_swapped(
            PruneQwen3_5ForConditionalGeneration, "Qwen3_5ForConditionalGeneration"
        )
        with pytest.raises(TypeError, match="would swap vLLM's implementation"):
            plugin.check_not_swapped(
                Qwen3VLForConditionalGeneration, "Qwen3_5ForConditionalGeneration"
            )
    finally:
        plugin.VLLMS_OWN.clear()
        plugin.VLLMS_OWN.update(saved)


def test_a_decompression_bomb_is_found_as_raised_and_as_vllm_0_34_wraps_it():
    from PIL import Image

    from vllm_prune.integration.media import _bomb_in

    bomb = Image.DecompressionBombError("Image size (900000000 pixels) exceeds limit")
    assert _bomb_in(bomb) is bomb  # 0.32, 0.33
    try:  # 0.34's ImageMediaIO.load_bytes
        try:
            raise bomb
        except Image.DecompressionBombError as e:
            raise ValueError(f"Failed to load image: {e}") from e
    except ValueError as wrapped:
        assert _bomb_in(wrapped) is bomb
    assert _bomb_in(ValueError("Failed to load image: truncated")) is None
