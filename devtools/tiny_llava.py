"""``tiny-llava``: a tiny LLaVA-1.5 built locally with random weights, for tests.

    python -m devtools.tiny_llava [DIR]     # default: ~/.cache/vllm-prune/tiny-llava

No model hub is needed: the config, a word-level tokenizer, the image processor
and seeded random weights (about 2 MB) are written to a folder vLLM serves as
is. It has the real LLaVA-1.5 geometry (336 px images, 14 px patches, 576
visual tokens on a 24 x 24 grid) and a very small LLM, so it runs on a laptop
CPU. Its answers are noise: it exists to exercise pruning end to end.

Why real random weights rather than vLLM's ``load_format=dummy``: the dummy
loader fills every tensor with the same tiny uniform draw, which makes every
logit equal, so no test could tell one input from another.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
WORDS = (
    "USER ASSISTANT : ? . , the a an is are of in on at to and what which where "
    "how many color colour shape object image picture describe show there left "
    "right top bottom center middle red green blue yellow black white circle "
    "square triangle yes no one two three four five small large big"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% else %}ASSISTANT: {{ message['content'] }}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
IMAGE_SIZE = 336
PATCH_SIZE = 14
WEIGHTS_SEED = 0
# transformers 5 names LLaVA weights differently from the layout vLLM 0.32 loads.
CHECKPOINT_PREFIXES = {
    "model.vision_tower.": "vision_tower.vision_model.",
    "model.language_model.": "language_model.model.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
    "model.image_newline": "image_newline",  # LLaVA-NeXT
}


# The LLM of every tiny checkpoint: 2 layers, grouped-query attention (4 heads over 2 KV
# heads), head_dim 32 = 128 / 4, the CPU attention kernels' minimum.
TINY_LLM = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def save_checkpoint(path: Path, config, processor, architecture: str) -> None:  # type: ignore[no-untyped-def]
    """Config (named ``architecture``, float32) and processor at ``path``, as vLLM reads them."""
    config.architectures = [architecture]
    config.dtype = "float32"
    config.save_pretrained(path)
    processor.save_pretrained(path)


def default_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "vllm-prune" / "tiny-llava"


def word_tokenizer(  # type: ignore[no-untyped-def]
    special: list[str], words: list[str], extra_special: list[str], lowercase: bool = False
):
    """A whitespace word-level tokenizer built offline: special tokens first, then words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    filler = [f"w{i}" for i in range(128)]
    vocab = {tok: i for i, tok in enumerate(special + words + filler)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special[0]))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if lowercase:
        core.normalizer = normalizers.Lowercase()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=special[0],
        bos_token=special[1],
        eos_token=special[2],
        pad_token=special[3],
        additional_special_tokens=extra_special,
        model_max_length=8192,
    )


def tiny_clip_config():  # type: ignore[no-untyped-def]
    """LLaVA-1.5's vision geometry (336 px, 14 px patches) in a 2-layer CLIP."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )


def tiny_llama_config(vocab: dict[str, int], max_positions: int):  # type: ignore[no-untyped-def]
    """A 2-layer Llama with grouped-query attention; head_dim 32, the CPU kernels' minimum."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(vocab),
        **TINY_LLM,
        head_dim=32,
        max_position_embeddings=max_positions,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )


def llava_processor(tokenizer):  # type: ignore[no-untyped-def]
    """LLaVA-1.5's processor: 336 px CLIP preprocessing, one ``<image>`` per visual token."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_llava(path: Path | None = None) -> Path:
    """Write the tiny model's config, tokenizer and processor to ``path``."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    path = Path(path or default_dir())
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = word_tokenizer(SPECIAL_TOKENS, WORDS, extra_special=[IMAGE_TOKEN])
    vocab = tokenizer.get_vocab()
    tokenizer.chat_template = CHAT_TEMPLATE
    processor = llava_processor(tokenizer)

    vision = tiny_clip_config()
    text = tiny_llama_config(vocab, max_positions=2048)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab[IMAGE_TOKEN],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    save_checkpoint(path, config, processor, "LlavaForConditionalGeneration")
    write_random_weights(
        LlavaForConditionalGeneration, config, path / "model.safetensors", checkpoint_name
    )
    return path


def checkpoint_name(name: str) -> str:
    for old, new in CHECKPOINT_PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old) :]
    raise ValueError(f"unexpected LLaVA weight name {name!r}")


def keep_name(name: str) -> str:
    return name


def write_random_weights(  # type: ignore[no-untyped-def]
    model_cls, config, file: Path, rename=keep_name, seed: int = WEIGHTS_SEED
) -> None:
    """Seeded random weights (transformers' own init of ``model_cls``), saved under the
    names ``rename`` gives them: the checkpoint layout vLLM loads."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = model_cls(config)
    tensors = {rename(name): t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(file))


if __name__ == "__main__":
    import sys

    print(build_tiny_llava(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
