"""Tiny Llama 4 and Gemma 4 checkpoints, built offline, for the generic adapter's checks.

Like ``tiny_internvl_gemma``: each family's real visual-token geometry around a
2-layer LLM and a 2-layer vision tower, with a word-level tokenizer that carries
the family's structure tokens under the names the processors read:

- Llama 4 (``Llama4ForConditionalGeneration``, Scout/Maverick geometry): 336 px
  tiles, 14 px patches, pixel shuffle 0.5, so 144 ``<|patch|>`` tokens per tile.
  A multi-tile image is ``<|image_start|>``, the tiles' patches separated by
  ``<|tile_x_separator|>`` (in a row) and ``<|tile_y_separator|>`` (after a row),
  then ``<|image|>`` and a global thumbnail's 144 patches, then ``<|image_end|>``.
  Only the config, tokenizer and processor matter: vLLM 0.32's CPU build does not
  serve Llama 4 images, so no weights are written.
- Gemma 4 (``Gemma4ForConditionalGeneration``, no audio tower): 16 px patches
  pooled 3 x 3, the image resized (aspect ratio kept) to at most 280 soft tokens,
  so ``<|image>``, N ``<|image|>`` (N <= 280; 253 for 896 x 448) and ``<image|>``.
  Seeded random weights under transformers 5's names, which vLLM's Gemma 4
  mapper reads as they are.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_internvl_gemma import named_word_tokenizer
from .tiny_llava import TINY_LLM, WEIGHTS_SEED, WORDS, save_checkpoint

# ---------------------------------------------------------------- Llama 4

LLAMA4_SPECIAL = ["<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad|>"]
# Llama4Processor hard-codes these strings (its constructor defaults); the named
# ones are also set on the tokenizer, as the released tokenizer does not, harmlessly.
LLAMA4_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image_start|>",
    "eoi_token": "<|image_end|>",
    "patch_token": "<|patch|>",
    "tile_x_separator_token": "<|tile_x_separator|>",
    "tile_y_separator_token": "<|tile_y_separator|>",
}
LLAMA4_STRUCTURE = ("<|header_start|>", "<|header_end|>", "<|eot|>")
# Llama 4's template, cut down (no tools, no system prompt logic): the image as
# <|image|>, which the processor expands; the word tokenizer drops the "\n\n".
LLAMA4_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|header_start|>{{ message['role'] }}<|header_end|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}"
)
LLAMA4_IMAGE_SIZE = 336
LLAMA4_PATCH_SIZE = 14
LLAMA4_PIXEL_SHUFFLE = 0.5
# (336 / 14) ** 2 * 0.5 ** 2 = 144 tokens per tile, a 12 x 12 grid.
LLAMA4_TOKENS_PER_TILE = int(
    (LLAMA4_IMAGE_SIZE // LLAMA4_PATCH_SIZE) ** 2 * LLAMA4_PIXEL_SHUFFLE**2
)
LLAMA4_MAX_TILES = 16  # the released image processor's max_patches

# ---------------------------------------------------------------- Gemma 4

GEMMA4_SPECIAL = ["<unk>", "<bos>", "<eos>", "<pad>"]
# Gemma4Processor reads image_token, boi_token and eoi_token from the tokenizer, and
# refuses every call (even image-only) unless boa_token and eoa_token are set too.
GEMMA4_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
}
GEMMA4_TURN = ("<|turn>", "<turn|>")
# Gemma 4's template, cut down: one <|image|> per image part (the processor expands it).
GEMMA4_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)
GEMMA4_PATCH_SIZE = 16
GEMMA4_POOLING = 3
GEMMA4_SOFT_TOKENS = 280  # the released image budget (one of 70, 140, 280, 560, 1120)


def build_tiny_llama4(path: Path) -> Path:
    """A tiny Llama 4 (Scout geometry: 336 px tiles, 144 ``<|patch|>`` per tile, up to
    16 tiles plus a global view) around a 2-layer Llama 4 LLM with 2 experts.

    Config, tokenizer and processor only: vLLM 0.32 on CPU does not serve Llama 4
    images, so the checkpoint exists for the processor-side checks.
    """
    from transformers import Llama4Config, Llama4ImageProcessor, Llama4Processor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = named_word_tokenizer(
        LLAMA4_SPECIAL,
        ["user", "assistant", "system", *WORDS],
        LLAMA4_TOKENS,
        LLAMA4_CHAT_TEMPLATE,
        extra=LLAMA4_STRUCTURE,
    )
    vocab = tokenizer.get_vocab()
    image_processor = Llama4ImageProcessor(
        size={"height": LLAMA4_IMAGE_SIZE, "width": LLAMA4_IMAGE_SIZE},
        max_patches=LLAMA4_MAX_TILES,
        resize_to_max_canvas=False,
    )
    processor = Llama4Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=LLAMA4_PATCH_SIZE,
        pixel_shuffle_ratio=LLAMA4_PIXEL_SHUFFLE,
        chat_template=LLAMA4_CHAT_TEMPLATE,
    )
    text = dict(
        vocab_size=len(vocab),
        **TINY_LLM,  # its intermediate_size: each expert's
        intermediate_size_mlp=256,
        head_dim=32,  # the CPU kernels' minimum
        num_local_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=8192,
        bos_token_id=vocab["<|begin_of_text|>"],
        eos_token_id=[vocab["<|end_of_text|>"], vocab["<|eot|>"]],
        pad_token_id=vocab["<|finetune_right_pad|>"],
    )
    # The vision MLP reads the pixel-shuffled patches (4 x hidden_size) as
    # intermediate_size, as Scout's 1408 -> 5632 does.
    vision = dict(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=LLAMA4_IMAGE_SIZE,
        patch_size=LLAMA4_PATCH_SIZE,
        pixel_shuffle_ratio=LLAMA4_PIXEL_SHUFFLE,
        vision_output_dim=64,
        projector_input_dim=64,
        projector_output_dim=64,
    )
    config = Llama4Config(
        text_config=text,
        vision_config=vision,
        boi_token_index=vocab[LLAMA4_TOKENS["boi_token"]],
        eoi_token_index=vocab[LLAMA4_TOKENS["eoi_token"]],
        image_token_index=vocab[LLAMA4_TOKENS["patch_token"]],  # the embed positions
    )
    save_checkpoint(path, config, processor, "Llama4ForConditionalGeneration")
    return path


def build_tiny_gemma4(path: Path) -> Path:
    """A tiny Gemma 4 (16 px patches pooled 3 x 3, at most 280 soft tokens per image,
    no audio tower) around a 2-layer Gemma 4 LLM, one sliding and one global layer,
    with seeded random weights.

    The small variants' per-layer embeddings (PLE) are off, as in the large ones:
    a PLE table is vocabulary x layers x width, the bulk of a tiny checkpoint.
    """
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4ImageProcessor,
        Gemma4Processor,
        Gemma4VideoProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = named_word_tokenizer(
        GEMMA4_SPECIAL,
        ["user", "model", *WORDS],
        GEMMA4_TOKENS,
        GEMMA4_CHAT_TEMPLATE,
        extra=GEMMA4_TURN,
    )
    geometry = dict(
        patch_size=GEMMA4_PATCH_SIZE,
        pooling_kernel_size=GEMMA4_POOLING,
        max_soft_tokens=GEMMA4_SOFT_TOKENS,
    )
    # The processor adds <|video|> to the tokenizer: the vocabulary is read after it.
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(**geometry),
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(),
        chat_template=GEMMA4_CHAT_TEMPLATE,
        image_seq_length=GEMMA4_SOFT_TOKENS,
    )
    vocab = tokenizer.get_vocab()
    text = dict(
        vocab_size=len(vocab),
        **TINY_LLM,
        head_dim=32,
        global_head_dim=64,  # the global layer's heads are twice as wide, as released
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=8192,
        vocab_size_per_layer_input=len(vocab),
        hidden_size_per_layer_input=0,
        bos_token_id=vocab["<bos>"],
        eos_token_id=[vocab["<eos>"], vocab[GEMMA4_TURN[1]]],
        pad_token_id=vocab["<pad>"],
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        patch_size=GEMMA4_PATCH_SIZE,
        pooling_kernel_size=GEMMA4_POOLING,
        # Positions are patch coordinates: 1024 covers the widest image the
        # 280-token budget allows (840 patches on a side).
        position_embedding_size=1024,
        default_output_length=GEMMA4_SOFT_TOKENS,  # vLLM's token budget per image
    )
    config = Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=None,
        boi_token_id=vocab[GEMMA4_TOKENS["boi_token"]],
        eoi_token_id=vocab[GEMMA4_TOKENS["eoi_token"]],
        image_token_id=vocab[GEMMA4_TOKENS["image_token"]],
        video_token_id=vocab["<|video|>"],
        boa_token_id=vocab[GEMMA4_TOKENS["boa_token"]],
        eoa_token_index=vocab[GEMMA4_TOKENS["eoa_token"]],
        audio_token_id=vocab[GEMMA4_TOKENS["audio_token"]],
    )
    save_checkpoint(path, config, processor, "Gemma4ForConditionalGeneration")
    write_tied_gemma4_weights(Gemma4ForConditionalGeneration, config, path / "model.safetensors")
    return path


def write_tied_gemma4_weights(  # type: ignore[no-untyped-def]
    model_cls, config, file: Path, seed: int = WEIGHTS_SEED
) -> None:
    """Seeded random weights under transformers 5's names (vLLM's Gemma 4 mapper reads
    them), less the tied ``lm_head``: safetensors refuses tensors that share memory,
    and vLLM ties it back to the embeddings."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = model_cls(config)
    tensors = {
        name: t.detach().clone().contiguous()
        for name, t in model.state_dict().items()
        if name != "lm_head.weight"
    }
    save_file(tensors, str(file))


if __name__ == "__main__":
    import sys

    builders = {"llama4": build_tiny_llama4, "gemma4": build_tiny_gemma4}
    print(builders[sys.argv[1]](Path(sys.argv[2])))
