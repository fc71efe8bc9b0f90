"""The generic adapter on models checked at the processor only: Llama 4 (vLLM 0.32's CPU
build cannot serve its images, even unpruned) and Gemma 4 (its placeholder, beside the
served families of ``test_generic.py``).

vLLM's own processor is built the way the server builds it, with the plugin registered,
from a tiny checkpoint built offline; no engine runs.
"""

from __future__ import annotations

import pytest
from PIL import Image

from devtools.tiny_llama4_gemma4 import build_tiny_gemma4, build_tiny_llama4
from vllm_prune import layout
from vllm_prune.integration import generic, plugin
from vllm_prune.integration.families import family_of

SIZE = (896, 448)
# (name, builder, architecture, embed runs of an 896 x 448 image, pooling runs)
MODELS = [
    # 2 rows of 3 tiles and the global view, 12 x 12 patches each, between separators.
    ("llama4", build_tiny_llama4, "Llama4ForConditionalGeneration", (144,) * 7, True),
    # One run of 11 x 23 soft tokens: the grid follows the image, so it is not declared.
    ("gemma4", build_tiny_gemma4, "Gemma4ForConditionalGeneration", (253,), False),
]


@pytest.fixture(scope="module", params=MODELS, ids=lambda m: m[0])
def processors(request, tmp_path_factory):
    """(the pruning processor vLLM builds with the plugin, vLLM's own, the model's spec)."""
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    name, build, architecture, runs, spatial = request.param
    plugin.register()
    path = build(tmp_path_factory.mktemp(name) / "model")
    config = ModelConfig(
        model=str(path), dtype="float32", max_model_len=8192, limit_mm_per_prompt={"image": 1}
    )
    pruning = MULTIMODAL_REGISTRY.create_processor(config)
    own = pruning.vllm_processor(pruning.info, pruning.dummy_inputs)
    return pruning, own, architecture, runs, spatial


def apply(processor, fields: dict):
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    tokenizer = processor.info.get_tokenizer()
    text = processor.dummy_inputs.get_dummy_text({"image": 1}) + " what color"
    image = Image.new("RGB", SIZE, (200, 30, 30))
    inputs = ProcessorInputs(
        prompt=tokenizer.encode(text, add_special_tokens=False),
        mm_data_items=processor.info.parse_mm_data({"image": [image]}),
        hf_processor_mm_kwargs=fields,
    )
    return processor.apply(inputs, TimingContext())


def embed_mask(processed) -> tuple[list[int], list[bool]]:
    ids = processed["prompt_token_ids"]
    place = processed["mm_placeholders"]["image"][0]
    mask = [False] * len(ids)
    embeds = [True] * place.length if place.is_embed is None else place.is_embed.tolist()
    for i, embed in enumerate(embeds):
        mask[place.offset + i] = bool(embed)
    return ids, mask


def test_the_start_up_decision_holds_and_the_layout_is_read(processors):
    pruning, own, architecture, runs, _ = processors
    assert generic.DECISIONS[architecture].refusal is None
    assert isinstance(pruning, generic.GenericPruneProcessorMixin)
    assert not isinstance(own, generic.GenericPruneProcessorMixin)
    for fields in ({}, {"prune": "none"}):
        ours, theirs = apply(pruning, fields), apply(own, {})
        assert ours["prompt_token_ids"] == theirs["prompt_token_ids"]
    ids, mask = embed_mask(apply(own, {}))
    assert layout.runs_of(mask) == list(runs)


def test_a_pruned_placeholder_shrinks_each_run_and_keeps_every_structure_token(processors):
    pruning, own, architecture, runs, _ = processors
    full, mask = embed_mask(apply(own, {}))
    pruned, pruned_mask = embed_mask(apply(pruning, {"prune": "random", "prune_keep": 10}))
    parts = layout.parts_of(list(runs), family_of(architecture).grid)
    keeps = layout.part_keeps(parts, 10)
    assert pruned == layout.shrink(full, mask, layout.run_keeps(parts, keeps))
    assert sum(pruned_mask) == 10
    structure = [t for t, e in zip(full, mask, strict=True) if not e]
    assert [t for t, e in zip(pruned, pruned_mask, strict=True) if not e] == structure


def test_spatial_methods_run_only_where_the_grid_is_declared(processors):
    from vllm.exceptions import VLLMValidationError

    pruning, _, _, runs, spatial = processors
    if spatial:
        _, mask = embed_mask(apply(pruning, {"prune": "pooling", "prune_ratio": 0.75}))
        assert sum(mask) == round(sum(runs) * 0.25)
        return
    with pytest.raises(VLLMValidationError) as caught:
        apply(pruning, {"prune": "pooling", "prune_ratio": 0.75})
    assert caught.value.parameter == "prune"
    assert "token grid" in str(caught.value)
    _, mask = embed_mask(apply(pruning, {"prune": "divprune", "prune_ratio": 0.75}))
    assert sum(mask) == round(sum(runs) * 0.25)
