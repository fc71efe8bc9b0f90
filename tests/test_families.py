"""Every model family end to end: LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL.

For each family a tiny checkpoint (seeded random weights, built offline) is
served three times: by our server, by our server on two tensor-parallel ranks, and
by plain vLLM with every plugin off; the three run for this module's tests of that
family, then stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from devtools.tiny_families import build_tiny_llava_next, build_tiny_qwen2_vl
from loadtests.probe import image_messages, noise_image_data_url
from vllm_prune.methods import method_names

from .conftest import (
    BLOCK_SIZE,
    TRACE_FILE,
    TWO_RANKS,
    Server,
    ask_traced,
    assert_same_on_two_ranks,
    plain_command,
    pruned_command,
    running,
)


@dataclass(frozen=True)
class Family:
    name: str
    build: object  # (path) -> path
    size: tuple[int, int]  # the test image
    tokens: int  # N, vLLM's visual tokens for that image
    refused: tuple[str, ...]  # methods this family answers with a 400


# Read the vision tower (or cut inside it), which these families do not let us do.
VISION = ("cls_attention", "flowcut", "hiprune", "mustdrop", "visionzip", "vispruner")
FAMILIES = [
    # 672 x 672: base 24 x 24 + a 48 x 48 stitched grid with 48 newlines.
    Family("llava-next", build_tiny_llava_next, (672, 672), 576 + 48 * 49, VISION),
    # 448 x 448: 32 x 32 patches of 14 px, merged 2 x 2 -> 16 x 16 tokens.
    Family("qwen2-vl", lambda p: build_tiny_qwen2_vl(p, "2"), (448, 448), 256, VISION),
    Family("qwen2.5-vl", lambda p: build_tiny_qwen2_vl(p, "2.5"), (448, 448), 256, VISION),
]
ARGS = [
    "--dtype", "float32", "--enforce-eager", "--max-model-len", "8192",
    "--block-size", str(BLOCK_SIZE), "--served-model-name", "tiny",
]  # fmt: skip


@dataclass
class Served:
    family: Family
    pruned: Server
    plain: Server
    tp2: Server
    model: Path
    trace: Path


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.name)
def served(request, tmp_path_factory) -> Served:
    family: Family = request.param
    root: Path = tmp_path_factory.mktemp(family.name)
    model = str(family.build(root / "model"))  # type: ignore[operator]
    commands = {
        "pruned": pruned_command(model, *ARGS),
        "plain": plain_command(model, *ARGS),
        "tp2": pruned_command(model, *ARGS, "--tensor-parallel-size", "2"),
    }
    with running(root, commands, envs={"tp2": TWO_RANKS}) as started:
        yield Served(
            family,
            started["pruned"],
            started["plain"],
            started["tp2"],
            Path(model),
            root / TRACE_FILE,
        )


def ask(server: Server, family: Family, extra: dict | None, question="what color is the square ?"):
    return server.client.chat.completions.create(
        model="tiny",
        messages=image_messages(question, seed=11, size=family.size),
        max_tokens=5,
        temperature=0.0,
        logprobs=True,
        top_logprobs=2,
        extra_body=extra,
    )


def keep(n: int, ratio: float) -> int:
    return max(1, round(n * (1 - ratio)))


RUNNABLE = [m for m in method_names() if m != "none" and m not in VISION]


def test_every_method_drops_exactly_the_pruned_tokens(served: Served):
    family = served.family
    unpruned = ask(served.pruned, family, {"prune": "none"}).usage.prompt_tokens
    for method in RUNNABLE:
        for ratio in (0.75, 0.889):
            response = ask(served.pruned, family, {"prune": method, "prune_ratio": ratio})
            expected = unpruned - (family.tokens - keep(family.tokens, ratio))
            assert response.usage.prompt_tokens == expected, (method, ratio)


def test_none_matches_plain_vllm_and_pruning_does_not(served: Served):
    family = served.family
    reference = ask(served.plain, family, None)
    ours = ask(served.pruned, family, {"prune": "none"})
    assert ours.usage.prompt_tokens == reference.usage.prompt_tokens
    ref_tokens = [t.logprob for t in reference.choices[0].logprobs.content]
    our_tokens = [t.logprob for t in ours.choices[0].logprobs.content]
    assert ours.choices[0].message.content == reference.choices[0].message.content
    assert our_tokens == pytest.approx(ref_tokens, rel=1e-5, abs=1e-6)
    pruned = ask(served.pruned, family, {"prune": "pooling", "prune_ratio": 0.75})
    pruned_tokens = [t.logprob for t in pruned.choices[0].logprobs.content]
    assert pruned_tokens != pytest.approx(ref_tokens, rel=1e-5, abs=1e-6)


def test_methods_the_family_cannot_run_are_refused_with_the_reason(served: Served):
    for method in served.family.refused:
        with pytest.raises(openai.BadRequestError) as caught:
            ask(served.pruned, served.family, {"prune": method})
        body = caught.value.body
        assert body["param"] == "prune"
        assert "[CLS]" in body["message"]
    # The server keeps serving.
    assert ask(served.pruned, served.family, {"prune": "pooling"}).usage.prompt_tokens > 0


def test_two_tensor_parallel_ranks_keep_what_one_keeps(served: Served):
    """Each rank's retained indices (per grid part) equal one rank's, and so does the answer.

    Random weights give flatter log-probabilities than a trained model; two ranks still
    move them in the last digits only.
    """
    family = served.family
    messages = image_messages("what color is the square ?", seed=23, size=family.size)
    for method in ["none", *RUNNABLE]:
        extra = {"prune": method, "prune_ratio": 0.75}
        one = ask_traced(served.pruned, served.trace, "tiny", messages, extra)
        two = ask_traced(served.tp2, served.trace, "tiny", messages, extra)
        assert bool(one.kept) == (method != "none"), method
        assert_same_on_two_ranks(one, two, tolerance=1e-3)


def images_message(sizes: list[tuple[int, int]], seeds: list[int]) -> list[dict]:
    parts = [
        {"type": "image_url", "image_url": {"url": noise_image_data_url(seed, size)}}
        for seed, size in zip(seeds, sizes, strict=True)
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "which is red ?"}]}]


def prompt_tokens(served: Served, extra: dict, sizes, seeds) -> int:
    response = served.pruned.client.chat.completions.create(
        model="tiny", messages=images_message(sizes, seeds), max_tokens=1, extra_body=extra
    )
    return response.usage.prompt_tokens


def test_budget_spreads_over_images_of_different_sizes(served: Served):
    family = served.family
    small = (336, 336)
    none = {"prune": "none"}
    text_only = prompt_tokens(served, none, [], [])
    # Qwen wraps each image in <|vision_start|> ... <|vision_end|>: 2 tokens around N.
    wrap = prompt_tokens(served, none, [family.size], [1]) - text_only - family.tokens
    n_small = prompt_tokens(served, none, [small], [3]) - text_only - wrap
    both = prompt_tokens(served, none, [family.size, small], [1, 3])
    assert both == text_only + 2 * wrap + family.tokens + n_small
    budget = 120
    extra = {"prune": "pooling", "prune_budget": budget}
    spent = prompt_tokens(served, extra, [family.size, small], [1, 3])
    assert spent == text_only + 2 * wrap + budget
    # The same image with another companion: its share is computed anew, not
    # taken from the cache of the first request.
    other = prompt_tokens(served, extra, [family.size, family.size], [1, 4])
    assert other == text_only + 2 * wrap + budget
    assert prompt_tokens(served, extra, [family.size, small], [1, 3]) == spent
    with pytest.raises(openai.BadRequestError) as caught:
        prompt_tokens(served, {"prune": "pooling", "prune_budget": 1}, [family.size, small], [1, 3])
    assert caught.value.body["param"] == "prune_budget"


def first_token_logprobs(server: Server, messages, extra: dict):
    response = server.client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=1,
        temperature=0.0,
        logprobs=True,
        top_logprobs=5,
        extra_body={**extra, "return_token_ids": True, "return_tokens_as_token_ids": True},
    )
    top = response.choices[0].logprobs.content[0].top_logprobs
    return response.prompt_token_ids, {t.token: t.logprob for t in top}


QWEN = [f for f in FAMILIES if f.name.startswith("qwen")]


@pytest.mark.parametrize("served", QWEN, ids=lambda f: f.name, indirect=True)
def test_pruned_qwen_matches_transformers_at_the_original_positions(served: Served):
    """The engine's pruned prompt == Hugging Face's model on the retained tokens at their
    unpruned M-RoPE positions (from transformers' own ``get_rope_index``)."""
    family = served.family
    import base64
    import io

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    messages = image_messages("what color is the square ?", seed=11, size=family.size)
    seed, keep_count = 3, keep(family.tokens, 0.75)
    full_ids, _ = first_token_logprobs(served.pruned, messages, {"prune": "none"})
    pruned_ids, served_top = first_token_logprobs(
        served.pruned, messages, {"prune": "random", "prune_ratio": 0.75, "prune_seed": seed}
    )

    model = AutoModelForImageTextToText.from_pretrained(served.model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(served.model)
    url = messages[0]["content"][0]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    pixels = processor.image_processor(images=[image], return_tensors="pt")
    ids = torch.tensor(full_ids)
    is_image = ids == model.config.image_token_id
    assert int(is_image.sum()) == family.tokens
    with torch.no_grad():
        visual = model.model.get_image_features(
            pixels["pixel_values"], pixels["image_grid_thw"]
        ).pooler_output[0]
        positions, _ = model.model.get_rope_index(
            ids[None], is_image.int()[None], image_grid_thw=pixels["image_grid_thw"]
        )
        embeds = model.model.get_input_embeddings()(ids)
        embeds[is_image] = visual

    # The rows ``random`` keeps (its draw depends only on N and the seed).
    rows = torch.sort(
        torch.randperm(family.tokens, generator=torch.Generator().manual_seed(seed))[:keep_count]
    ).values
    kept = ~is_image
    kept[torch.nonzero(is_image).squeeze(1)[rows]] = True
    assert ids[kept].tolist() == pruned_ids  # the engine's prompt is the retained sequence

    def top5(position_ids: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            hidden = model.model.language_model(
                inputs_embeds=embeds[kept][None], position_ids=position_ids
            ).last_hidden_state
            logprobs = model.lm_head(hidden[0, -1]).log_softmax(-1)
        return {f"token_id:{int(i)}": float(logprobs[i]) for i in logprobs.topk(5).indices}

    reference = top5(positions[:, :, kept])
    assert set(reference) == set(served_top)
    for token, logprob in served_top.items():
        assert logprob == pytest.approx(reference[token], abs=2e-3), token
    # The comparison can fail: contiguous positions for the pruned sequence differ.
    naive = torch.arange(int(kept.sum())).expand(3, 1, -1)
    wrong = top5(naive)
    assert any(abs(wrong.get(t, -99.0) - lp) > 2e-3 for t, lp in served_top.items())
