"""The tower methods' readings of InternViT (InternVL's tower), against transformers.

vLLM builds InternVL's tower as Intern-S1's (``interns1_vit``), runs each 448 px tile as
one row of its batch, drops the [CLS] row and merges each 2 x 2 block of patches into
one LLM row (``pixel_shuffle``). The generic adapter reads the [CLS] row, the keys and
the attention received at the layers' attention cores and merges them the same way
(``families.INTERNVIT``, ``signals.tower.merge_patches``). Here vLLM's own tower, with
the weights of a seeded transformers ``InternVLVisionModel`` (eager attention, query/key
norms on, queries scaled so that attention is not near uniform), must give what
transformers' attention maps give, merged by vLLM's own ``pixel_shuffle``.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from transformers import InternVLVisionConfig, InternVLVisionModel

from devtools.vllm_tower import finish_loading, one_rank
from vllm_prune.integration.families import INTERNVIT, internvl_merge
from vllm_prune.methods.base import TOWER_ATTENTION, VISION_ATTENTION, object_layer
from vllm_prune.signals.tower import capture_tower, merge_patches

CONFIG = InternVLVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=112,
    patch_size=14,
    use_qk_norm=True,
    attn_implementation="eager",
)
SIDE = 112 // 14  # 8 x 8 patches per tile, 4 x 4 LLM rows after the pixel shuffle
TILES = (2, 1)  # two images: two tiles, then one


@pytest.fixture(scope="module")
def towers():
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.models.interns1_vit import InternS1VisionModel

    torch.manual_seed(0)
    reference = InternVLVisionModel(CONFIG).eval()
    with torch.no_grad():
        for layer in reference.encoder.layer:
            layer.attention.q_proj.weight.mul_(20.0)
            layer.attention.k_norm.weight.normal_(1.0, 0.3)
    with one_rank():
        with set_current_vllm_config(VllmConfig()):
            ours = InternS1VisionModel(CONFIG).eval()
        ours.load_weights(reference.state_dict().items())
        finish_loading(ours)
        yield ours, reference


def shuffled(values: torch.Tensor) -> torch.Tensor:
    """[T, S, C] patch values (raster order) through vLLM's own pixel shuffle: [T * S / 4,
    4, C], each LLM row's four patches."""
    from vllm.model_executor.models.interns1 import InternS1ForConditionalGeneration

    tiles, _, channels = values.shape
    grid = values.reshape(tiles, SIDE, SIDE, channels)
    out = InternS1ForConditionalGeneration.pixel_shuffle(None, grid, scale_factor=0.5)
    return out.reshape(-1, 4, channels)


def test_readings_of_vllms_tower_equal_transformers_attention(towers):
    ours, reference = towers
    pixels = torch.randn(sum(TILES), 3, 112, 112, generator=torch.Generator().manual_seed(4))
    layers = list(ours.encoder.layer)  # the model's "vision_tower.encoder.layer"
    cores = [functools.reduce(getattr, INTERNVIT.core.split("."), layer) for layer in layers]
    wanted = frozenset({VISION_ATTENTION, TOWER_ATTENTION})
    with torch.no_grad(), capture_tower(cores, len(layers), wanted) as captured:
        features = ours(pixel_values=pixels)
    rows = [tiles * (SIDE // 2) ** 2 for tiles in TILES]
    merge = internvl_merge(SimpleNamespace(downsample_ratio=0.5))
    images = captured.merged_tiles(merge, rows)

    keys: list[torch.Tensor] = []
    last = reference.encoder.layer[-1].attention.k_norm
    handle = last.register_forward_hook(lambda m, i, o: keys.append(o))
    with torch.no_grad():
        out = reference(pixel_values=pixels, output_attentions=True)
    handle.remove()
    torch.testing.assert_close(features, out.last_hidden_state, rtol=1e-4, atol=1e-4)
    maps = out.attentions  # per layer [T, heads, S, S], [CLS] first
    heads = CONFIG.num_attention_heads
    head_keys = keys[0].view(sum(TILES), -1, heads, CONFIG.hidden_size // heads).mean(2)
    expected = {
        "cls_attention": shuffled(maps[-1][:, :, 0, 1:].mean(1)[..., None]).sum((1, 2)),
        "vision_keys": shuffled(head_keys[:, 1:]).mean(1),
        "received_attention": shuffled(maps[-1].mean((1, 2))[:, 1:, None]).sum((1, 2)),
        "object_attention": shuffled(
            maps[object_layer(len(layers)) - 1].mean((1, 2))[:, 1:, None]
        ).sum((1, 2)),
    }
    assert [image["cls_attention"].shape[0] for image in images] == rows
    for name, values in expected.items():
        ours_rows = torch.cat([image[name] for image in images])
        torch.testing.assert_close(ours_rows, values, rtol=1e-4, atol=1e-5, msg=name)
    # The [CLS] attention is far from uniform here, so the test can tell rows apart.
    assert expected["cls_attention"].std() > 0.2 * expected["cls_attention"].mean()


def test_merge_patches_is_vllms_pixel_shuffle():
    values = torch.randn(3, SIDE * SIDE, 5)
    torch.testing.assert_close(merge_patches(values, 2, "sum"), shuffled(values).sum(1))
    torch.testing.assert_close(merge_patches(values, 2, "mean"), shuffled(values).mean(1))
    with pytest.raises(ValueError, match="square grid"):
        merge_patches(torch.randn(1, 63), 2, "sum")
