"""Tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA-NeXT checkpoints built offline, seeded random weights.

Like the tiny LLaVA (``tiny_llava``): the real geometry of each family
(14 px patches, Qwen's 2 x 2 merger and M-RoPE, LLaVA-NeXT's anyres crops and
newline tokens) around a 2-layer LLM, written in the layout vLLM 0.32 loads.
Used by the tests, and by anyone who wants to try a family without a download.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_llava import TINY_LLM, WORDS, save_checkpoint, word_tokenizer, write_random_weights

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


def qwen_tokenizer():  # type: ignore[no-untyped-def]
    """The word tokenizer with Qwen's special tokens and chat template."""
    tokenizer = word_tokenizer(
        QWEN_SPECIAL, ["user", "assistant", "system", *WORDS], extra_special=QWEN_SPECIAL[4:]
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def save_qwen(  # type: ignore[no-untyped-def]
    path: Path, config, processor_cls, image_processor, video_processor, tokenizer, model_cls
) -> None:
    """Config, processor (with the chat template) and seeded random weights at ``path``."""
    processor = processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    config.save_pretrained(path)
    processor.save_pretrained(path)
    write_random_weights(model_cls, config, path / "model.safetensors")


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
    tokenizer = qwen_tokenizer()
    vocab = tokenizer.get_vocab()
    text = dict(
        vocab_size=len(vocab),
        **TINY_LLM,
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
    video = Qwen2VLVideoProcessor()
    save_qwen(path, config, processor_cls, image_processor, video, tokenizer, model_cls)
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
    save_checkpoint(path, config, processor, "LlavaNextForConditionalGeneration")
    write_random_weights(
        LlavaNextForConditionalGeneration, config, path / "model.safetensors", checkpoint_name
    )
    return path


# Qwen3-VL-8B's interleaved M-RoPE split (24, 20, 20 of 64), scaled to head_dim 32.
QWEN3_MROPE_SECTION = [6, 5, 5]
# Qwen3.5's (11, 11, 10 of 32: a quarter of head_dim 256 rotates), scaled to head_dim 64.
QWEN3_5_MROPE_SECTION = [3, 3, 2]
QWEN3_VARIANTS = ("vl", "vl-moe", "3.5", "3.5-moe")


def build_tiny_qwen3(path: Path, variant: str = "vl") -> Path:
    """A tiny Qwen3-generation checkpoint: 16 px patches and the 2 x 2 merger, interleaved
    M-RoPE, around a 2-layer LLM.

    ``vl``: Qwen3-VL, DeepStack from two of the tower's three layers into the first two
    LLM layers; ``vl-moe``: the same with a 4-expert MoE LLM; ``3.5`` / ``3.5-moe``:
    Qwen3.5's hybrid LLM (a linear-attention layer, then full attention; vLLM's CPU
    build runs its linear attention in bfloat16 with 128-wide heads), no DeepStack.
    """
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    if variant not in QWEN3_VARIANTS:
        raise ValueError(f"variant must be one of {QWEN3_VARIANTS}, got {variant!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer()
    vocab = tokenizer.get_vocab()
    text: dict = dict(
        vocab_size=len(vocab),
        **TINY_LLM,
        head_dim=32,
        max_position_embeddings=8192,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": QWEN3_MROPE_SECTION,
            "mrope_interleaved": True,
        },
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision: dict = dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=128,
        num_position_embeddings=2304,  # a 48 x 48 table, interpolated to each image
    )
    if variant.endswith("moe"):
        # norm_topk_prob: in the released checkpoints' configs; vLLM reads it.
        text.update(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, norm_topk_prob=True
        )
    if variant.startswith("vl"):
        vision["deepstack_visual_indexes"] = [0, 1]
        name = "Qwen3VLMoe" if variant == "vl-moe" else "Qwen3VL"
        dtype = "float32"
    else:
        text.update(
            head_dim=64,
            layer_types=["linear_attention", "full_attention"],
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            linear_num_key_heads=2,  # two: one per tensor-parallel rank
            linear_num_value_heads=2,
        )
        text["rope_parameters"].update(
            mrope_section=QWEN3_5_MROPE_SECTION, partial_rotary_factor=0.25
        )
        if variant == "3.5-moe":
            text.update(shared_expert_intermediate_size=64)
        name = "Qwen3_5Moe" if variant == "3.5-moe" else "Qwen3_5"
        dtype = "bfloat16"
    config = getattr(transformers, f"{name}Config")(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    config.architectures = [f"{name}ForConditionalGeneration"]
    config.dtype = dtype
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, min_pixels=64 * 64, max_pixels=1344 * 1344
    )
    model_cls = getattr(transformers, f"{name}ForConditionalGeneration")
    video = Qwen3VLVideoProcessor()
    save_qwen(path, config, Qwen3VLProcessor, image_processor, video, tokenizer, model_cls)
    if variant == "vl-moe":
        _transpose_fused_experts(path / "model.safetensors")
    return path


def _transpose_fused_experts(file: Path) -> None:
    """Qwen3-VL-MoE's released checkpoints store each layer's fused experts as [E, in, out]
    (what vLLM loads); transformers holds them as [E, out, in]."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    for name, tensor in tensors.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            tensors[name] = tensor.transpose(1, 2).contiguous()
    save_file(tensors, str(file))
