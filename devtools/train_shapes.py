"""Train ``shapes-llava`` (``devtools/shapes_llava.py``) on the ``shapes`` train split.

    .venv/bin/python -m devtools.train_shapes     # writes vllm_prune/assets/shapes-llava

Plain PyTorch on transformers' ``LlavaForConditionalGeneration``, seeded; 3000 steps of
4 train images (about 0.6 s a step on these 2 CPU cores, less when tokens are dropped:
the shipped weights took 28.2 minutes here). Every weight starts from
scratch (random, the tower's positions a fixed pattern): there is no pretrained tower or
LLM to start from here. Trained on the answers alone, the model sits at chance for
thousands of steps: "is there a red circle" needs the question's words and the matching
patches together, so neither alone lowers the loss. What helps:

- Every question per image. The benchmark asks four questions of an image; training
  asks all its templates can (existence of each drawn kind and as many absent ones,
  colour, count of each shape, location of each object). The visual prefix (``user :``
  and the 576 image tokens) does not depend on the question, so the LLM runs it once
  per image (with SDPA) and the questions attend to its keys and values
  (``shared_prefix_attention``, which reads them per image instead of copying them per
  question): the same logits as full sequences (``tests/test_train_shapes.py``) at a
  fraction of the cost.
- Focus losses (``focus_loss``): at the positions that predict the answer, one head of
  LLM layer 0 is trained to read the question's words, and one head of layer 1 to
  attend to the patches of the object asked about (its centre, for counts, beside the
  first token; the first token alone when it is absent). Linear probes (``Probes``)
  make those positions hold the asked colour and shape, and each image token its
  object's kind (and whose centre it holds), so the match is not a product of two
  near-zero terms at the start. The rest of the model learns to answer from what that
  head reads. This is like supervising grounding in a real VLM, and it matters for the
  pruning results: the question's attention to the image is sharp and lands on the
  object, which is what text-guided methods (FastV and the like) rank tokens by.
- Warm-up questions (training only) that need the image alone ("how many objects") or
  one word ("is there a circle", "is there a red object").
- Dense losses on the tower (``PatchHeads``): per patch, the kind of object it shows
  (from ``MIN_COVER`` pixels on, so the fragments of a small object are named too) and
  whose centre it holds, and its 3 x 3 cell. They are local, so what a patch knows
  stays in that patch: pruning it loses it, as in a real tower.
- The tower's position embeddings start as 2-D sine-cosine ones (``grid_positions``).
  A small object lies across two to four patches, and its shape is only in their
  fragments together; with random starting positions the tower learned to combine
  neighbours too late, and counting (every counted object's shape) stalled there.
- The next-token loss on the question words (the LLM's only language training).
- Token dropout (``random_subsets``): from step ``--drop-from`` on, 35 % of the steps
  show the LLM a fresh random subset of each image's tokens (32 to 575 of 576, numbered on
  from the text as the server numbers a pruned prompt). Trained on whole images only,
  the model had never seen a shorter image, and any pruning threw it off its inputs'
  distribution: at ratio 0.75 every method fell to about a third of the unpruned score,
  counting to zero, even DART keeping every object's patches. A real LLaVA is not
  trained this way, but its tokens are redundant enough to survive pruning; dropout
  gives this small model the same property, so the ``shapes`` table compares what the
  methods keep rather than how far each is from the training distribution. It favours
  ``random`` a little (that is its distribution): see docs/accuracy.md.

Prompts are what the server builds for a ``shapes`` sample: the chat template over
``<image>\n{question}\n{SHORT_ANSWER}``; pixels are the image processor's. Accuracy is
exact match of the greedy answer, computed teacher-forced (greedy decoding gives the
answer exactly when every answer token and ``</s>`` is the argmax).
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache, LlavaForConditionalGeneration

from devtools.shapes_llava import (
    FOLDER,
    build_config,
    build_processor,
    build_tokenizer,
    load,
    save,
)
from devtools.tiny_llava import IMAGE_SIZE, IMAGE_TOKEN, PATCH_SIZE
from vllm_prune.eval import shapes
from vllm_prune.eval.sample import SHORT_ANSWER
from vllm_prune.methods.base import MODEL_SIGNALS, Context
from vllm_prune.methods.registry import get_method
from vllm_prune.spec import METHOD_FIELD, RATIO_FIELD, PruneSpec

IGNORE = -100


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, H, W), normalised as the image processor does
    prefix: torch.Tensor  # (prefix text tokens,) ids before the image
    suffix: torch.Tensor  # (rows, S) question, "assistant :", answer, </s>, right-padded
    labels: torch.Tensor  # (rows, S) next-token targets, IGNORE outside the answer
    types: list[str]  # question type per suffix row
    image_of_row: torch.Tensor  # (rows,) which image each suffix row asks about
    content: torch.Tensor  # (B, 576) kind of the object covering each patch, 0 = none
    centre: torch.Tensor  # (B, 576) kind of the object centred in each patch, 0 = none
    focus: torch.Tensor  # (rows, prefix + 576) where the answer should look; 0 = anywhere
    question: torch.Tensor  # (rows,) question tokens at the start of each suffix row
    asked: torch.Tensor  # (rows, 2) the colour and shape a question names, 0 = none


class Encoder:
    """Images and questions to tensors, exactly as the server's processor would see them."""

    def __init__(self) -> None:
        self.tokenizer = build_tokenizer()
        processor = build_processor(self.tokenizer).image_processor
        self.mean = torch.tensor(processor.image_mean).view(3, 1, 1)
        self.std = torch.tensor(processor.image_std).view(3, 1, 1)
        self.image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.pad_id = self.tokenizer.pad_token_id

    def pixels(self, image) -> torch.Tensor:  # type: ignore[no-untyped-def]
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (array - self.mean) / self.std

    @functools.cache  # noqa: B019 - one encoder per run, a few dozen distinct questions
    def prompt_ids(self, question: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{IMAGE_TOKEN}\n{question}\n{SHORT_ANSWER}"}],
            add_generation_prompt=True,
            tokenize=False,
        )
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def batch(self, split: str, indices: list[int], every_question: bool = False) -> Batch:
        """The benchmark's four questions per image, or with ``every_question`` all the
        questions its templates can ask of the image (training: many answers per prefix)."""
        pixels, rows, types, content, centre, image_of_row, focus = [], [], [], [], [], [], []
        question_lengths, asked_kind = [], []
        prefix: list[int] | None = None
        for position, index in enumerate(indices):
            items = shapes.image_items(split, index)
            objects = items[0].objects
            pixels.append(self.pixels(items[0].image))
            patch_content, patch_centre = patch_targets(objects)
            content.append(patch_content)
            centre.append(patch_centre)
            asked = (
                every_template_question(objects, random.Random(index))
                if every_question
                else [(item.type, item.question, item.answer) for item in items]
            )
            for kind_, question, answer_text, *spec in asked:
                ids = self.prompt_ids(question)
                cut = ids.index(self.image_id)
                prefix = prefix or ids[:cut]
                assert ids[:cut] == prefix, "the text before the image must not vary"
                answer = self.tokenizer(answer_text, add_special_tokens=False).input_ids
                rows.append((ids[cut + 1 :], answer + [self.tokenizer.eos_token_id]))
                types.append(kind_)
                image_of_row.append(position)
                focus.append(focus_row(len(prefix), patch_content, patch_centre, *spec[:1]))
                asked_kind.append(asked_in(question))
                question_lengths.append(len(self.tokenizer(question.rstrip("?")).input_ids))
        width = max(len(q) + len(a) for q, a in rows)
        suffix = torch.full((len(rows), width), self.pad_id)
        labels = torch.full((len(rows), width), IGNORE)
        for row, (question, answer) in enumerate(rows):
            ids = question + answer
            suffix[row, : len(ids)] = torch.tensor(ids)
            # position p predicts token p + 1: the last question token predicts the answer
            labels[row, len(question) - 1 : len(ids) - 1] = torch.tensor(answer)
        assert prefix is not None
        return Batch(
            torch.stack(pixels),
            torch.tensor(prefix),
            suffix,
            labels,
            types,
            torch.tensor(image_of_row),
            torch.stack(content),
            torch.stack(centre),
            torch.stack(focus),
            torch.tensor(question_lengths),
            torch.tensor(asked_kind),
        )


Focus = tuple[str, tuple[int, ...], bool]  # patches ("content"/"centre"), of kinds, + sink


def every_template_question(
    objects: tuple[shapes.Shape, ...], rng: random.Random
) -> list[tuple[str, str, str, Focus]]:
    """(type, question, answer, focus) for every question ``shapes`` can ask of these
    objects: existence of each drawn kind and as many absent ones, colour of each shape
    drawn once, count of each shape, location of each object; then the warm-ups."""
    drawn = {(obj.shape, obj.color) for obj in objects}
    absent = [(s, c) for s in shapes.SHAPES for c in shapes.COLORS if (s, c) not in drawn]
    out: list[tuple[str, str, str, Focus]] = []
    for obj in sorted(objects, key=lambda o: (o.shape, o.color)):
        question = f"Is there a {obj.color} {obj.shape}?"
        out.append(("existence", question, "yes", ("content", (kind(obj),), False)))
    for shape, color in rng.sample(absent, min(len(drawn), len(absent))):
        out.append(("existence", f"Is there a {color} {shape}?", "no", ("content", (), True)))
    for shape in shapes.SHAPES:
        same = tuple(kind(obj) for obj in objects if obj.shape == shape)
        if len(same) == 1:
            color = next(obj.color for obj in objects if obj.shape == shape)
            focus: Focus = ("content", same, False)
            out.append(("color", f"What color is the {shape}?", color, focus))
        question = f"How many {shape}s are there?"
        out.append(("count", question, str(len(same)), ("centre", same, True)))
    for obj in objects:
        question = f"Where is the {obj.color} {obj.shape}?"
        focus = ("content", (kind(obj),), False)
        out.append(("location", question, shapes.CELLS[obj.cell], focus))
    return out + warm_up_questions(objects, rng)


def warm_up_questions(
    objects: tuple[shapes.Shape, ...], rng: random.Random
) -> list[tuple[str, str, str, Focus]]:
    """Training-only questions that break the benchmark's chicken-and-egg: an answer like
    "is there a red circle" needs both the question's words and the image, so neither
    alone lowers the loss at first. These need the image alone (how many objects) or one
    word (a shape, or a colour), so the LLM learns to read the image first."""
    every = tuple(kind(obj) for obj in objects)
    out = [("warm-up", "How many objects are there?", str(len(objects)), ("centre", every, True))]
    shape = rng.choice(shapes.SHAPES)
    same = tuple(kind(obj) for obj in objects if obj.shape == shape)
    focus: Focus = ("content", same, not same)
    out.append(("warm-up", f"Is there a {shape}?", "yes" if same else "no", focus))
    color = rng.choice(list(shapes.COLORS))
    same = tuple(kind(obj) for obj in objects if obj.color == color)
    focus = ("content", same, not same)
    out.append(("warm-up", f"Is there a {color} object?", "yes" if same else "no", focus))
    return out


def asked_in(question: str) -> tuple[int, int]:
    """The colour and shape a question names (1-based; 0 = none): "squares" names square."""
    words = re.findall(r"[a-z]+", question.lower())
    color = next((i + 1 for i, c in enumerate(shapes.COLORS) if c in words), 0)
    shape = next((i + 1 for i, s in enumerate(shapes.SHAPES) if s in words or f"{s}s" in words), 0)
    return color, shape


def focus_row(
    prefix: int, content: torch.Tensor, centre: torch.Tensor, focus: Focus | None = None
) -> torch.Tensor:
    """Where the answer should look, as a distribution over the prefix text and the image
    patches: evenly over the patches named by ``focus`` (those showing an object of the
    given kinds, or holding its centre) and, with the sink flag, the first token
    ("nothing here", or for counts one share beside each object's centre). All zero:
    no target."""
    row = torch.zeros(prefix + GRID * GRID)
    if focus is None:
        return row
    patches, kinds, sink = focus
    kinds_ = torch.tensor(kinds, dtype=centre.dtype)
    hit = torch.isin(centre, kinds_)  # a tiny object may cover no patch enough for content
    if patches == "content":
        hit |= torch.isin(content, kinds_)
    row[prefix:] = hit.float()
    if sink:
        row[0] = 1.0
    assert row.sum() > 0, f"empty focus {focus}"
    return row / row.sum()


GRID = IMAGE_SIZE // PATCH_SIZE  # 24 patches a side
KINDS = 1 + len(shapes.SHAPES) * len(shapes.COLORS)  # 0 = nothing
MIN_COVER = 4  # pixels of an object a patch needs to count as showing it


def kind(obj: shapes.Shape) -> int:
    return (
        1
        + shapes.SHAPES.index(obj.shape) * len(shapes.COLORS)
        + list(shapes.COLORS).index(obj.color)
    )


def patch_targets(objects: tuple[shapes.Shape, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch, in raster order: the kind of object it shows most (``MIN_COVER`` pixels
    at least), and the kind of object whose box centre it holds."""
    ids = np.asarray(shapes.object_map(objects, IMAGE_SIZE), dtype=np.int64)
    patches = ids.reshape(GRID, PATCH_SIZE, GRID, PATCH_SIZE).transpose(0, 2, 1, 3)
    counts = np.stack([(patches == i + 1).sum(axis=(2, 3)) for i in range(len(objects))])
    kinds = np.array([kind(obj) for obj in objects])
    content = np.where(counts.max(0) >= MIN_COVER, kinds[counts.argmax(0)], 0)
    centre = np.zeros((GRID, GRID), dtype=np.int64)
    for obj in objects:
        x, y = (obj.box[0] + obj.box[2]) // 2, (obj.box[1] + obj.box[3]) // 2
        centre[y // PATCH_SIZE, x // PATCH_SIZE] = kind(obj)
    return torch.from_numpy(content.reshape(-1)), torch.from_numpy(centre.reshape(-1))


class PatchHeads(torch.nn.Module):
    """Training-only linear read-outs of the tower's features (dense auxiliary losses that
    give a tower trained from scratch a fast start); not part of the checkpoint."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.content = torch.nn.Linear(width, KINDS)
        self.centre = torch.nn.Linear(width, KINDS)
        self.cell = torch.nn.Linear(width, 9)
        rows = torch.arange(GRID).repeat_interleave(GRID)
        cols = torch.arange(GRID).repeat(GRID)
        self.register_buffer("cells", (rows * 3 // GRID) * 3 + cols * 3 // GRID)

    def loss(self, vision: torch.Tensor, batch: Batch) -> torch.Tensor:
        cells = self.cells.expand(vision.shape[0], -1)
        return (
            F.cross_entropy(self.content(vision).flatten(0, 1), batch.content.flatten())
            + centre_loss(self.centre(vision), batch.centre)
            + F.cross_entropy(self.cell(vision).flatten(0, 1), cells.flatten())
        )


CENTRE_WEIGHT = 20.0  # a centre is one patch of an object's dozens: weigh it up


def centre_loss(logits_: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Per-patch centre kind, with the rare centre patches weighed up: unweighted, "no
    centre anywhere" is nearly optimal and counts (which look at centres) stay at chance."""
    weight = torch.full((KINDS,), CENTRE_WEIGHT)
    weight[0] = 1.0
    return F.cross_entropy(logits_.flatten(0, 1), centre.flatten(), weight=weight)


# What the server's pruning does to the projector's output (B, 576, D): the image tokens
# the LLM sees (B, K, D) and the patch each stands for (B, K), ascending.
Reducer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def random_subsets(keep: int, generator: torch.Generator) -> Reducer:
    """Token dropout for training: ``keep`` tokens per image, a fresh uniform draw each."""

    def reduce(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        draw = torch.rand(image.shape[:2], generator=generator)
        kept = draw.argsort(dim=1)[:, :keep].sort(dim=1).values
        return image.gather(1, kept[..., None].expand(-1, -1, image.shape[2])), kept

    return reduce


def method_reducer(name: str, ratio: float) -> Reducer:
    """A pruning method of ``vllm_prune.methods`` that needs no model signals, as a
    request's prune fields set it up on the server (keep count, parameter defaults):
    what the served model sees under it, for ``evaluate``."""
    method = get_method(name)
    signals = method.needs & MODEL_SIGNALS
    if signals:
        raise ValueError(f"{name} needs model signals ({', '.join(sorted(signals))})")
    spec = PruneSpec.from_fields({METHOD_FIELD: name, RATIO_FIELD: ratio})
    assert spec is not None
    keep, context = spec.keep_for(GRID * GRID), Context(params=dict(spec.params))

    def reduce(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [method.reduce(one, (GRID, GRID), keep, context) for one in image]
        return torch.stack([p.features for p in parts]), torch.stack([p.indices for p in parts])

    return reduce


def logits(
    model: LlavaForConditionalGeneration, batch: Batch, reduce: Reducer | None = None
) -> torch.Tensor:
    return forward(model, batch, reduce).logits


# The attention heads the focus losses train, as (layer, head): at the position that
# predicts the answer, one reads the question's words, a later one the image patches
# those words name.
QUESTION_HEAD, IMAGE_HEAD = (0, 0), (1, 0)


@dataclass
class Outputs:
    logits: torch.Tensor  # (rows, S, V) over the suffix
    vision: torch.Tensor  # (B, 576, width) the tower's patch features
    kept: torch.Tensor  # (B, K) the patch each image token the LLM saw stands for
    # Entering the image head's layer: the image tokens (B, K, D) and the suffix (rows, S, D)
    image_hidden: torch.Tensor
    suffix_hidden: torch.Tensor
    # The question and image heads' attention over the suffix (rows, S, prefix + S each)
    attention: tuple[torch.Tensor, torch.Tensor]
    looked: torch.Tensor  # (rows, S, D) what the image head's layer's attention adds


@contextmanager
def attention_implementation(config, name: str) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Run the LLM's layers with another attention kernel (they read it from the config)."""
    saved = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = saved


@dataclass
class SharedPrefix:
    """Each image's cached prefix keys and values, per layer: (B, KV heads, P, head dim)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    rows_per_image: list[int]  # question rows of each image, in order (rows come sorted)


def per_image(left: torch.Tensor, right: torch.Tensor, rows_per_image: list[int]) -> torch.Tensor:
    """``left`` (rows, KV heads, groups, L, k) times its image's ``right`` (B, KV heads, k,
    m) -> (rows, KV heads, groups, L, m). An image's rows, groups and positions are folded
    into one matrix dimension, so ``right`` is never copied per row."""
    out = []
    for image, part in enumerate(left.split(rows_per_image)):
        n, kv_heads, groups, length, inner = part.shape
        flat = part.permute(1, 0, 2, 3, 4).reshape(kv_heads, n * groups * length, inner)
        product = flat @ right[image]
        out.append(product.view(kv_heads, n, groups, length, -1).permute(1, 0, 2, 3, 4))
    return torch.cat(out)


def shared_prefix_attention(  # type: ignore[no-untyped-def]
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    shared_prefix: SharedPrefix | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention of the question rows (query, key, value: their own tokens, RoPE
    applied) over their image's prefix and their own causal past. The prefix KV is read
    per image, not copied per row: copying it (and its backward) was half of a step.
    Returns what eager attention returns: the output and the weights over prefix + own."""
    assert shared_prefix is not None
    rows, heads, length, dim = query.shape
    groups = module.num_key_value_groups
    prefix_keys = shared_prefix.keys[module.layer_idx]
    prefix_values = shared_prefix.values[module.layer_idx]
    kv_heads, prefix = prefix_keys.shape[1], prefix_keys.shape[2]
    grouped = query.view(rows, kv_heads, groups, length, dim)
    scores = per_image(grouped, prefix_keys.transpose(2, 3), shared_prefix.rows_per_image)
    own_keys = key.repeat_interleave(groups, dim=1)
    own = query @ own_keys.transpose(2, 3)
    causal = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1)
    own = own.masked_fill(causal, float("-inf"))
    logits_ = torch.cat([scores.reshape(rows, heads, length, prefix), own], dim=-1)
    weights = torch.softmax(logits_ * scaling, dim=-1, dtype=torch.float32).to(query.dtype)
    to_prefix = weights[..., :prefix].reshape(rows, kv_heads, groups, length, prefix)
    output = per_image(to_prefix, prefix_values, shared_prefix.rows_per_image)
    output = output.reshape(rows, heads, length, dim)
    output = output + weights[..., prefix:] @ value.repeat_interleave(groups, dim=1)
    return output.transpose(1, 2).contiguous(), weights


SHARED_PREFIX = "shapes_shared_prefix"
AttentionInterface.register(SHARED_PREFIX, shared_prefix_attention)


def forward(
    model: LlavaForConditionalGeneration, batch: Batch, reduce: Reducer | None = None
) -> Outputs:
    """The image prefix runs once per image; each question row continues from its
    image's keys and values (``shared_prefix_attention``). With ``reduce`` the LLM sees
    only the image tokens it returns, numbered on from the text as the server numbers
    a pruned prompt."""
    vision = model.model.vision_tower(batch.pixels).last_hidden_state[:, 1:]  # drop [CLS]
    image = model.model.multi_modal_projector(vision)
    if reduce is None:
        kept = torch.arange(image.shape[1]).expand(image.shape[0], -1)
    else:
        image, kept = reduce(image)
    llm = model.model.language_model
    text = llm.embed_tokens(batch.prefix).expand(image.shape[0], -1, -1)
    prefix = torch.cat([text, image], dim=1)
    cache = DynamicCache(config=llm.config)
    with attention_implementation(llm.config, "sdpa"):  # no weights needed over the prefix
        before = llm(
            inputs_embeds=prefix, past_key_values=cache, use_cache=True, output_hidden_states=True
        ).hidden_states[IMAGE_HEAD[0]]
    shared = SharedPrefix(
        [layer.keys for layer in cache.layers],
        [layer.values for layer in cache.layers],
        torch.bincount(batch.image_of_row, minlength=image.shape[0]).tolist(),
    )
    assert torch.equal(batch.image_of_row, batch.image_of_row.sort().values)
    start = prefix.shape[1]
    positions = torch.arange(start, start + batch.suffix.shape[1]).expand(batch.suffix.shape[0], -1)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer: (output, weights)
    hooks = [
        llm.layers[layer].self_attn.register_forward_hook(
            lambda _module, _inputs, output, layer=layer: seen.__setitem__(layer, output)
        )
        for layer in {QUESTION_HEAD[0], IMAGE_HEAD[0]}
    ]
    try:
        with attention_implementation(llm.config, SHARED_PREFIX):
            out = llm(
                input_ids=batch.suffix,
                position_ids=positions,
                use_cache=False,
                output_hidden_states=True,
                shared_prefix=shared,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return Outputs(
        model.lm_head(out.last_hidden_state),
        vision,
        kept,
        before[:, text.shape[1] :],
        out.hidden_states[IMAGE_HEAD[0]],
        tuple(seen[layer][1][:, head] for layer, head in (QUESTION_HEAD, IMAGE_HEAD)),
        seen[IMAGE_HEAD[0]][0],
    )


class Probes(torch.nn.Module):
    """Training-only linear read-outs where the image head matches question to patches:
    the answer position must already hold the asked colour and shape, and each image
    token its object's kind and whose centre it holds (counts look at centres).
    Without them both sides start near zero and the match (a product of the two) sits
    on a saddle for thousands of steps. And what that layer's attention adds at each
    answer position must name the next answer token: a short path for the gradient to
    the head's values. Not shipped."""

    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.color = torch.nn.Linear(width, 1 + len(shapes.COLORS))
        self.shape = torch.nn.Linear(width, 1 + len(shapes.SHAPES))
        self.kind = torch.nn.Linear(width, KINDS)
        self.centre = torch.nn.Linear(width, KINDS)
        self.answer = torch.nn.Linear(width, vocab)

    def loss(self, outputs: Outputs, batch: Batch) -> torch.Tensor:
        rows, at = answer_positions(batch)
        asked = outputs.suffix_hidden[rows, at]
        return (
            F.cross_entropy(self.color(asked), batch.asked[rows, 0])
            + F.cross_entropy(self.shape(asked), batch.asked[rows, 1])
            + F.cross_entropy(
                self.kind(outputs.image_hidden).flatten(0, 1),
                batch.content.gather(1, outputs.kept).flatten(),
            )
            + centre_loss(self.centre(outputs.image_hidden), batch.centre.gather(1, outputs.kept))
            + F.cross_entropy(self.answer(outputs.looked[rows, at]), batch.labels[rows, at])
        )


def answer_positions(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of every position that predicts an answer token or the </s>:
    "top left" needs the object again at its second token, and "top" to know it ends."""
    rows, positions = torch.nonzero(batch.labels != IGNORE, as_tuple=True)
    return rows, positions


def kept_focus(focus: torch.Tensor, kept: torch.Tensor, image_of_row: torch.Tensor) -> torch.Tensor:
    """The focus rows (rows, text + 576) over the image tokens the LLM saw (rows, text +
    K), renormalised; a row whose targets were all dropped is all zero (no target)."""
    text = focus.shape[1] - GRID * GRID
    image = focus[:, text:].gather(1, kept[image_of_row])
    row = torch.cat([focus[:, :text], image], dim=1)
    total = row.sum(dim=1, keepdim=True)
    return torch.where(total > 0, row / total.clamp_min(1e-12), row)


def focus_loss(outputs: Outputs, batch: Batch) -> torch.Tensor:
    """Tells the LLM where to look, at every position that predicts the answer, instead
    of leaving it to find out from the answer's loss alone (from scratch, that takes
    thousands of steps): the cross-entropy of the question head's attention against
    the question's words, and of the image head's against the row's focus."""
    question, image = outputs.attention
    rows, at = answer_positions(batch)
    focus = kept_focus(batch.focus, outputs.kept, batch.image_of_row)
    keys = focus.shape[1]  # the prefix: its text and the image tokens seen
    # evenly over the words: all the mass on one (say the "?") would be the easy way out
    words = (torch.arange(question.shape[-1] - keys) < batch.question[rows, None]).float()
    words = words / words.sum(dim=1, keepdim=True)
    read = -(words * torch.log(question[rows, at, keys:] + 1e-9)).sum(dim=1).mean()
    focus = focus[rows]
    wanted = focus.sum(dim=1) > 0
    look = -(focus * torch.log(image[rows, at, :keys] + 1e-9)).sum(dim=1)[wanted].mean()
    return read + look


def question_loss(out: torch.Tensor, batch: Batch, pad_id: int) -> torch.Tensor:
    """Next-token loss on the question words too: the LLM is trained from scratch, so
    this is its language-model training on the only text it will see."""
    targets = batch.suffix[:, 1:].masked_fill(batch.suffix[:, 1:] == pad_id, IGNORE)
    return F.cross_entropy(out[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def exact(logits_: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: every answer token (and </s>) is the argmax."""
    wrong = (logits_.argmax(-1) != labels) & (labels != IGNORE)
    return ~wrong.any(dim=1)


def evaluate(
    model: LlavaForConditionalGeneration,
    encoder: Encoder,
    images: int,
    batch_size: int = 16,
    reduce: Reducer | None = None,
) -> dict[str, float]:
    """Accuracy per question type on the first ``images`` test images (pruned by
    ``reduce``)."""
    right: dict[str, list[bool]] = {kind: [] for kind in shapes.QUESTION_TYPES}
    model.eval()
    with torch.no_grad():
        for start in range(0, images, batch_size):
            batch = encoder.batch("test", list(range(start, min(images, start + batch_size))))
            oks = exact(logits(model, batch, reduce), batch.labels).tolist()
            for kind, ok in zip(batch.types, oks, strict=True):
                right[kind].append(ok)
    model.train()
    return {kind: sum(oks) / len(oks) for kind, oks in right.items()}


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def grid_positions(width: int, scale: float = 0.5) -> torch.Tensor:
    """2-D sine-cosine position embeddings (as in MAE) for the tower's 24 x 24 patches,
    to start from: with the usual small random ones a tower trained from scratch is slow
    to learn to look at its neighbours, and a small object's shape is in its fragments
    on two to four patches."""
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter) / quarter)
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angles = coordinate[:, None].float() * frequencies
        parts += [angles.sin(), angles.cos()]
    return scale * torch.cat(parts, dim=1)


def train(args: argparse.Namespace) -> LlavaForConditionalGeneration:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    encoder = Encoder()
    if args.init is not None:
        model = load(args.init)
    else:
        model = LlavaForConditionalGeneration(build_config(encoder.tokenizer.get_vocab()))
        with torch.no_grad():
            positions = model.model.vision_tower.embeddings.position_embedding.weight
            positions[1:] = grid_positions(positions.shape[1])  # row 0 is [CLS]'s
    model.train()
    heads = PatchHeads(model.config.vision_config.hidden_size)
    probes = Probes(model.config.text_config.hidden_size, model.config.text_config.vocab_size)
    parameters = [*model.parameters(), *heads.parameters(), *probes.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.01)
    order = random.Random(args.seed)
    dropout = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        indices = order.sample(range(args.train_images), args.batch)
        batch = encoder.batch("train", indices, every_question=True)
        reduce = None
        if step >= args.drop_from and order.random() < args.drop_share:
            reduce = random_subsets(order.randint(args.drop_keep, GRID * GRID - 1), dropout)
        outputs = forward(model, batch, reduce)
        out = outputs.logits
        loss = F.cross_entropy(out.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE)
        patch_loss = heads.loss(outputs.vision, batch)
        text_loss = question_loss(out, batch, encoder.pad_id)
        look_loss = focus_loss(outputs, batch) + probes.loss(outputs, batch)
        total = loss + args.patch_weight * patch_loss + args.text_weight * text_loss
        optimizer.zero_grad(set_to_none=True)
        (total + args.focus_weight * look_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - started
            print(
                f"step {step} loss {loss.item():.4f} patch loss {patch_loss.item():.4f} "
                f"focus loss {look_loss.item():.4f} "
                f"{elapsed / 60:.1f} min",
                flush=True,
            )
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            for name in ["none", *args.eval_methods]:
                reduce = None if name == "none" else method_reducer(name, 0.75)
                scores = evaluate(model, encoder, args.eval_images, reduce=reduce)
                print(
                    f"eval {name}", " ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True
                )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FOLDER)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--train-images", type=int, default=200_000)
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument(
        "--eval-methods",
        type=lambda t: t.split(","),
        default=["random"],
        help="also evaluated at prune ratio 0.75",
    )
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--patch-weight", type=float, default=1.0)
    parser.add_argument("--text-weight", type=float, default=1.0)
    parser.add_argument("--focus-weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drop-from", type=int, default=1000, help="token dropout from this step")
    parser.add_argument("--drop-share", type=float, default=0.35, help="share of steps it drops")
    parser.add_argument("--drop-keep", type=int, default=32, help="fewest image tokens it keeps")
    parser.add_argument("--init", type=Path, help="start from this checkpoint (experiments)")
    args = parser.parse_args()
    model = train(args)
    print("saved", save(model, args.out))


if __name__ == "__main__":
    main()
