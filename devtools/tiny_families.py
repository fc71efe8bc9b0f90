"""Tiny Qwen2-VL, Qwen2.5-VL and LLaVA-NeXT checkpoints built offline, seeded random weights.

Like the tiny LLaVA (``tiny_llava``): the real geometry of each family
(14 px patches, Qwen's 2 x 2 merger and M-RoPE, LLaVA-NeXT's anyres crops and
newline tokens) around a 2-layer LLM, written in the layout vLLM 0.32 loads.
Used by the tests, and by anyone who wants to try a family without a download.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_llava import WORDS, word_tokenizer, write_random_weights

QWEN_SPECIAL = [
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{{ message['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
)
# Qwen2-VL-7B's M-RoPE split of the rotary half-dimension, scaled to head_dim 32.
MROPE_SECTION = [4, 6, 6]


def build_tiny_qwen2_vl(path: Path, version: str = "2") -> Path:
    """A tiny Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``) checkpoint at ``path``."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(
        QWEN_SPECIAL, ["user", "assistant", "system", *WORDS], extra_special=QWEN_SPECIAL[4:]
    )
    vocab = tokenizer.get_vocab()
    text = dict(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": MROPE_SECTION},
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    ids = dict(
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    if version == "2":
        vision = dict(depth=2, embed_dim=32, hidden_size=128, num_heads=2, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls, processor_cls = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        config.architectures = ["Qwen2VLForConditionalGeneration"]
    elif version == "2.5":
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=128,
            fullatt_block_indexes=[1],
            window_size=112,
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls, processor_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
        config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    else:
        raise ValueError(f"version must be '2' or '2.5', got {version!r}")
    config.dtype = "float32"
    # Up to 1344 x 1344 px (2304 tokens after the merger), as the figures need.
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=1344 * 1344)
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    config.save_pretrained(path)
    processor.save_pretrained(path)
    write_random_weights(model_cls, config, path / "model.safetensors")
    return path


# LLaVA-NeXT's anyres resolutions (llava-v1.6): 2 x 1, 1 x 2, 2 x 2, 3 x 1, 1 x 3 crops of 336.
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def build_tiny_llava_next(path: Path) -> Path:
    """A tiny LLaVA-NeXT (v1.6 geometry: 336 px crops, anyres pinpoints, newline tokens)."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    from .tiny_llava import (
        CHAT_TEMPLATE,
        IMAGE_SIZE,
        IMAGE_TOKEN,
        PATCH_SIZE,
        SPECIAL_TOKENS,
        checkpoint_name,
        tiny_clip_config,
        tiny_llama_config,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(SPECIAL_TOKENS, WORDS, extra_special=[IMAGE_TOKEN])
    tokenizer.chat_template = CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = tiny_clip_config()
    text = tiny_llama_config(vocab, max_positions=8192)
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab[IMAGE_TOKEN],
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config.architectures = ["LlavaNextForConditionalGeneration"]
    config.dtype = "float32"
    config.save_pretrained(path)
    processor.save_pretrained(path)
    write_random_weights(
        LlavaNextForConditionalGeneration, config, path / "model.safetensors", checkpoint_name
    )
    return path
