"""Tiny InternVL (HF layout), Gemma 3 and PaliGemma checkpoints, built offline, random weights.

Like the tiny LLaVA (``tiny_llava``) and ``tiny_families``: each family's real
visual-token geometry around a 2-layer LLM and a 2-layer vision tower, with a
word-level tokenizer that carries the family's structure tokens, written in
the layout plain vLLM 0.32 serves (CPU, ``dtype="float32"``):

- InternVL (``InternVLForConditionalGeneration``, served by vLLM as
  ``InternS1ForConditionalGeneration``): 448 px tiles, 14 px patches, pixel
  shuffle 0.5, so 256 ``<IMG_CONTEXT>`` tokens per tile between ``<img>`` and
  ``</img>``; dynamic tiling (``crop_to_patches``) gives a wide image several
  tiles plus a thumbnail.
- Gemma 3 (``Gemma3ForConditionalGeneration``): 896 px SigLIP, 14 px patches,
  4 x 4 average pooling, so 256 ``<image_soft_token>`` between
  ``<start_of_image>`` and ``<end_of_image>``, with the ``\\n\\n`` around them.
- PaliGemma (``PaliGemmaForConditionalGeneration``, version 1: a Gemma LLM):
  224 px SigLIP, 14 px patches, 256 ``<image>`` tokens before ``<bos>`` and the
  prompt; one image per prompt.

transformers 5 saves a SigLIP tower as ``model.vision_tower.embeddings...``,
which vLLM 0.32 does not load (it expects ``vision_tower.vision_model...``), so
the Gemma 3 and PaliGemma weights are written under the old names: no
``load_format="dummy"`` is needed.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_families import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL
from .tiny_llava import (
    TINY_LLM,
    WEIGHTS_SEED,
    WORDS,
    save_checkpoint,
    word_tokenizer,
    write_random_weights,
)

# ---------------------------------------------------------------- InternVL

INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
INTERNVL_IMAGE_SIZE = 448
INTERNVL_PATCH_SIZE = 14
INTERNVL_DOWNSAMPLE = 0.5
# (448 / 14) ** 2 * 0.5 ** 2 = 256 tokens per tile, a 16 x 16 grid.
INTERNVL_TOKENS_PER_TILE = int(
    (INTERNVL_IMAGE_SIZE // INTERNVL_PATCH_SIZE) ** 2 * INTERNVL_DOWNSAMPLE**2
)

# ---------------------------------------------------------------- Gemma 3

GEMMA3_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
# vLLM's Gemma 3 processor looks these up (it merges "\n\n" + "\n" into "\n\n\n").
NEWLINES = ["\n", "\n\n", "\n\n\n", "\n\n\n\n"]
# Gemma 3's own template, cut down: content as a list of parts, the image as
# <start_of_image> with no whitespace after it. The processor wraps it in "\n\n"
# on both sides; a "\n" next to those would tokenize as "\n\n\n" and vLLM would
# not find the placeholder (as with the released tokenizer).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA3_IMAGE_SIZE = 896
GEMMA3_PATCH_SIZE = 14
GEMMA3_TOKENS_PER_IMAGE = 256  # the 64 x 64 patch grid pooled 4 x 4 to 16 x 16

# ---------------------------------------------------------------- PaliGemma

PALIGEMMA_IMAGE_TOKEN = "<image>"
# PaliGemma has no chat format: the prompt is the user's text (vLLM inserts the
# image tokens and <bos> in front and a "\n" at the end).
PALIGEMMA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ message['content'] }}{% endif %}{% endfor %}"
)
PALIGEMMA_IMAGE_SIZE = 224
PALIGEMMA_PATCH_SIZE = 14
PALIGEMMA_TOKENS_PER_IMAGE = (PALIGEMMA_IMAGE_SIZE // PALIGEMMA_PATCH_SIZE) ** 2  # 256

GEMMA_SPECIAL = ["<unk>", "<bos>", "<eos>", "<pad>"]
GEMMA_WORDS = ["user", "model", *WORDS]
# The SigLIP towers, as transformers 5 names them -> as vLLM 0.32 loads them.
SIGLIP_PREFIX = ("model.vision_tower.", "vision_tower.vision_model.")


def named_word_tokenizer(  # type: ignore[no-untyped-def]
    special: list[str],
    words: list[str],
    named: dict[str, str],
    chat_template: str,
    extra: tuple[str, ...] = (),
    newlines: list[str] | None = None,
):
    """The word tokenizer (``special``: unk, bos, eos, pad), plus *named* special tokens
    (``tokenizer.image_token``, ``.boi_token``, ...: what the HF and vLLM processors
    read), unnamed ``extra`` special tokens (kept whole, like the named ones) and, for
    Gemma, newline runs as added tokens (the word pre-tokenizer drops whitespace)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    added = [*extra, *named.values()]
    base = word_tokenizer(special + added, words, extra_special=added)
    if newlines:
        base.backend_tokenizer.add_tokens(
            [AddedToken(n, normalized=False, special=False) for n in newlines]
        )
    # Keys ending in ``_token`` become named (model-specific) special tokens.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        unk_token=special[0],
        bos_token=special[1],
        eos_token=special[2],
        pad_token=special[3],
        additional_special_tokens=added,
        model_max_length=8192,
        **named,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_internvl(path: Path, max_tiles: int = 6) -> Path:
    """A tiny HF-layout InternVL (InternVL3-hf geometry) at ``path``: a 2-layer
    InternViT on 448 px tiles and a 2-layer Qwen2 LLM.

    ``max_tiles`` caps the dynamic tiling (the image processor's ``max_patches``):
    a 448 x 448 image is 1 tile (256 tokens), an 896 x 448 one 2 tiles plus a
    thumbnail (768). The default 6 keeps two largest images (2 x 7 tiles x 256)
    within a 4096-token context, as vLLM's profiling needs.
    """
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = named_word_tokenizer(
        QWEN_SPECIAL[:4],
        ["user", "assistant", "system", *WORDS],
        INTERNVL_TOKENS,
        QWEN_CHAT_TEMPLATE,
    )
    vocab = tokenizer.get_vocab()
    size = {"height": INTERNVL_IMAGE_SIZE, "width": INTERNVL_IMAGE_SIZE}
    # crop_to_patches on the image processor itself: vLLM counts tiles from it.
    image_processor = GotOcr2ImageProcessor(
        size=size, crop_to_patches=True, min_patches=1, max_patches=max_tiles
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=INTERNVL_TOKENS_PER_TILE,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    text = dict(
        model_type="qwen2",
        vocab_size=len(vocab),
        **TINY_LLM,
        max_position_embeddings=8192,
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=INTERNVL_IMAGE_SIZE,
        patch_size=INTERNVL_PATCH_SIZE,
    )
    config = InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab[INTERNVL_TOKENS["context_image_token"]],
        image_seq_length=INTERNVL_TOKENS_PER_TILE,
        downsample_ratio=INTERNVL_DOWNSAMPLE,
        tie_word_embeddings=False,  # untied: safetensors will not save shared tensors
    )
    save_checkpoint(path, config, processor, "InternVLForConditionalGeneration")
    # transformers 5's names are the ones vLLM's InternS1 mapper expects.
    write_random_weights(InternVLForConditionalGeneration, config, path / "model.safetensors")
    sharpen_tower_attention(path / "model.safetensors", INTERNVL_ATTENTION_SHARPNESS)
    return path


# Random weights attend almost uniformly, where trained towers do not: the tower methods'
# ranking would then be decided by rounding. Queries and keys x 10: the [CLS] row's
# kept-or-not boundary in each tile then stands 1e-3 (relative) apart, not 1e-5.
INTERNVL_ATTENTION_SHARPNESS = 10.0


def sharpen_tower_attention(file: Path, factor: float) -> None:
    """The vision tower's query and key weights in the checkpoint ``file`` times ``factor``."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    for name, tensor in tensors.items():
        if "vision_tower" in name and name.endswith(
            ("attention.q_proj.weight", "attention.k_proj.weight")
        ):
            tensors[name] = (tensor * factor).contiguous()
    save_file(tensors, str(file))


def build_tiny_gemma3(path: Path) -> Path:
    """A tiny Gemma 3 (gemma-3-4b-it geometry: 896 px SigLIP, 256 tokens per image,
    no pan and scan) around a 2-layer Gemma 3 LLM, one sliding and one global layer."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = named_word_tokenizer(
        GEMMA_SPECIAL,
        GEMMA_WORDS,
        GEMMA3_TOKENS,
        GEMMA_CHAT_TEMPLATE,
        extra=("<start_of_turn>", "<end_of_turn>"),
        newlines=NEWLINES,
    )
    vocab = tokenizer.get_vocab()
    image_processor = Gemma3ImageProcessor(
        size={"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE},
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA_CHAT_TEMPLATE,
        image_seq_length=GEMMA3_TOKENS_PER_IMAGE,
    )
    text = dict(
        vocab_size=len(vocab),
        **TINY_LLM,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=8192,
        bos_token_id=vocab["<bos>"],
        eos_token_id=[vocab["<eos>"], vocab["<end_of_turn>"]],
        pad_token_id=vocab["<pad>"],
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=siglip_config(GEMMA3_IMAGE_SIZE, GEMMA3_PATCH_SIZE),
        mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
        boi_token_index=vocab[GEMMA3_TOKENS["boi_token"]],
        eoi_token_index=vocab[GEMMA3_TOKENS["eoi_token"]],
        image_token_index=vocab[GEMMA3_TOKENS["image_token"]],
    )
    save_checkpoint(path, config, processor, "Gemma3ForConditionalGeneration")
    write_tied_weights(Gemma3ForConditionalGeneration, config, path / "model.safetensors")
    return path


def build_tiny_paligemma(path: Path) -> Path:
    """A tiny PaliGemma (paligemma-3b-pt-224 geometry: 224 px SigLIP, 256 image tokens
    before ``<bos>``, one image per prompt) around a 2-layer Gemma LLM."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = named_word_tokenizer(
        GEMMA_SPECIAL,
        GEMMA_WORDS,
        {"image_token": PALIGEMMA_IMAGE_TOKEN},
        PALIGEMMA_CHAT_TEMPLATE,
        newlines=["\n"],  # vLLM ends every PaliGemma prompt with "\n"
    )
    image_processor = SiglipImageProcessor(
        size={"height": PALIGEMMA_IMAGE_SIZE, "width": PALIGEMMA_IMAGE_SIZE}
    )
    image_processor.image_seq_length = PALIGEMMA_TOKENS_PER_IMAGE  # PaliGemmaProcessor reads it
    # The processor adds PaliGemma's 1024 <locNNNN> and 128 <segNNN> tokens to the
    # tokenizer: the vocabulary is read after it (1344 tokens).
    processor = PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=PALIGEMMA_CHAT_TEMPLATE
    )
    vocab = tokenizer.get_vocab()
    text = dict(
        model_type="gemma",
        vocab_size=len(vocab),
        **TINY_LLM,
        head_dim=32,
        hidden_activation="gelu_pytorch_tanh",  # what vLLM reads (else it warns)
        max_position_embeddings=8192,
        bos_token_id=vocab["<bos>"],
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<pad>"],
    )
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=siglip_config(PALIGEMMA_IMAGE_SIZE, PALIGEMMA_PATCH_SIZE),
        image_token_index=vocab[PALIGEMMA_IMAGE_TOKEN],
        vocab_size=len(vocab),
        projection_dim=128,  # the LLM's hidden size
        hidden_size=128,
    )
    save_checkpoint(path, config, processor, "PaliGemmaForConditionalGeneration")
    write_tied_weights(PaliGemmaForConditionalGeneration, config, path / "model.safetensors")
    return path


def siglip_config(image_size: int, patch_size: int) -> dict:
    """A 2-layer SigLIP tower; no pooling head (Gemma 3 and PaliGemma use every patch)."""
    return dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,
    )


def siglip_checkpoint_name(name: str) -> str | None:
    """vLLM 0.32's name for a transformers 5 weight; None for the tied ``lm_head``
    (Gemma ties it to the embeddings, and vLLM ties it back)."""
    if name == "lm_head.weight":
        return None
    old, new = SIGLIP_PREFIX
    return new + name[len(old) :] if name.startswith(old) else name


def write_tied_weights(  # type: ignore[no-untyped-def]
    model_cls, config, file: Path, seed: int = WEIGHTS_SEED
) -> None:
    """``write_random_weights`` for a model with tied embeddings and a SigLIP tower:
    safetensors refuses tensors that share memory, so the tied ``lm_head`` is left out.
    A matrix transformers initialises to zeros (Gemma 3's ``mm_input_projection_weight``)
    gets seeded noise, or every image would embed to the same zero rows."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = model_cls(config)
    tensors = {}
    for name, tensor in model.state_dict().items():
        new = siglip_checkpoint_name(name)
        if new is not None:
            if tensor.dim() >= 2 and not tensor.any():
                tensor = torch.randn(tensor.shape, dtype=tensor.dtype) * 0.02
            tensors[new] = tensor.detach().contiguous()
    save_file(tensors, str(file))


if __name__ == "__main__":
    import sys

    builders = {
        "internvl": build_tiny_internvl,
        "gemma3": build_tiny_gemma3,
        "paligemma": build_tiny_paligemma,
    }
    print(builders[sys.argv[1]](Path(sys.argv[2])))
