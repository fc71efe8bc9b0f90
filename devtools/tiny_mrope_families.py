"""Tiny PaddleOCR-VL, GLM-OCR and Qwen2.5-Omni (thinker) checkpoints built offline.

Three more M-RoPE families, like GLM-4.1V and the Qwen VLs (``tiny_idefics_mistral_glm``,
``tiny_families``): each keeps its family's tower, 2 x 2 merger, placeholder and M-RoPE
positions around a 2-layer LLM with a word-level vocabulary, images bounded to 256 tokens
(a 896 x 448 image gives 11 x 22), written in the layout vLLM 0.32 loads, so plain vLLM
serves each folder on a CPU. PaddleOCR-VL: a NaViT SigLIP tower on 14 px patches and an
ERNIE-4.5 LLM; GLM-OCR: GLM-4.1V's processor and placeholder with its own tower;
Qwen2.5-Omni: only the thinker is written (vLLM serves nothing else), with a tiny audio
tower, since its processor needs the audio feature extractor even for images. Serve it
with ``--limit-mm-per-prompt '{"image": 2, "audio": 0, "video": 0}'``, which keeps audio
and video out of vLLM's start-up profiling (``{"image": 2}`` alone serves too). The
weights are seeded random noise: the models exist to exercise the image paths end to end.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_idefics_mistral_glm import glm4v_text_side, newline_token, tiny_text_config
from .tiny_llava import WORDS, save_checkpoint, word_tokenizer, write_random_weights

FACTOR = 28  # 14 px patches, 2 x 2 merged into one token
MAX_PIXELS = 256 * FACTOR**2  # at most 256 tokens per image
MIN_PIXELS = 4 * FACTOR**2
# Qwen2-VL-7B's M-RoPE split of the rotary half-dimension, scaled to head_dim 32.
MROPE_SECTION = [4, 6, 6]


def named_tokens(tokenizer, **tokens: str) -> None:  # type: ignore[no-untyped-def]
    """Name special tokens as the real tokenizers do (``tokenizer.image_token``...): the
    processors read them, and ``save_pretrained`` keeps the names."""
    tokenizer._set_model_specific_special_tokens(tokens)


# ---------------------------------------------------------------- PaddleOCR-VL

PADDLE_SPECIAL = [
    "<unk>",
    "<|begin_of_sentence|>",
    "<|end_of_sentence|>",
    "<pad>",
    "<|IMAGE_START|>",
    "<|IMAGE_END|>",
    "<|IMAGE_PLACEHOLDER|>",
    "<|video_pad|>",
]
# PaddleOCR-VL's template: "<|begin_of_sentence|>User: ...\nAssistant: ".
PADDLE_CHAT_TEMPLATE = (
    "<|begin_of_sentence|>{% for message in messages %}"
    "{% if message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}<|end_of_sentence|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def paddle_checkpoint_name(name: str) -> str:
    """transformers 5 nests everything under ``model.``; vLLM loads the released layout:
    ``visual.``, ``mlp_AR.`` (the projector) and the ERNIE LLM at ``model.``."""
    for old, new in {
        "model.visual.": "visual.",
        "model.projector.": "mlp_AR.",
        "model.language_model.": "model.",
    }.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def build_tiny_paddleocr_vl(path: Path) -> Path:
    """A tiny PaddleOCR-VL: a 2-layer SigLIP tower on 14 px patches at each image's own
    resolution (up to 256 tokens after the 2 x 2 projector), one run of
    ``<|IMAGE_PLACEHOLDER|>`` between ``<|IMAGE_START|>`` and ``<|IMAGE_END|>``, around a
    2-layer ERNIE-4.5 LLM with M-RoPE positions."""
    from transformers import (
        PaddleOCRVLConfig,
        PaddleOCRVLForConditionalGeneration,
        PaddleOCRVLImageProcessor,
        PaddleOCRVLProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(
        PADDLE_SPECIAL, ["User", "Assistant", *WORDS], extra_special=PADDLE_SPECIAL[4:]
    )
    newline_token(tokenizer)
    named_tokens(tokenizer, image_token="<|IMAGE_PLACEHOLDER|>")
    tokenizer.chat_template = PADDLE_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    image_processor = PaddleOCRVLImageProcessor(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    )
    processor = PaddleOCRVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=PADDLE_CHAT_TEMPLATE
    )
    text = tiny_text_config(
        vocab,
        "<|begin_of_sentence|>",
        "<|end_of_sentence|>",
        "<pad>",
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 500000.0,
            "mrope_section": MROPE_SECTION,
        },
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=384,  # a 27 x 27 position table, interpolated to each image
        patch_size=14,
        spatial_merge_size=2,
    )
    config = PaddleOCRVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab["<|IMAGE_PLACEHOLDER|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|IMAGE_START|>"],
        vision_end_token_id=vocab["<|IMAGE_END|>"],
        tie_word_embeddings=False,
    )
    save_checkpoint(path, config, processor, "PaddleOCRVLForConditionalGeneration")
    write_random_weights(
        PaddleOCRVLForConditionalGeneration,
        config,
        path / "model.safetensors",
        paddle_checkpoint_name,
    )
    return path


# ---------------------------------------------------------------- GLM-OCR


def build_tiny_glm_ocr(path: Path) -> Path:
    """A tiny GLM-OCR: GLM-4.1V's processor, tokens and template (``build_tiny_glm4v``),
    GLM-OCR's own 2-layer tower (q/k norms, no position table) with the 2 x 2 merger,
    up to 256 tokens per image between ``<|begin_of_image|>`` and ``<|end_of_image|>``,
    around a 2-layer GLM LLM with M-RoPE positions."""
    from transformers import GlmOcrConfig, GlmOcrForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor, text, token_ids = glm4v_text_side()
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=128,
    )
    config = GlmOcrConfig(text_config=text, vision_config=vision, **token_ids)
    save_checkpoint(path, config, processor, "GlmOcrForConditionalGeneration")
    write_random_weights(GlmOcrForConditionalGeneration, config, path / "model.safetensors")
    return path


# ---------------------------------------------------------------- Qwen2.5-Omni (thinker)

OMNI_SPECIAL = [
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|AUDIO|>",
]
OMNI_NAMED = dict(
    vision_bos_token="<|vision_bos|>",
    vision_eos_token="<|vision_eos|>",
    image_token="<|IMAGE|>",
    video_token="<|VIDEO|>",
    audio_bos_token="<|audio_bos|>",
    audio_eos_token="<|audio_eos|>",
    audio_token="<|AUDIO|>",
)
# Qwen2.5-Omni's template, content as a list: each image is
# "<|vision_bos|><|IMAGE|><|vision_eos|>", text follows.
OMNI_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif part['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def omni_checkpoint_name(name: str) -> str:
    """The released checkpoints hold the thinker under ``thinker.`` (vLLM drops the
    talker and token2wav)."""
    return "thinker." + name


def build_tiny_qwen2_5_omni_thinker(path: Path) -> Path:
    """A tiny Qwen2.5-Omni thinker: Qwen2.5-VL's windowed tower (2 layers, 14 px patches,
    the 2 x 2 merger, up to 256 tokens per image between ``<|vision_bos|>`` and
    ``<|vision_eos|>``), a 1-layer audio tower, a 2-layer Qwen2 LLM with M-RoPE; the
    config is a whole ``Qwen2_5OmniConfig`` with audio output off."""
    from transformers import (
        Qwen2_5OmniConfig,
        Qwen2_5OmniProcessor,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(
        OMNI_SPECIAL, ["user", "assistant", "system", *WORDS], extra_special=OMNI_SPECIAL[4:]
    )
    newline_token(tokenizer)
    named_tokens(tokenizer, **OMNI_NAMED)
    tokenizer.chat_template = OMNI_CHAT_TEMPLATE
    vocab = tokenizer.get_vocab()
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        video_processor=Qwen2VLVideoProcessor(),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
        chat_template=OMNI_CHAT_TEMPLATE,
    )
    text = tiny_text_config(
        vocab,
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": MROPE_SECTION},
    )
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=128,
        fullatt_block_indexes=[1],
        window_size=112,
    )
    audio = dict(
        d_model=64,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=128,
        output_dim=128,
    )
    thinker = dict(
        text_config=text,
        vision_config=vision,
        audio_config=audio,
        image_token_index=vocab["<|IMAGE|>"],
        video_token_index=vocab["<|VIDEO|>"],
        audio_token_index=vocab["<|AUDIO|>"],
        audio_start_token_id=vocab["<|audio_bos|>"],
        audio_end_token_id=vocab["<|audio_eos|>"],
        user_token_id=vocab["user"],
    )
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    save_checkpoint(path, config, processor, "Qwen2_5OmniForConditionalGeneration")
    thinker_config = config.thinker_config
    thinker_config.dtype = "float32"
    write_random_weights(
        Qwen2_5OmniThinkerForConditionalGeneration,
        thinker_config,
        path / "model.safetensors",
        omni_checkpoint_name,
    )
    return path


BUILDERS = {
    "paddleocr-vl": build_tiny_paddleocr_vl,
    "glm-ocr": build_tiny_glm_ocr,
    "qwen2.5-omni": build_tiny_qwen2_5_omni_thinker,
}

if __name__ == "__main__":
    import sys

    name, folder = sys.argv[1], Path(sys.argv[2])
    print(BUILDERS[name](folder))
