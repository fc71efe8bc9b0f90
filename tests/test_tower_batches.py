"""A call's images cut into the tower's batches (``tower_batches.split_batch``) are the
inputs vLLM's runner would make for those images alone.

The processors are vLLM's own (with the plugin), on tiny checkpoints built offline; the
runner's batching is vLLM's ``group_and_batch_mm_kwargs``. Qwen2.5-VL's pixels are one
flat field cut by each image's grid, InternVL's by each image's tile count: a split that
cut them wrongly would hand the tower another image's patches.
"""

from __future__ import annotations

import pytest
import torch

from devtools.tiny_families import build_tiny_qwen2_vl
from devtools.tiny_internvl_gemma import build_tiny_internvl
from vllm_prune.integration import plugin
from vllm_prune.integration.tower_batches import split_batch

SIZES = [(448, 448), (896, 448), (336, 672)]  # three images of different token counts


def noise_image(seed: int, size: tuple[int, int]):
    from PIL import Image

    pixels = torch.randint(
        0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed)
    )
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def processed(processor, images):
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    tokenizer = processor.info.get_tokenizer()
    text = processor.dummy_inputs.get_dummy_text({"image": len(images)}) + " what"
    inputs = ProcessorInputs(
        prompt=tokenizer.encode(text, add_special_tokens=False),
        mm_data_items=processor.info.parse_mm_data({"image": images}),
        hf_processor_mm_kwargs={},
    )
    return processor.apply(inputs, TimingContext())["mm_kwargs"]["image"]


def batched(items) -> dict:
    """What vLLM's runner hands ``embed_multimodal`` for these items."""
    from vllm.multimodal.utils import group_and_batch_mm_kwargs

    ((_, _, kwargs),) = group_and_batch_mm_kwargs([("image", item) for item in items])
    return dict(kwargs)


def assert_same(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        mine = ours[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(mine, value), key
        else:
            assert len(mine) == len(value), key
            assert all(torch.equal(a, b) for a, b in zip(mine, value, strict=True)), key


@pytest.mark.parametrize(
    "build",
    [lambda p: build_tiny_qwen2_vl(p, "2.5"), build_tiny_internvl],
    ids=["qwen2.5-vl", "internvl"],
)
def test_a_split_call_is_what_the_runner_makes_for_each_batch_alone(build, tmp_path):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    plugin.register()
    path = build(tmp_path / "model")
    config = ModelConfig(
        model=str(path), dtype="float32", max_model_len=8192, limit_mm_per_prompt={"image": 3}
    )
    processor = MULTIMODAL_REGISTRY.create_processor(config)
    images = [noise_image(seed, size) for seed, size in enumerate(SIZES)]
    whole = batched(processed(processor, images))

    first, second = split_batch(processor, whole, [(0, 2), (2, 3)])

    assert_same(first, batched(processed(processor, images[:2])))
    assert_same(second, batched(processed(processor, images[2:])))
