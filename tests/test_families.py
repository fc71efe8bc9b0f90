"""Every model family end to end: LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

For each family a tiny checkpoint (seeded random weights, built offline) is
served three times: by our server, by our server on two tensor-parallel ranks, and
by plain vLLM with every plugin off; the three run for this module's tests of that
family, then stop.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests
import torch

from devtools.tiny_families import build_tiny_llava_next, build_tiny_qwen2_vl, build_tiny_qwen3
from loadtests import clips
from loadtests.probe import (
    image_messages,
    metric,
    moving_square_video_data_url,
    noise_image_data_url,
)
from vllm_prune.methods import get_method, method_names
from vllm_prune.methods.base import SCOUT

from .conftest import (
    BLOCK_SIZE,
    TRACE_FILE,
    TWO_RANKS,
    Server,
    ask_traced,
    assert_same_on_two_ranks,
    kept_alone,
    plain_command,
    pruned_command,
    running,
    trace_lines_since,
)


@dataclass(frozen=True)
class Family:
    name: str
    build: object  # (path) -> path
    size: tuple[int, int]  # the test image
    tokens: int  # N, vLLM's visual tokens for that image
    refused: tuple[str, ...]  # methods this family answers with a 400
    dtype: str = "float32"  # vLLM's CPU build runs Qwen3.5's linear attention in bfloat16
    # For the two-rank server: in bfloat16 two ranks' sums inside the vision tower move
    # its features by more than the near-ties feature-based methods meet, so Qwen3.5
    # runs its tower whole on each rank (vLLM's ``--mm-encoder-tp-mode data``).
    tp_args: tuple[str, ...] = ()
    args: tuple[str, ...] = ()  # for its three servers


# Read the vision tower (or cut inside it), which these families do not let us do.
VISION = (
    "cls_attention",
    "flowcut",
    "hiprune",
    "holov",
    "mustdrop",
    "prunesid",
    "visiontrim",
    "visionzip",
    "vispruner",
)
# Read attention from the scout pass, which Qwen3.5's linear-attention layers do not have
# and Qwen3-VL-MoE's fused-MoE layers do not run outside vLLM's forward.
SCOUTED = tuple(m for m in method_names() if SCOUT in get_method(m).needs)
NO_SCOUT = tuple(sorted({*VISION, *SCOUTED}))
QWEN3_5 = ((448, 448), 196, NO_SCOUT, "bfloat16", ("--mm-encoder-tp-mode", "data"))
FAMILIES = [
    # 672 x 336 (two crops side by side): base 24 x 24 + a 24 x 48 stitched grid with 24
    # newlines; a generic-adapter declaration (families.llava_next_parts).
    Family("llava-next", build_tiny_llava_next, (672, 336), 576 + 24 * 49, VISION),
    # 448 x 448: 32 x 32 patches of 14 px, merged 2 x 2 -> 16 x 16 tokens.
    Family("qwen2-vl", lambda p: build_tiny_qwen2_vl(p, "2"), (448, 448), 256, VISION),
    # max_num_encoder_input_tokens 512: three pruned images of one step go through the
    # tower in two batches (test_the_tower_encodes_a_call_within_the_encoder_budget).
    Family(
        "qwen2.5-vl",
        lambda p: build_tiny_qwen2_vl(p, "2.5"),
        (448, 448),
        256,
        VISION,
        args=("--max-num-batched-tokens", "512"),
    ),
    # 448 x 448: 28 x 28 patches of 16 px, merged 2 x 2 -> 14 x 14 tokens; DeepStack.
    Family("qwen3-vl", build_tiny_qwen3, (448, 448), 196, VISION),
    Family("qwen3-vl-moe", lambda p: build_tiny_qwen3(p, "vl-moe"), (448, 448), 196, NO_SCOUT),
    # Qwen3.5: Qwen3-VL's tower without DeepStack, a hybrid (linear-attention) LLM.
    Family("qwen3.5", lambda p: build_tiny_qwen3(p, "3.5"), *QWEN3_5),
    Family("qwen3.5-moe", lambda p: build_tiny_qwen3(p, "3.5-moe"), *QWEN3_5),
]
QWEN_ALL = [f for f in FAMILIES if f.name.startswith("qwen")]
# Two ranks add the row-parallel halves in another order: log-probabilities move in the
# last digits of the dtype (bfloat16 keeps 8 bits: 3.8e-3 measured on Qwen3.5).
TP_TOLERANCE = {"float32": 1e-3, "bfloat16": 1e-2}
ARGS = [
    "--enforce-eager", "--max-model-len", "8192",
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
    args = [*ARGS, "--dtype", family.dtype, *family.args]
    commands = {
        "pruned": pruned_command(model, *args),
        "plain": plain_command(model, *args),
        "tp2": pruned_command(model, *args, "--tensor-parallel-size", "2", *family.tp_args),
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


def runnable(family: Family) -> list[str]:
    return [m for m in method_names() if m != "none" and m not in family.refused]


def test_every_method_drops_exactly_the_pruned_tokens(served: Served):
    family = served.family
    unpruned = ask(served.pruned, family, {"prune": "none"}).usage.prompt_tokens
    for method in runnable(family):
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
    document = requests.get(f"{served.pruned.url}/v1/prune/methods", timeout=10).json()
    support = {m["name"]: (m["supported"], m["refusal"]) for m in document["data"]}
    for method in method_names():
        supported, refusal = support[method]
        assert supported == (method not in served.family.refused), method
        assert (refusal is None) == supported, method
    for method in served.family.refused:
        with pytest.raises(openai.BadRequestError) as caught:
            ask(served.pruned, served.family, {"prune": method})
        body = caught.value.body
        assert body["param"] == "prune"
        assert f"'{method}'" in body["message"]
        assert ("[CLS]" if method in VISION else "scout pass") in body["message"]
        listed = body["message"].split("Methods this model runs: ")[1]
        listed = listed.split(" (parameter=")[0].split(", ")  # vLLM appends the parameter
        assert sorted(listed) == sorted(["none", *runnable(served.family)])
        # The methods document gives the same reason before any image is sent.
        assert body["message"].startswith(support[method][1])
    # The server keeps serving.
    assert ask(served.pruned, served.family, {"prune": "pooling"}).usage.prompt_tokens > 0


@pytest.mark.parametrize("served", QWEN_ALL, ids=lambda f: f.name, indirect=True)
def test_metrics_and_log_count_patches_tokens_and_kept_tokens(served: Served):
    """Qwen merges 2 x 2 patches per token: the counters and the log line say so."""
    family, server = served.family, served.pruned
    before = server.metrics_text()
    messages = image_messages("what color is the square ?", seed=31, size=family.size)
    server.client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=1, extra_body={"prune": "pooling"}
    )
    after = server.metrics_text()

    def delta(name: str) -> float:
        return metric(after, name, method="pooling") - metric(before, name, method="pooling")

    kept = keep(family.tokens, 0.75)
    assert delta("vllm_prune_requests_total") == 1
    assert delta("vllm_prune_visual_patches_total") == 4 * family.tokens
    assert delta("vllm_prune_visual_tokens_before_total") == family.tokens
    assert delta("vllm_prune_visual_tokens_after_total") == kept
    if family.name.startswith("qwen3"):  # the layers that hold KV (not Qwen3.5's linear ones)
        text = json.loads((served.model / "config.json").read_text())["text_config"]
        types = text.get("layer_types") or ["full_attention"] * text["num_hidden_layers"]
        layers = sum(t != "linear_attention" for t in types)
        per_token = 2 * layers * text["num_key_value_heads"] * text["head_dim"]
        per_token *= 2 if family.dtype == "bfloat16" else 4
        saved = delta("vllm_prune_kv_cache_bytes_saved_total")
        assert saved == (family.tokens - kept) * per_token
    line = f"patches={4 * family.tokens} tokens={family.tokens} kept={kept} merge=4.00x"
    assert line in server.log.read_text(errors="replace")


def test_two_tensor_parallel_ranks_keep_what_one_keeps(served: Served):
    """Each rank's retained indices (per grid part) equal one rank's, and so does the answer.

    Random weights give flatter log-probabilities than a trained model; two ranks still
    move them in the last digits only.
    """
    family = served.family
    messages = image_messages("what color is the square ?", seed=23, size=family.size)
    for method in ["none", *runnable(family)]:
        extra = {"prune": method, "prune_ratio": 0.75}
        one = ask_traced(served.pruned, served.trace, "tiny", messages, extra)
        two = ask_traced(served.tp2, served.trace, "tiny", messages, extra)
        assert bool(one.kept) == (method != "none"), method
        assert_same_on_two_ranks(one, two, tolerance=TP_TOLERANCE[family.dtype])


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


@pytest.mark.parametrize(
    "served", [f for f in FAMILIES if f.args], ids=lambda f: f.name, indirect=True
)
def test_the_tower_encodes_a_call_within_the_encoder_budget(served: Served):
    """Three pruned images fit one step (the scheduler counts their kept rows) but not one
    tower batch (512 rows, ``max_num_encoder_input_tokens``): the tower encodes them in two
    batches, and each image keeps exactly the rows it keeps when sent alone (``divprune``
    reads the features). One ``prune_budget`` for the three (30 each) keeps them out of
    the encoder cache that the lone requests filled."""
    family = served.family
    seeds, kept = [41, 42, 43], 30
    alone = kept_alone(served.pruned, served.trace, seeds, family.size, kept)
    log_before = served.pruned.log.stat().st_size
    trace_before = served.trace.stat().st_size
    extra = {"prune": "divprune", "prune_budget": kept * len(seeds)}
    together = prompt_tokens(served, extra, [family.size] * len(seeds), seeds)
    lines = trace_lines_since(served.trace, trace_before)
    assert [{(line.rank, line.part): line.indices} for line in lines] == alone
    unpruned = prompt_tokens(served, {"prune": "none"}, [family.size] * len(seeds), seeds)
    assert together == unpruned - len(seeds) * (family.tokens - kept)
    with served.pruned.log.open() as log:
        log.seek(log_before)
        assert "the tower encodes 3 images in 2 batches" in log.read()


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


# Against transformers' own model: the dense float32 ones (Qwen3.5 runs in bfloat16 here).
QWEN = [f for f in FAMILIES if f.name in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")]


@pytest.mark.parametrize("served", QWEN, ids=lambda f: f.name, indirect=True)
def test_pruned_qwen_matches_transformers_at_the_original_positions(served: Served):
    """The engine's pruned prompt == Hugging Face's model on the retained tokens at their
    unpruned M-RoPE positions (from transformers' own ``get_rope_index``) and, for
    Qwen3-VL, with their own DeepStack rows added in the first LLM layers."""
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
        features = model.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
        visual = features.pooler_output[0]
        deepstack = [level[0] for level in getattr(features, "deepstack_features", None) or []]
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

    def top5(position_ids: torch.Tensor, deep_rows: torch.Tensor = rows) -> dict[str, float]:
        extra = {}
        if deepstack:
            extra = {
                "visual_pos_masks": is_image[kept][None],
                "deepstack_visual_embeds": [level[deep_rows] for level in deepstack],
            }
        with torch.no_grad():
            hidden = model.model.language_model(
                inputs_embeds=embeds[kept][None], position_ids=position_ids, **extra
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
    if deepstack:  # and so do the DeepStack rows of the first ``keep`` tokens
        wrong = top5(positions[:, :, kept], deep_rows=torch.arange(keep_count))
        assert any(abs(wrong.get(t, -99.0) - lp) > 2e-3 for t, lp in served_top.items())


# -- Videos (Qwen2.5-VL, Qwen3-VL): the same fields, per frame, through the same servers ------

VIDEO_FAMILIES = [f for f in FAMILIES if f.name in ("qwen2.5-vl", "qwen3-vl")]
CLIP = {"frames": 8, "size": (224, 224), "fps": 4.0}  # made in the test: loadtests.probe


def video_part(seed: int) -> dict:
    return {"type": "video_url", "video_url": {"url": moving_square_video_data_url(seed, **CLIP)}}


def image_part(seed: int, size: tuple[int, int]) -> dict:
    return {"type": "image_url", "image_url": {"url": noise_image_data_url(seed, size)}}


def media_messages(*parts: dict, question: str = "what moves ?") -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


def ask_media(server: Server, messages: list[dict], extra: dict | None, **options):
    return server.client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=3, temperature=0.0, extra_body=extra, **options
    )


def video_shape(served: Served, part: dict | None = None) -> tuple[int, int]:
    """(frames, visual tokens) of a clip (default: the test clip), from the 400 that a keep
    above its tokens gets (a clip of one temporal patch is named as an image there)."""
    with pytest.raises(openai.BadRequestError) as caught:
        ask_media(
            served.pruned,
            media_messages(part or video_part(1)),
            {"prune": "pooling", "prune_keep": 10**7},
        )
    body = caught.value.body
    assert body["param"] == "prune_keep"
    found = re.search(
        r"must be in \[(\d+), (\d+)\] for (?:this image|this video of (\d+) frames)",
        body["message"],
    )
    assert found, body["message"]
    frames, tokens = int(found[1]), int(found[2])
    assert found[3] is None or int(found[3]) == frames
    return frames, tokens


def video_keep(tokens: int, frames: int, ratio: float) -> int:
    return max(frames, round(tokens * (1 - ratio)))


@pytest.mark.parametrize("served", VIDEO_FAMILIES, ids=lambda f: f.name, indirect=True)
def test_video_every_method_drops_exactly_the_pruned_tokens(served: Served):
    frames, tokens = video_shape(served)
    # 8 frames at 4 fps, sampled by Qwen's video processor: two-frame temporal patches.
    assert frames >= 2 and tokens % frames == 0
    messages = media_messages(video_part(1))
    unpruned = ask_media(served.pruned, messages, {"prune": "none"}).usage.prompt_tokens
    for method in runnable(served.family):  # evs and vidcom2 among them
        for ratio in (0.75, 0.95):
            response = ask_media(served.pruned, messages, {"prune": method, "prune_ratio": ratio})
            expected = unpruned - tokens + video_keep(tokens, frames, ratio)
            assert response.usage.prompt_tokens == expected, (method, ratio)


@pytest.mark.parametrize("served", VIDEO_FAMILIES, ids=lambda f: f.name, indirect=True)
def test_video_none_matches_plain_vllm_and_pruning_does_not(served: Served):
    messages = media_messages(video_part(2))
    options = {"logprobs": True, "top_logprobs": 2}
    reference = ask_media(served.plain, messages, None, **options)
    for extra in ({"prune": "none"}, None):
        ours = ask_media(served.pruned, messages, extra, **options)
        assert ours.usage.prompt_tokens == reference.usage.prompt_tokens
        assert ours.choices[0].message.content == reference.choices[0].message.content
        ref = [t.logprob for t in reference.choices[0].logprobs.content]
        assert [t.logprob for t in ours.choices[0].logprobs.content] == pytest.approx(
            ref, rel=1e-5, abs=1e-6
        )
    pruned = ask_media(served.pruned, messages, {"prune": "evs", "prune_ratio": 0.75}, **options)
    assert pruned.usage.prompt_tokens < reference.usage.prompt_tokens
    assert [t.logprob for t in pruned.choices[0].logprobs.content] != pytest.approx(
        [t.logprob for t in reference.choices[0].logprobs.content], rel=1e-5, abs=1e-6
    )


@pytest.mark.parametrize("served", VIDEO_FAMILIES, ids=lambda f: f.name, indirect=True)
def test_video_and_image_in_one_request_each_pruned_and_one_budget_over_both(served: Served):
    family = served.family
    frames, tokens = video_shape(served)
    video, other_video, image = video_part(3), video_part(4), image_part(5, family.size)
    layouts = {
        "video, image": ([video, image], [tokens, family.tokens], [frames, 1]),
        "image, video": ([image, video], [family.tokens, tokens], [1, frames]),
        "two videos": ([video, other_video], [tokens, tokens], [frames, frames]),
    }
    for name, (parts, counts, minimums) in layouts.items():
        messages = media_messages(*parts)
        unpruned = ask_media(served.pruned, messages, {"prune": "none"}).usage.prompt_tokens
        for method in ("pooling", "evs"):
            pruned = ask_media(served.pruned, messages, {"prune": method, "prune_ratio": 0.75})
            kept = sum(max(m, round(n * 0.25)) for n, m in zip(counts, minimums, strict=True))
            assert pruned.usage.prompt_tokens == unpruned - sum(counts) + kept, (name, method)
        budget = sum(minimums) + 40
        spent = ask_media(served.pruned, messages, {"prune": "vidcom2", "prune_budget": budget})
        assert spent.usage.prompt_tokens == unpruned - sum(counts) + budget, name
    # A budget below one token per image and per frame: a 400 naming the field, and then
    # the server keeps serving.
    with pytest.raises(openai.BadRequestError) as caught:
        ask_media(served.pruned, media_messages(video, image), {"prune": "evs", "prune_budget": 2})
    assert caught.value.body["param"] == "prune_budget"
    assert f"[{frames + 1}, {tokens + family.tokens}]" in caught.value.body["message"]
    assert ask_media(served.pruned, media_messages(video), {"prune": "evs"}).usage.prompt_tokens


def frame_runs(prompt_logprobs: list, video_token: int, start: int, end: int) -> list[int]:
    """Video pads between each <|vision_start|> and <|vision_end|> of the prompt."""
    ids = [int(next(iter(entry))) if entry else None for entry in prompt_logprobs]
    runs, inside = [], False
    for token in ids:
        if token == start:
            runs.append(0)
            inside = True
        elif token == end:
            inside = False
        elif inside and token == video_token:
            runs[-1] += 1
    return [r for r in runs if r]


@pytest.mark.parametrize("served", VIDEO_FAMILIES, ids=lambda f: f.name, indirect=True)
def test_video_frames_keep_in_the_prompt_what_the_model_keeps(served: Served):
    """The prompt's tokens per frame (Qwen3-VL: between each frame's timestamp and markers)
    are the rows the engine kept of each frame, as its trace records them."""
    config = json.loads((served.model / "config.json").read_text())
    frames, tokens = video_shape(served)
    per_frame = tokens // frames
    ids = (config["video_token_id"], config["vision_start_token_id"], config["vision_end_token_id"])
    messages = media_messages(video_part(6))
    for method in ("evs", "vidcom2", "pooling", "random"):
        before = served.trace.stat().st_size if served.trace.exists() else 0
        extra = {"prune": method, "prune_ratio": 0.75, "prompt_logprobs": 0}  # the prompt's ids
        response = ask_media(served.pruned, messages, extra)
        lines = trace_lines_since(served.trace, before)
        if method in ("evs", "vidcom2"):
            (line,) = lines
            assert line.part == "video" and line.grid == (
                frames * (per_frame // line.grid[1]),
                line.grid[1],
            )
            kept = torch.bincount(
                torch.tensor(line.indices) // per_frame, minlength=frames
            ).tolist()
        else:
            by_frame = {int(line.part.split()[1]): line.keep for line in lines}
            assert sorted(by_frame) == list(range(frames))
            kept = [by_frame[f] for f in range(frames)]
        assert sum(kept) == video_keep(tokens, frames, 0.75) and min(kept) >= 1
        runs = frame_runs(response.model_extra["prompt_logprobs"], *ids)
        if family_is_qwen3(served):
            assert runs == kept, method  # one run per frame, after its timestamp
        else:
            assert runs == [sum(kept)], method  # one run for the whole video


def family_is_qwen3(served: Served) -> bool:
    return served.family.name.startswith("qwen3")


@pytest.mark.parametrize("served", VIDEO_FAMILIES, ids=lambda f: f.name, indirect=True)
def test_video_metrics_count_images_and_videos_apart(served: Served):
    frames, tokens = video_shape(served)
    family, server = served.family, served.pruned
    before = server.metrics_text()
    messages = media_messages(video_part(7), image_part(8, family.size))
    ask_media(server, messages, {"prune": "evs", "prune_ratio": 0.75})
    after = server.metrics_text()

    def delta(name: str, modality: str) -> float:
        labels = {"method": "evs", "modality": modality}
        return metric(after, name, **labels) - metric(before, name, **labels)

    for modality, n, least in (("video", tokens, frames), ("image", family.tokens, 1)):
        assert delta("vllm_prune_requests_total", modality) == 1
        assert delta("vllm_prune_visual_tokens_before_total", modality) == n
        assert delta("vllm_prune_visual_tokens_after_total", modality) == max(least, round(n / 4))
    log = server.log.read_text(errors="replace")
    assert f"prune method=evs videos=1 patches={4 * tokens} tokens={tokens}" in log


def test_vllms_own_video_pruning_is_refused_at_start_with_what_to_send(tmp_path):
    """``--video-pruning-rate`` on a Qwen family: the engine stops at start and says why."""
    model = str(build_tiny_qwen2_vl(tmp_path / "model", "2.5"))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    command = pruned_command(model, *ARGS, "--video-pruning-rate", "0.5", "--port", "0")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert (
        "does not run with vLLM's own video pruning (--video-pruning-rate)"
        in done.stderr + done.stdout
    )
    assert "'prune': 'evs'" in done.stderr + done.stdout


@pytest.mark.parametrize("served", VIDEO_FAMILIES, ids=lambda f: f.name, indirect=True)
def test_video_two_tensor_parallel_ranks_keep_what_one_keeps(served: Served):
    """A video on two ranks: per frame (spatial methods) or per video (temporal ones),
    each rank keeps the tokens one rank keeps, and the answer is one rank's."""
    messages = media_messages(video_part(9))
    for method in ("none", "evs", "vidcom2", "pooling", "divprune"):
        extra = {"prune": method, "prune_ratio": 0.75}
        one = ask_traced(served.pruned, served.trace, "tiny", messages, extra)
        two = ask_traced(served.tp2, served.trace, "tiny", messages, extra)
        assert bool(one.kept) == (method != "none"), method
        assert_same_on_two_ranks(one, two, tolerance=TP_TOLERANCE[served.family.dtype])


# -- short, degenerate and lying clips (loadtests.clips): an answer or a 400, never a 5xx ---

# The clips these families refuse, each with a 400 naming video_url: opencv decodes no frame
# of a single-frame MP4, and a zero-fps header leaves one frame (Qwen's frame sampler would
# divide by zero, Qwen3-VL's processor needs a whole temporal patch). The others are served.
REFUSED_CLIPS = {"one frame", "zero fps"}


@pytest.mark.parametrize("served", VIDEO_FAMILIES, ids=lambda f: f.name, indirect=True)
def test_degenerate_clips_get_a_400_naming_the_part_or_their_exact_count(served: Served):
    for name, (what, make) in clips.DEGENERATE.items():
        part = {"type": "video_url", "video_url": {"url": clips.data_url(make())}}
        messages = media_messages(part)
        if name in REFUSED_CLIPS:
            for extra in (None, {"prune": "evs", "prune_ratio": 0.75}):
                with pytest.raises(openai.BadRequestError) as caught:
                    ask_media(served.pruned, messages, extra)
                assert caught.value.body["param"] == "video_url", (name, caught.value.body)
            continue
        frames, tokens = video_shape(served, part)
        unpruned = ask_media(served.pruned, messages, {"prune": "none"}).usage.prompt_tokens
        for method in ("pooling", "evs", "vidcom2"):
            response = ask_media(served.pruned, messages, {"prune": method, "prune_ratio": 0.75})
            expected = unpruned - tokens + video_keep(tokens, frames, 0.75)
            assert response.usage.prompt_tokens == expected, (name, what, method)
    assert requests.get(f"{served.pruned.url}/health", timeout=10).status_code == 200
