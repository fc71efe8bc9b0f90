"""The training code of ``shapes-llava`` (``devtools/train_shapes.py``), on a fresh model.

Its forward pass shares each image's prefix between the image's questions; here it has
to equal transformers' own ``LlavaForConditionalGeneration`` on the full prompts. The
inputs have to be what the server feeds the model: the processor's pixels and the chat
template's tokens, every word in the vocabulary.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from devtools import shapes_llava
from devtools.train_shapes import (
    GRID,
    IGNORE,
    IMAGE_HEAD,
    MIN_COVER,
    QUESTION_HEAD,
    Encoder,
    asked_in,
    every_template_question,
    focus_row,
    forward,
    grid_positions,
    kept_focus,
    kind,
    method_reducer,
    patch_targets,
    random_subsets,
)
from vllm_prune.eval import shapes
from vllm_prune.eval.sample import SHORT_ANSWER


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


def full_prompt(model, encoder: Encoder, batch, row: int, **kwargs):  # type: ignore[no-untyped-def]
    """transformers' own LLaVA forward on question ``row`` as one whole prompt."""
    ids = torch.cat([batch.prefix, torch.full((GRID * GRID,), encoder.image_id), batch.suffix[row]])
    pixels = batch.pixels[batch.image_of_row[row]][None]
    return model(input_ids=ids[None], pixel_values=pixels, **kwargs)


def test_shared_prefix_forward_equals_transformers_on_full_prompts(encoder: Encoder) -> None:
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(shapes_llava.build_config(encoder.tokenizer.get_vocab()))
    model.eval()
    batch = encoder.batch("train", [3, 4], every_question=True)
    with torch.no_grad():
        shared = forward(model, batch).logits
        for row in (0, 5, len(batch.types) - 1):
            full = full_prompt(model, encoder, batch, row).logits[0, -batch.suffix.shape[1] :]
            torch.testing.assert_close(shared[row], full, atol=1e-4, rtol=1e-4)


def pruned_prompt(model, batch, row: int, image: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """transformers' LLM on question ``row`` as one whole prompt whose image is ``image``
    (the kept image tokens), positions numbered on without gaps as the server does."""
    embed = model.model.language_model.embed_tokens
    prompt = torch.cat([embed(batch.prefix), image, embed(batch.suffix[row])])
    hidden = model.model.language_model(inputs_embeds=prompt[None]).last_hidden_state
    return model.lm_head(hidden)[0, -batch.suffix.shape[1] :]


@pytest.mark.parametrize("pruning", ["pooling", "random_subsets"])
def test_pruned_forward_equals_transformers_on_pruned_prompts(
    encoder: Encoder, pruning: str
) -> None:
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(shapes_llava.build_config(encoder.tokenizer.get_vocab()))
    model.eval()
    batch = encoder.batch("train", [3, 4], every_question=True)
    if pruning == "pooling":
        reduce = method_reducer("pooling", 0.75)
    else:
        reduce = random_subsets(100, torch.Generator().manual_seed(0))
    with torch.no_grad():
        vision = model.model.vision_tower(batch.pixels).last_hidden_state[:, 1:]
        images, kept = reduce(model.model.multi_modal_projector(vision))
        if pruning == "random_subsets":  # the same draw again inside forward
            reduce = random_subsets(100, torch.Generator().manual_seed(0))
        outputs = forward(model, batch, reduce)
        assert torch.equal(outputs.kept, kept) and kept.shape[1] in (144, 100)
        for row in (0, 5, len(batch.types) - 1):
            image = images[batch.image_of_row[row]]
            expected = pruned_prompt(model, batch, row, image)
            torch.testing.assert_close(outputs.logits[row], expected, atol=1e-4, rtol=1e-4)


def test_random_subsets_draw_afresh_per_image_in_raster_order() -> None:
    image = torch.arange(2 * 576 * 3, dtype=torch.float32).view(2, 576, 3)
    features, kept = random_subsets(50, torch.Generator().manual_seed(1))(image)
    assert features.shape == (2, 50, 3) and kept.shape == (2, 50)
    for one in range(2):
        assert torch.equal(kept[one], kept[one].unique())  # distinct, ascending
        assert torch.equal(features[one], image[one, kept[one]])
    assert not torch.equal(kept[0], kept[1])


def test_method_reducer_is_the_methods_own_choice_and_refuses_model_signals() -> None:
    image = torch.randn(2, 576, 8)
    features, kept = method_reducer("divprune", 0.889)(image)
    from vllm_prune.methods.base import Context
    from vllm_prune.methods.registry import get_method

    for one in range(2):
        expected = get_method("divprune").reduce(image[one], (GRID, GRID), 64, Context())
        assert torch.equal(kept[one], expected.indices)
        assert torch.equal(features[one], expected.features)
    with pytest.raises(ValueError, match="fastv needs model signals"):
        method_reducer("fastv", 0.75)


def test_kept_focus_follows_the_kept_tokens() -> None:
    text = 2
    focus = torch.zeros(2, text + GRID * GRID)
    focus[0, text + 10] = focus[0, text + 20] = 0.5  # an object on patches 10 and 20
    focus[1, text + 30] = 1.0  # one on patch 30
    kept = torch.tensor([[5, 10, 40]])  # patch 20 and 30 dropped
    rows = kept_focus(focus, kept, torch.tensor([0, 0]))
    assert rows.shape == (2, text + 3)
    torch.testing.assert_close(rows[0], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
    assert rows[1].sum() == 0  # its object dropped: no target, not a made-up one


def test_focus_heads_attention_equals_transformers_eager_attention(encoder: Encoder) -> None:
    """The focus loss trains the attention rows ``forward`` returns: they must be the
    model's own (transformers' eager attention over the full prompt), prefix and all."""
    torch.manual_seed(0)
    config = shapes_llava.build_config(encoder.tokenizer.get_vocab())
    config.text_config._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(config).eval()
    batch = encoder.batch("train", [3, 4], every_question=True)
    length = batch.suffix.shape[1]
    with torch.no_grad():
        attention = forward(model, batch).attention
        for row in (1, len(batch.types) - 2):
            full = full_prompt(model, encoder, batch, row, output_attentions=True).attentions
            for (layer, head), ours in zip((QUESTION_HEAD, IMAGE_HEAD), attention, strict=True):
                expected = full[layer][0, head, -length:]
                torch.testing.assert_close(ours[row], expected, atol=1e-5, rtol=1e-4)


def test_saved_checkpoint_loads_back(encoder: Encoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    model = LlavaForConditionalGeneration(shapes_llava.build_config(encoder.tokenizer.get_vocab()))
    loaded = shapes_llava.load(shapes_llava.save(model, tmp_path / "checkpoint"))
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_pixels_are_the_image_processors(encoder: Encoder) -> None:
    image = shapes.render(shapes.make_scene(11))
    processor = shapes_llava.build_processor(encoder.tokenizer).image_processor
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(encoder.pixels(image), expected, atol=1e-5, rtol=1e-5)


def test_prompt_is_the_chat_template_and_every_word_is_known(encoder: Encoder) -> None:
    tokenizer = encoder.tokenizer
    for index in range(40):
        for item in shapes.image_items("train", index):
            ids = encoder.prompt_ids(item.question)
            assert tokenizer.unk_token_id not in ids
            text = tokenizer.decode(ids)
            assert text.startswith("user : <image>") and text.endswith("assistant :"), text
            assert SHORT_ANSWER.lower()[:-1] in text
            answer = tokenizer(item.answer, add_special_tokens=False).input_ids
            assert tokenizer.unk_token_id not in answer


def test_labels_are_the_answer_and_end_of_sequence(encoder: Encoder) -> None:
    batch = encoder.batch("test", [0])
    for row, item in enumerate(shapes.image_items("test", 0)):
        labels = batch.labels[row][batch.labels[row] != IGNORE].tolist()
        answer = encoder.tokenizer(item.answer, add_special_tokens=False).input_ids
        assert labels == [*answer, encoder.tokenizer.eos_token_id]


def test_every_template_question_is_true_of_the_scene() -> None:
    for seed in range(30):
        objects = shapes.make_scene(seed)
        asked = every_template_question(objects, random.Random(seed))
        drawn = {(o.color, o.shape) for o in objects}
        yes = no = 0
        for kind_, question, answer, _focus in asked:
            words = question.rstrip("?").split()
            if kind_ == "existence":
                assert ((words[3], words[4]) in drawn) == (answer == "yes")
                yes, no = yes + (answer == "yes"), no + (answer == "no")
            elif kind_ == "count":
                assert int(answer) == sum(o.shape == words[2][:-1] for o in objects)
            elif kind_ == "color":
                (only,) = [o for o in objects if o.shape == words[-1]]
                assert answer == only.color
            elif kind_ == "location":
                (obj,) = [o for o in objects if (o.color, o.shape) == (words[3], words[4])]
                assert answer == shapes.CELLS[obj.cell]
            elif words[:3] == ["How", "many", "objects"]:
                assert answer == str(len(objects))
            elif words[-1] == "object":
                assert (answer == "yes") == any(o.color == words[3] for o in objects)
            else:
                assert (answer == "yes") == any(o.shape == words[3] for o in objects)
        assert yes == len(objects) == no  # balanced, as the benchmark's existence questions


def test_patch_targets_follow_the_object_map() -> None:
    objects = shapes.make_scene(5)
    content, centre = patch_targets(objects)
    ids = np.asarray(shapes.object_map(objects))
    for obj_index, obj in enumerate(objects):
        x, y = (obj.box[0] + obj.box[2]) // 2, (obj.box[1] + obj.box[3]) // 2
        assert centre[(y // 14) * GRID + x // 14] == kind(obj)
        pixels = [
            int((ids[r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14] == obj_index + 1).sum())
            for r in range(GRID)
            for c in range(GRID)
        ]
        covered = {p for p, n in enumerate(pixels) if n >= MIN_COVER}
        grazed = {p for p, n in enumerate(pixels) if 0 < n < MIN_COVER}
        assert covered and all(content[p] == kind(obj) for p in covered)
        assert all(content[p] == 0 for p in grazed)
    assert (centre > 0).sum() == len(objects)


def test_tower_positions_start_near_alike_for_neighbours() -> None:
    """The tower's starting position embeddings: a patch is more like its neighbour than
    like a patch six away, along rows and along columns (so attending to neighbours is
    easy from the first step)."""
    positions = grid_positions(128)
    assert positions.shape == (GRID * GRID, 128)
    similarity = positions @ positions.T
    for r, c in ((0, 0), (11, 12), (17, 5)):
        here = r * GRID + c
        assert similarity[here, here + 1] > similarity[here, here + 6]  # along the row
        assert similarity[here, here + GRID] > similarity[here, here + 6 * GRID]  # column


def test_focus_is_where_the_answer_is() -> None:
    """The attention targets: the asked object's patches, the first token for "nothing",
    each counted object's centre plus one share for the first token."""
    prefix = 2
    for seed in range(30):
        objects = shapes.make_scene(seed)
        content, centre = patch_targets(objects)
        for kind_, _question, answer, focus in every_template_question(
            objects, random.Random(seed)
        ):
            row = focus_row(prefix, content, centre, focus)
            torch.testing.assert_close(row.sum(), torch.tensor(1.0))
            image, sink = row[prefix:], row[0]
            if kind_ == "existence" and answer == "no":
                assert sink == 1.0
            elif kind_ == "count":
                n = int(answer)
                assert sink == pytest.approx(1 / (n + 1))
                assert int((image > 0).sum()) == n
                assert all(int(centre[p]) in focus[1] for p in torch.nonzero(image).flatten())
            elif kind_ in ("existence", "color", "location"):
                (target,) = focus[1]
                assert sink == 0
                hit = (content == target) | (centre == target)
                assert torch.equal(image > 0, hit) and hit.any()
        assert focus_row(prefix, content, centre).sum() == 0  # no target: no loss


def test_asked_in_names_colour_and_shape() -> None:
    assert asked_in("Is there a red circle?") == (1, 1)
    assert asked_in("How many squares are there?") == (0, 2)
    assert asked_in("What color is the triangle?") == (0, 3)
    assert asked_in("Is there a purple object?") == (5, 0)
    assert asked_in("How many objects are there?") == (0, 0)
