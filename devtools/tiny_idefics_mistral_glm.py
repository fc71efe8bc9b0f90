"""Tiny Idefics3, Mistral3 (Pixtral), LLaVA-OneVision and GLM-4.1V checkpoints built offline.

Like the tiny LLaVA (``tiny_llava``) and the Qwen / LLaVA-NeXT families
(``tiny_families``): each family's own image geometry and prompt layout (Idefics3's
tiles with ``<row_i_col_j>`` tags and a global image, Pixtral's ``[IMG_BREAK]`` rows,
LLaVA-OneVision's anyres crops, GLM-4.1V's 2 x 2 merger and M-RoPE) around a 2-layer
LLM with a word-level vocabulary, written in the layout vLLM 0.32 loads, so plain vLLM
serves each folder on a CPU. The weights are seeded random noise: the models exist to
exercise the image paths end to end, not to answer.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_llava import TINY_LLM, WORDS, save_checkpoint, word_tokenizer, write_random_weights

# ---------------------------------------------------------------- Idefics3

IDEFICS3_TILE = 224  # px per tile: 16 x 16 patches of 14 px
IDEFICS3_PATCH = 14
IDEFICS3_SCALE = 2  # pixel shuffle: 16 x 16 patches -> 8 x 8 = 64 tokens per tile
IDEFICS3_MAX_TILES = 2  # per side: images are rescaled to a 448 px longest edge
IDEFICS3_ROW_COL = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
IDEFICS3_SPECIAL = [
    "<unk>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<pad>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *IDEFICS3_ROW_COL,
]
# Idefics3's template: "<|im_start|>User:<image>...<end_of_utterance>\nAssistant:".
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def newline_token(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Make ``"\\n"`` a token of its own: the whitespace pre-tokenizer would drop it, and
    Idefics3's tile rows (like the real tokenizers') are separated by newlines."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken("\n", normalized=False, special=False)])


def tiny_text_config(
    vocab: dict[str, int], bos: str, eos: str, pad: str, **extra: object
) -> dict[str, object]:
    """A 2-layer Llama / Mistral / Qwen2 LLM config with grouped-query attention;
    head_dim 32, the CPU attention kernels' minimum; untied head (no shared tensors
    to save)."""
    return dict(
        vocab_size=len(vocab),
        **TINY_LLM,
        head_dim=32,
        max_position_embeddings=8192,
        bos_token_id=vocab[bos],
        eos_token_id=vocab[eos],
        pad_token_id=vocab[pad],
        tie_word_embeddings=False,
        **extra,
    )


def build_tiny_idefics3(path: Path) -> Path:
    """A tiny Idefics3: 224 px tiles of 14 px patches, pixel-shuffled 2 x 2 into 64 tokens
    per tile, images rescaled to a 448 px longest edge and split into up to 2 x 2 tiles
    plus a global image (as SmolVLM does, small images are upscaled too: the tile grid
    follows the aspect ratio; ``do_image_splitting=False`` gives the global image alone).
    """
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(
        IDEFICS3_SPECIAL, ["User", "Assistant", *WORDS], extra_special=IDEFICS3_SPECIAL[4:]
    )
    newline_token(tokenizer)
    tokenizer.chat_template = IDEFICS3_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    tokens_per_tile = (IDEFICS3_TILE // IDEFICS3_PATCH) ** 2 // IDEFICS3_SCALE**2
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": IDEFICS3_MAX_TILES * IDEFICS3_TILE},
        max_image_size={"longest_edge": IDEFICS3_TILE},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=tokens_per_tile,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IDEFICS3_TILE,
        patch_size=IDEFICS3_PATCH,
    )
    text = tiny_text_config(vocab, "<|im_start|>", "<end_of_utterance>", "<pad>")
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=IDEFICS3_SCALE,
        image_token_id=vocab["<image>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=False,
    )
    save_checkpoint(path, config, processor, "Idefics3ForConditionalGeneration")
    write_random_weights(Idefics3ForConditionalGeneration, config, path / "model.safetensors")
    return path


# ---------------------------------------------------------------- Mistral3 (Pixtral)

PIXTRAL_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
PIXTRAL_EXTRA = ["[INST]", "[/INST]"]
PIXTRAL_PATCH = 14  # Mistral-Small-3.1's: 14 px patches, 2 x 2 merged into one token
PIXTRAL_MERGE = 2
PIXTRAL_LONGEST_EDGE = 448  # at most 16 x 16 tokens (+ 16 row breaks) per image
# Mistral's template, content as a list: images become [IMG], text follows.
MISTRAL3_CHAT_TEMPLATE = (
    "<s>{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}[IMG]{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} [/INST]"
    "{% else %}{{ message['content'] }}</s>{% endif %}"
    "{% endfor %}"
)


def build_tiny_mistral3(path: Path) -> Path:
    """A tiny Mistral3 in transformers' layout (Mistral-Small-3.1 geometry: a Pixtral
    tower with 14 px patches and 2D RoPE, a 2 x 2 patch merger), images downscaled to
    a 448 px longest edge: each row of ``[IMG]`` tokens ends in ``[IMG_BREAK]``, the
    last in ``[IMG_END]``."""
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        PixtralImageProcessor,
        PixtralProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(
        PIXTRAL_SPECIAL + PIXTRAL_EXTRA, WORDS, extra_special=PIXTRAL_SPECIAL[4:] + PIXTRAL_EXTRA
    )
    tokenizer.chat_template = MISTRAL3_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    image_processor = PixtralImageProcessor(
        size={"longest_edge": PIXTRAL_LONGEST_EDGE},
        patch_size={"height": PIXTRAL_PATCH, "width": PIXTRAL_PATCH},
    )
    processor = PixtralProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PIXTRAL_PATCH,
        spatial_merge_size=PIXTRAL_MERGE,
        chat_template=MISTRAL3_CHAT_TEMPLATE,
    )
    vision = dict(
        model_type="pixtral",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=32,
        image_size=PIXTRAL_LONGEST_EDGE,
        patch_size=PIXTRAL_PATCH,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    text = tiny_text_config(vocab, "<s>", "</s>", "<pad>", model_type="mistral")
    config = Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab["[IMG]"],
        spatial_merge_size=PIXTRAL_MERGE,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    save_checkpoint(path, config, processor, "Mistral3ForConditionalGeneration")
    write_random_weights(Mistral3ForConditionalGeneration, config, path / "model.safetensors")
    return path


# ---------------------------------------------------------------- LLaVA-OneVision

ONEVISION_SPECIAL = [
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<image>",
    "<video>",
]
# Qwen2's template, as LLaVA-OneVision's (its LLM is a Qwen2).
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ONEVISION_CROP = 112  # px per crop: 8 x 8 patches of 14 px, 64 tokens
ONEVISION_PATCH = 14
# anyres crops: up to 2 x 2 of 112 px (the released grid goes to 6 x 6 of 384 px).
ONEVISION_PINPOINTS = [
    [ONEVISION_CROP * i, ONEVISION_CROP * j] for i in range(1, 3) for j in range(1, 3)
]


def onevision_checkpoint_name(name: str) -> str:
    """transformers 5 keeps the SigLIP tower's modules at ``model.vision_tower.*``
    (``embeddings``, ``encoder``, ...); vLLM's SigLIP wraps them in ``vision_model``."""
    tower = "model.vision_tower."
    if name.startswith(tower) and not name.startswith(tower + "vision_model."):
        return tower + "vision_model." + name[len(tower) :]
    return name


def build_tiny_llava_onevision(path: Path) -> Path:
    """A tiny LLaVA-OneVision: a 2-layer SigLIP tower on 112 px crops (64 tokens each),
    anyres up to 2 x 2 crops plus the base image, unpadded, one ``image_newline`` per
    row of the crops' grid, around a 2-layer Qwen2 LLM."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(
        ONEVISION_SPECIAL,
        ["user", "assistant", "system", *WORDS],
        extra_special=ONEVISION_SPECIAL[4:],
    )
    newline_token(tokenizer)
    tokenizer.chat_template = ONEVISION_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    crop = {"height": ONEVISION_CROP, "width": ONEVISION_CROP}
    image_processor = LlavaOnevisionImageProcessor(
        size=crop, image_grid_pinpoints=ONEVISION_PINPOINTS
    )
    video_processor = LlavaOnevisionVideoProcessor(size=crop)
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        num_image_tokens=(ONEVISION_CROP // ONEVISION_PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE,
        vision_aspect_ratio="anyres_max_9",  # vLLM 0.32 assumes the 9
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=ONEVISION_CROP,
        patch_size=ONEVISION_PATCH,
    )
    text = tiny_text_config(
        vocab, "<|im_start|>", "<|im_end|>", "<|endoftext|>", model_type="qwen2"
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab["<image>"],
        video_token_index=vocab["<video>"],
        image_grid_pinpoints=ONEVISION_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    save_checkpoint(path, config, processor, "LlavaOnevisionForConditionalGeneration")
    write_random_weights(
        LlavaOnevisionForConditionalGeneration,
        config,
        path / "model.safetensors",
        onevision_checkpoint_name,
    )
    return path


# ---------------------------------------------------------------- GLM-4.1V

GLM4V_SPECIAL = [
    "<unk>",
    "[gMASK]",
    "<|endoftext|>",
    "<pad>",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|video|>",
]
# GLM-4.1V's template: "[gMASK]<sop><|user|>\n...<|assistant|>\n".
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
GLM4V_FACTOR = 28  # 14 px patches, 2 x 2 merged into one token
# At most 256 tokens per image: the processor bounds 2 frames' pixels (an image is
# repeated over the tower's temporal patch of 2) by ``size["longest_edge"]``.
GLM4V_MAX_PIXELS = 2 * 256 * GLM4V_FACTOR**2
GLM4V_MIN_PIXELS = 2 * 4 * GLM4V_FACTOR**2
# GLM-4.1V's M-RoPE split (8, 12, 12 of the 32 rotary pairs of a 128-wide head, half
# of which rotates), scaled to head_dim 32: 8 rotary pairs.
GLM4V_MROPE_SECTION = [2, 3, 3]


def glm4v_text_side() -> tuple[object, dict[str, object], dict[str, int]]:
    """GLM-4.1V's processor (word tokenizer, template, image and video processors up to
    256 tokens per image), its 2-layer GLM-4 LLM config with M-RoPE, and the config's
    image and video token ids: what GLM-4.1V and GLM-OCR share."""
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    tokenizer = word_tokenizer(
        GLM4V_SPECIAL, ["system", "user", "assistant", *WORDS], extra_special=GLM4V_SPECIAL[4:]
    )
    newline_token(tokenizer)
    tokenizer.chat_template = GLM4V_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    pixels = {"shortest_edge": GLM4V_MIN_PIXELS, "longest_edge": GLM4V_MAX_PIXELS}
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(size=pixels),
        tokenizer=tokenizer,
        video_processor=Glm4vVideoProcessor(size=pixels),
        chat_template=GLM4V_CHAT_TEMPLATE,
    )
    text = dict(
        vocab_size=len(vocab),
        **TINY_LLM,  # head_dim 32 = 128 / 4 heads (GLM-4 has no head_dim setting)
        max_position_embeddings=8192,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": GLM4V_MROPE_SECTION,
        },
        pad_token_id=vocab["<pad>"],
    )
    token_ids = dict(
        image_token_id=vocab["<|image|>"],
        video_token_id=vocab["<|video|>"],
        image_start_token_id=vocab["<|begin_of_image|>"],
        image_end_token_id=vocab["<|end_of_image|>"],
        video_start_token_id=vocab["<|begin_of_video|>"],
        video_end_token_id=vocab["<|end_of_video|>"],
    )
    return processor, text, token_ids


def build_tiny_glm4v(path: Path) -> Path:
    """A tiny GLM-4.1V: a 2-layer tower on 14 px patches with the 2 x 2 merger (Qwen2-VL's
    geometry, up to 256 tokens per image between ``<|begin_of_image|>`` and
    ``<|end_of_image|>``) around a 2-layer GLM-4 LLM with M-RoPE positions."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor, text, token_ids = glm4v_text_side()
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        image_size=336,  # a 24 x 24 position table, interpolated to each image
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=128,
    )
    config = Glm4vConfig(text_config=text, vision_config=vision, **token_ids)
    save_checkpoint(path, config, processor, "Glm4vForConditionalGeneration")
    write_random_weights(Glm4vForConditionalGeneration, config, path / "model.safetensors")
    return path
