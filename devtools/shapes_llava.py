"""``shapes-llava``: the definition of the demo model (``vllm_prune.demo``), a small
LLaVA-1.5 trained in this repo on ``shapes``, shipped as package data and served by
``make serve`` when no model is named.

It has LLaVA-1.5's geometry (336 px images, 14 px patches, 576 visual tokens on a
24 x 24 grid, a CLIP tower, a two-layer GELU projector, a Llama LLM) at a size a
2-core CPU trains in under 30 minutes (``python -m devtools.train_shapes``). It
answers the synthetic ``shapes`` questions (existence, colour, count, location) well
above chance (``tests/test_shapes_model.py`` holds the floors), so pruning's effect on
accuracy can be measured here with real weights.

The folder is written in the checkpoint layout vLLM 0.32 loads (``checkpoint_name``:
transformers 5 names LLaVA weights differently). Text is a lower-cased word-level
vocabulary: the ``shapes`` questions, the short-answer instruction and the answers.
"""

from __future__ import annotations

import re
from pathlib import Path

from devtools.tiny_llava import (
    CHAT_TEMPLATE,
    IMAGE_SIZE,
    IMAGE_TOKEN,
    PATCH_SIZE,
    SPECIAL_TOKENS,
    WORDS,
    checkpoint_name,
    llava_processor,
    word_tokenizer,
)
from vllm_prune.demo import FOLDER, NAME, WEIGHTS
from vllm_prune.eval import shapes
from vllm_prune.eval.sample import SHORT_ANSWER

__all__ = ["FOLDER", "NAME", "WEIGHTS", "build_config", "build_tokenizer", "load", "save"]
# The tower's last layer feeds the projector: no unused layer to train or ship.
VISION_FEATURE_LAYER = -1


def vocabulary() -> list[str]:
    """The demo's words plus every word the ``shapes`` questions and answers use."""
    texts = [SHORT_ANSWER, *shapes.VOCABULARY, "How many objects are there?", "object"]
    for shape in shapes.SHAPES:
        for color in shapes.COLORS:
            texts += [
                f"Is there a {color} {shape}?",
                f"What color is the {shape}?",
                f"How many {shape}s are there?",
                f"Where is the {color} {shape}?",
            ]
    demo = list(dict.fromkeys(word.lower() for word in WORDS))  # the tokenizer lower-cases
    found = {word for text in texts for word in re.findall(r"\w+|[^\w\s]+", text.lower())}
    return demo + sorted(found - set(demo))


def build_tokenizer():  # type: ignore[no-untyped-def]
    tokenizer = word_tokenizer(
        SPECIAL_TOKENS, vocabulary(), extra_special=[IMAGE_TOKEN], lowercase=True
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(vocab: dict[str, int]):  # type: ignore[no-untyped-def]
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=128,
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # the CPU attention kernels' minimum
        max_position_embeddings=2048,
        rope_theta=1e6,  # slow rotations: patches 600 tokens back still match by content
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab[IMAGE_TOKEN],
        vision_feature_layer=VISION_FEATURE_LAYER,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "float32"
    return config


def build_processor(tokenizer):  # type: ignore[no-untyped-def]
    return llava_processor(tokenizer)


def save(model, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Config, tokenizer, processor and weights of a trained ``LlavaForConditionalGeneration``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    build_processor(build_tokenizer()).save_pretrained(path)
    tensors = {
        checkpoint_name(name): tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
    }
    save_file(tensors, str(path / WEIGHTS))
    return path


def load(path: Path = FOLDER):  # type: ignore[no-untyped-def]
    """A saved checkpoint as transformers' ``LlavaForConditionalGeneration`` (the training
    code's model), its weight names mapped back from the layout vLLM loads."""
    from safetensors.torch import load_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    path = Path(path)
    model = LlavaForConditionalGeneration(LlavaConfig.from_pretrained(path))
    names = {checkpoint_name(name): name for name in model.state_dict()}
    tensors = load_file(str(path / WEIGHTS))
    model.load_state_dict({names[key]: tensor for key, tensor in tensors.items()}, strict=True)
    return model.eval()
