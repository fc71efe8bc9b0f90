"""End to end: the real openai client -> vllm-prune server -> vLLM engine (CPU).

The server under test starts with ``--prune-default pooling --prune-ratio 0.75``;
tests that want the unpruned model send ``prune: "none"``, which always wins.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from loadtests.probe import image_messages, measure_kv, metric
from vllm_prune.integration import compat
from vllm_prune.methods import method_names
from vllm_prune.spec import MAX_QUESTION_TOKENS, MAX_TEXT_CHARS

from .conftest import BLOCK_SIZE, TRACE_FILE, Server, ask_traced

N = 576  # LLaVA-1.5 at 336 px: a 24 x 24 grid of visual tokens
KEEP = {0.75: 144, 0.889: 64}
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 32 * 4  # K and V x layers x KV heads x head dim x fp32


def chat(server: Server, model: str, extra: dict, messages=None, **kwargs):
    kwargs.setdefault("max_tokens", 4)
    kwargs.setdefault("temperature", 0.0)
    return server.client.chat.completions.create(
        model=model, messages=messages or image_messages(), extra_body=extra, **kwargs
    )


@pytest.fixture(scope="module")
def unpruned_prompt_tokens(server: Server, model_name: str) -> int:
    return chat(server, model_name, {"prune": "none"}).usage.prompt_tokens


PRUNING = [name for name in method_names() if name != "none"]
ALLOWED = ", ".join(method_names())


@pytest.mark.parametrize("method", PRUNING)
@pytest.mark.parametrize("ratio", [0.75, 0.889])
def test_prompt_tokens_drop_by_removed_visual_tokens(
    server, model_name, unpruned_prompt_tokens, method, ratio
):
    response = chat(server, model_name, {"prune": method, "prune_ratio": ratio})
    assert response.usage.prompt_tokens == unpruned_prompt_tokens - (N - KEEP[ratio])


@pytest.mark.parametrize("method", PRUNING)
def test_prune_keep_sets_the_absolute_count(server, model_name, unpruned_prompt_tokens, method):
    response = chat(server, model_name, {"prune": method, "prune_keep": 100})
    assert response.usage.prompt_tokens == unpruned_prompt_tokens - (N - 100)


def test_server_default_applies_and_none_turns_it_off(server, model_name, unpruned_prompt_tokens):
    # No prune field: the server default (pooling at 0.75) applies.
    default = chat(server, model_name, {})
    assert default.usage.prompt_tokens == unpruned_prompt_tokens - (N - KEEP[0.75])
    # A method without a ratio takes the server's default ratio.
    named = chat(server, model_name, {"prune": "random"})
    assert named.usage.prompt_tokens == default.usage.prompt_tokens
    off = chat(server, model_name, {"prune": "none", "prune_ratio": 0.5})
    assert off.usage.prompt_tokens == unpruned_prompt_tokens


def test_image_size_does_not_change_the_token_count(server, model_name, unpruned_prompt_tokens):
    wide = image_messages(seed=3, size=(640, 360))
    assert (
        chat(server, model_name, {"prune": "none"}, wide).usage.prompt_tokens
        == unpruned_prompt_tokens
    )
    pruned = chat(server, model_name, {"prune": "pooling", "prune_ratio": 0.889}, wide)
    assert pruned.usage.prompt_tokens == unpruned_prompt_tokens - (N - 64)


SETTINGS_KV = {
    "none": {"prune": "none"},
    "pooling-0.75": {"prune": "pooling", "prune_ratio": 0.75},
    "pooling-0.889": {"prune": "pooling", "prune_ratio": 0.889},
    "random-0.75": {"prune": "random", "prune_ratio": 0.75},
}


def test_kv_cache_reported_by_vllm_shrinks_by_the_pruned_tokens(server, model_name):
    """vLLM's own numbers: KV tokens computed at prefill, KV blocks held in its prefix cache."""
    reports = {
        label: measure_kv(server.client, server.url, model_name, extra, seed)
        for seed, (label, extra) in enumerate(SETTINGS_KV.items(), start=100)
    }
    for label, report in reports.items():
        assert report.block_size == BLOCK_SIZE
        # vLLM computed KV for exactly the prompt it was given ...
        assert report.computed_tokens == report.prompt_tokens, label
        # ... and keeps every full block of it (the last token is always recomputed).
        assert report.cached_tokens == (report.prompt_tokens - 1) // BLOCK_SIZE * BLOCK_SIZE, label
    none = reports["none"]
    for label, ratio in (("pooling-0.75", 0.75), ("pooling-0.889", 0.889), ("random-0.75", 0.75)):
        assert none.computed_tokens - reports[label].computed_tokens == N - KEEP[ratio]
    assert [reports[k].blocks for k in ("none", "pooling-0.75", "pooling-0.889")] == [
        math.ceil(none.prompt_tokens / BLOCK_SIZE),
        math.ceil((none.prompt_tokens - (N - 144)) / BLOCK_SIZE),
        math.ceil((none.prompt_tokens - (N - 64)) / BLOCK_SIZE),
    ]


def _greedy(server: Server, model: str, extra: dict | None, messages=None):
    response = server.client.chat.completions.create(
        model=model,
        messages=messages or image_messages(seed=5),
        max_tokens=6,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
        extra_body=extra,
    )
    choice = response.choices[0]
    tokens = [t.token for t in choice.logprobs.content]
    logprobs = [t.logprob for t in choice.logprobs.content]
    return response.usage.prompt_tokens, tokens, logprobs


def test_none_and_ratio_zero_match_plain_vllm(server, plain_server, model_name):
    assert "vllm_prune_" not in plain_server.metrics_text()  # no plugin in the reference
    reference = _greedy(plain_server, model_name, None)
    for extra in (
        {"prune": "none"},
        {"prune": "pooling", "prune_ratio": 0.0},
        {"prune": "random", "prune_ratio": 0.0},
    ):
        prompt, tokens, logprobs = _greedy(server, model_name, extra)
        assert prompt == reference[0], extra
        assert tokens == reference[1], extra
        assert logprobs == pytest.approx(reference[2], rel=1e-5, abs=1e-6), extra
    # The comparison can fail: pruning does change what the model sees.
    pruned = _greedy(server, model_name, {"prune": "pooling", "prune_ratio": 0.75})
    assert pruned[2] != pytest.approx(reference[2], rel=1e-5, abs=1e-6)


def test_concurrent_requests_keep_their_own_settings(server, model_name):
    settings = [
        {"prune": "none"},
        {"prune": "pooling", "prune_ratio": 0.75},
        {"prune": "pooling", "prune_ratio": 0.889},
        {"prune": "random", "prune_ratio": 0.75},
        {"prune": "random", "prune_ratio": 0.75, "prune_seed": 7},
        {"prune": "pooling", "prune_keep": 9},
    ]
    alone = [_greedy(server, model_name, extra) for extra in settings]
    with ThreadPoolExecutor(max_workers=len(settings) * 2) as pool:
        together = list(pool.map(lambda e: _greedy(server, model_name, e), settings * 2))
    for extra, expected, got in zip(settings * 2, alone * 2, together, strict=True):
        assert got[0] == expected[0], extra
        assert got[1] == expected[1], extra
        assert got[2] == pytest.approx(expected[2], rel=1e-4, abs=1e-5), extra
    unpruned = alone[0][0]
    assert [r[0] for r in alone] == [
        unpruned,
        unpruned - (N - 144),
        unpruned - (N - 64),
        unpruned - (N - 144),
        unpruned - (N - 144),
        unpruned - (N - 9),
    ]
    # The two seeds select different tokens, so the model sees different inputs.
    assert alone[3][2] != pytest.approx(alone[4][2], rel=1e-5, abs=1e-6)


BAD_REQUESTS = [
    ({"prune": "bogus"}, "prune", [ALLOWED]),
    ({"prune": 3}, "prune", [ALLOWED]),
    ({"prune": "pooling", "prune_ratio": 1.0}, "prune_ratio", ["[0, 1)"]),
    ({"prune": "pooling", "prune_ratio": -0.1}, "prune_ratio", ["[0, 1)"]),
    ({"prune": "pooling", "prune_ratio": "half"}, "prune_ratio", ["number"]),
    ({"prune": "pooling", "prune_ratio": True}, "prune_ratio", ["number"]),
    ({"prune": "pooling", "prune_keep": 0}, "prune_keep", [">= 1"]),
    ({"prune": "pooling", "prune_keep": 2.5}, "prune_keep", ["integer"]),
    ({"prune": "pooling", "prune_keep": 577}, "prune_keep", ["[1, 576]"]),
    ({"prune": "pooling", "prune_keep": 10, "prune_ratio": 0.5}, "prune_ratio", ["prune_keep"]),
    ({"prune": "random", "prune_seed": -1}, "prune_seed", ["[0, 4294967295]"]),
    ({"prune": "random", "prune_seed": "x"}, "prune_seed", ["integer"]),
    ({"prune": "pooling", "prune_seed": 1}, "prune_seed", ["pooling"]),
    ({"prune_ratio": 0.5}, "prune_ratio", [ALLOWED]),
    ({"prune": "dart", "prune_pivots": 0}, "prune_pivots", ["[1, 64]"]),
    ({"prune": "fastv", "prune_layer": 3}, "prune_layer", ["at most 2"]),
    ({"prune": "balanced", "prune_alpha": 1.5}, "prune_alpha", ["[0.0, 1.0]"]),
    ({"prune": "fastv", "prune_text": "x"}, "prune_text", ["set by the server"]),
    ({"prune": "pooling", "prune_ration": 0.5}, "prune_ration", ["prune_ratio, "]),
    ({"prune_method": "pooling"}, "prune_method", ["not a prune field", "prune_budget"]),
    ({"mm_processor_kwargs": {"do_resize": False}}, "mm_processor_kwargs", ["prune_ratio"]),
    ({"mm_processor_kwargs": {"prune": "pooling"}, "prune": "none"}, "prune", ["once"]),
    ({"media_io_kwargs": {"image": {"mode": "L"}}}, "media_io_kwargs", []),
]


@pytest.mark.parametrize(("extra", "field", "mentions"), BAD_REQUESTS)
def test_bad_input_is_a_400_naming_the_field(server, model_name, extra, field, mentions):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(server, model_name, extra)
    error = caught.value
    assert error.status_code == 400
    message = error.body["message"]
    assert f"'{field}'" in message
    for text in mentions:
        assert text in message
    # The server keeps serving.
    assert chat(server, model_name, {"prune": "pooling"}).usage.prompt_tokens > 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json; charset=utf-8"])
def test_processor_kwargs_are_filtered_whatever_the_content_type(server, model_name, content_type):
    body = {
        "model": model_name,
        "messages": image_messages(),
        "max_tokens": 2,
        "mm_processor_kwargs": {"do_resize": False},
    }
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = requests.post(
        f"{server.url}/v1/chat/completions", data=json.dumps(body), headers=headers, timeout=60
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "mm_processor_kwargs"


def test_bad_input_on_text_only_request_is_still_refused(server, model_name):
    text_only = [{"role": "user", "content": "what is in the image ?"}]
    with pytest.raises(openai.BadRequestError):
        chat(server, model_name, {"prune": "bogus"}, text_only)


def test_prune_fields_without_images_are_a_no_op(server, model_name):
    text_only = [{"role": "user", "content": "what is in the image ?"}]
    plain = chat(server, model_name, {}, text_only)
    pruned = chat(server, model_name, {"prune": "pooling", "prune_ratio": 0.889}, text_only)
    assert pruned.usage.prompt_tokens == plain.usage.prompt_tokens
    assert pruned.choices[0].message.content == plain.choices[0].message.content


def test_streaming_with_pruning(server, model_name, unpruned_prompt_tokens):
    stream = server.client.chat.completions.create(
        model=model_name,
        messages=image_messages(),
        max_tokens=8,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"prune": "pooling", "prune_ratio": 0.889},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage.prompt_tokens == unpruned_prompt_tokens - (N - 64)
    assert usage.completion_tokens == 8
    streamed = chat(server, model_name, {"prune": "pooling", "prune_ratio": 0.889}, max_tokens=8)
    assert text == streamed.choices[0].message.content


def test_text_guided_selection_is_keyed_by_the_question(server, model_name):
    """The question travels in the multimodal hash: one question's selection is never reused."""

    def cache_hits(extra: dict, question: str) -> float:
        before = metric(server.metrics_text(), "vllm:mm_cache_hits_total")
        chat(server, model_name, extra, image_messages(question, seed=77))
        return metric(server.metrics_text(), "vllm:mm_cache_hits_total") - before

    fastv = {"prune": "fastv", "prune_ratio": 0.75}
    assert cache_hits(fastv, "what color is the square ?") == 0  # first sight of the image
    assert cache_hits(fastv, "where is the circle ?") == 0  # another question: not reused
    assert cache_hits(fastv, "what color is the square ?") == 1  # the same question: reused
    pooling = {"prune": "pooling", "prune_ratio": 0.75}
    assert cache_hits(pooling, "what color is the square ?") == 0
    assert cache_hits(pooling, "where is the circle ?") == 1  # pooling ignores the question
    vis = {"prune": "fastv_vis", "prune_ratio": 0.75}  # scored by the last visual token
    assert cache_hits(vis, "what color is the square ?") == 0
    assert cache_hits(vis, "where is the circle ?") == 1


def test_text_guided_method_without_a_question_is_refused(server, model_name):
    image_only = [{"role": "user", "content": image_messages()[0]["content"][:1]}]
    with pytest.raises(openai.BadRequestError) as caught:
        chat(server, model_name, {"prune": "fastv"}, image_only)
    assert "no text" in caught.value.body["message"]
    # fastv_vis reads the last visual token, which never sees the question.
    answer = chat(server, model_name, {"prune": "fastv_vis", "prune_ratio": 0.75}, image_only)
    assert answer.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("method", "field"), [("vispruner", "prune_important"), ("hiprune", "prune_object_share")]
)
def test_a_methods_own_parameter_reaches_the_engine(server, model_name, method, field):
    """Two values keep other tokens (the trace), and one out of range is a 400 naming it."""
    trace = server.log.parent / TRACE_FILE
    kept = [
        ask_traced(
            server, trace, model_name, image_messages(), {"prune": method, field: value}
        ).kept
        for value in (0.0, 1.0)
    ]
    assert kept[0] and kept[1] and kept[0] != kept[1]
    with pytest.raises(openai.BadRequestError) as caught:
        chat(server, model_name, {"prune": method, field: 1.5})
    assert caught.value.body["param"] == field


def test_methods_endpoint_lists_methods_parameters_and_defaults(server):
    document = requests.get(f"{server.url}/v1/prune/methods", timeout=10).json()
    methods = {m["name"]: m for m in document["data"]}
    assert sorted(methods) == method_names()
    assert methods["random"]["params"][0]["name"] == "prune_seed"
    assert methods["random"]["params"][0]["default"] == 0
    assert methods["pooling"]["params"] == []
    assert document["fields"]["prune"]["default"] == "pooling"
    assert document["fields"]["prune_ratio"]["default"] == 0.75
    assert document["fields"]["prune"]["allowed"] == [*method_names(), "auto"]
    assert methods["dart"]["params"][0]["name"] == "prune_pivots"
    assert methods["hiprune"]["params"][0]["name"] == "prune_object_share"
    assert methods["hiprune"]["params"][0]["default"] == 0.1
    assert methods["flowcut"]["needs"] == ["grid", "in_tower"]
    # The served model (LLaVA-1.5 with a CLIP tower) runs every method.
    assert all(m["supported"] and m["refusal"] is None for m in methods.values())
    # The version gate: the installed vLLM is a checked release, so nothing was found.
    assert document["vllm"] == {
        "version": compat.installed_version(),
        "checked": True,
        "checked_releases": list(compat.CHECKED),
        "pruning": True,
        "findings": [],
    }


def test_metrics_move_by_the_expected_amounts(server, model_name):
    before = server.metrics_text()
    chat(server, model_name, {"prune": "pooling", "prune_ratio": 0.75})
    chat(server, model_name, {"prune": "pooling", "prune_ratio": 0.889})
    list(
        server.client.chat.completions.create(
            model=model_name,
            messages=image_messages(),
            max_tokens=3,
            stream=True,
            extra_body={"prune": "pooling", "prune_ratio": 0.75},
        )
    )
    chat(server, model_name, {"prune": "random", "prune_keep": 10})
    chat(server, model_name, {"prune": "none"})
    chat(server, model_name, {"prune": "none"}, [{"role": "user", "content": "no image"}])
    after = server.metrics_text()

    def delta(name: str, method: str) -> float:
        return metric(after, name, method=method) - metric(before, name, method=method)

    assert delta("vllm_prune_requests_total", "pooling") == 3
    assert delta("vllm_prune_requests_total", "random") == 1
    assert delta("vllm_prune_requests_total", "none") == 1  # the text-only one has no image
    assert delta("vllm_prune_visual_tokens_before_total", "pooling") == 3 * N
    assert delta("vllm_prune_visual_tokens_after_total", "pooling") == 144 + 64 + 144
    assert delta("vllm_prune_visual_tokens_after_total", "random") == 10
    assert delta("vllm_prune_visual_tokens_after_total", "none") == N
    assert delta("vllm_prune_kv_cache_bytes_saved_total", "pooling") == (
        (3 * N - 352) * KV_BYTES_PER_TOKEN
    )
    assert delta("vllm_prune_kv_cache_bytes_saved_total", "random") == (N - 10) * KV_BYTES_PER_TOKEN
    assert delta("vllm_prune_kv_cache_bytes_saved_total", "none") == 0
    assert delta("vllm_prune_e2e_request_latency_seconds_count", "pooling") == 3
    assert delta("vllm_prune_e2e_request_latency_seconds_count", "none") == 1
    assert delta("vllm_prune_time_to_first_token_seconds_count", "pooling") == 1
    assert delta("vllm_prune_e2e_request_latency_seconds_sum", "pooling") > 0


def test_budget_over_two_images(server, model_name):
    two = [
        {
            "role": "user",
            "content": [
                *image_messages(seed=21)[0]["content"][:1],
                *image_messages(seed=22)[0]["content"][:1],
                {"type": "text", "text": "which is red ?"},
            ],
        }
    ]
    unpruned = chat(server, model_name, {"prune": "none"}, two).usage.prompt_tokens
    spent = chat(server, model_name, {"prune": "random", "prune_budget": 200}, two)
    assert spent.usage.prompt_tokens == unpruned - (2 * N - 200)  # 100 per image
    document = requests.get(f"{server.url}/v1/prune/methods", timeout=10).json()
    assert "prune_budget" in document["fields"]


@pytest.mark.parametrize("messages", [5, "hello", {"role": "user"}, [3, None]])
def test_messages_of_the_wrong_type_are_a_400_and_nothing_breaks(server, model_name, messages):
    """The middleware passes what it cannot read to vLLM, whose validation names the field."""
    body = {"model": model_name, "messages": messages, "prune": "pooling", "max_tokens": 2}
    response = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert "messages" in response.text
    assert chat(server, model_name, {"prune": "pooling"}).usage.prompt_tokens > 0


def test_a_long_question_is_scored_by_its_end(server, model_name):
    """Text-guided methods score against the question's last MAX_QUESTION_TOKENS tokens: a
    longer one is served, with the same selection as its end alone (the trace shows it)."""
    words = [f"w{i % 128}" for i in range(MAX_QUESTION_TOKENS + 200)]  # one token each
    trace = server.log.parent / TRACE_FILE
    extra = {"prune": "fastv", "prune_ratio": 0.75}
    whole = ask_traced(server, trace, model_name, image_messages(" ".join(words), seed=5), extra)
    tail = " ".join(words[-MAX_QUESTION_TOKENS:])
    end = ask_traced(server, trace, model_name, image_messages(tail, seed=5), extra)
    middle = " ".join(words[-MAX_QUESTION_TOKENS - 100 : -100])
    other = ask_traced(server, trace, model_name, image_messages(middle, seed=5), extra)
    assert whole.prompt_tokens == end.prompt_tokens + 200
    assert whole.kept and whole.kept == end.kept
    assert other.kept != end.kept  # the selection does follow the question
    # Longer than the server's character bound: still served, never blamed on prune_text.
    huge = "w1 " + "x" * (MAX_TEXT_CHARS + 10) + " what is in the image ?"
    answer = chat(server, model_name, extra, image_messages(huge, seed=5))
    assert answer.usage.prompt_tokens > 0


def test_the_responses_api_takes_the_same_fields_and_refusals(server, model_name):
    """``/v1/responses`` reaches the same processor: one contract on both endpoints."""
    image, question = image_messages(seed=9)[0]["content"]
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": image["image_url"]["url"]},
                {"type": "input_text", "text": question["text"]},
            ],
        }
    ]

    def input_tokens(extra: dict) -> int:
        response = server.client.responses.create(
            model=model_name, input=items, max_output_tokens=2, extra_body=extra
        )
        return response.usage.input_tokens

    before = metric(server.metrics_text(), "vllm_prune_requests_total", method="fastv")
    unpruned = input_tokens({"prune": "none"})
    assert input_tokens({"prune": "pooling", "prune_ratio": 0.75}) == unpruned - (N - 144)
    assert input_tokens({"prune": "fastv", "prune_keep": 9}) == unpruned - (N - 9)
    assert input_tokens({}) == unpruned - (N - 144)  # the server's --prune-default
    after = metric(server.metrics_text(), "vllm_prune_requests_total", method="fastv")
    assert after - before == 1
    for extra, field in (
        ({"prune": "fastv", "prune_text": "x"}, "prune_text"),
        ({"prune": "pooling", "prune_ration": 0.5}, "prune_ration"),
        ({"prune": "pooling", "prune_ratio": 2}, "prune_ratio"),
        ({"mm_processor_kwargs": {"do_resize": False}}, "mm_processor_kwargs"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            input_tokens(extra)
        assert f"'{field}'" in caught.value.body["message"], extra


@pytest.mark.parametrize(
    ("url", "mentions"),
    [
        ("file:///etc/hostname", "--allowed-local-media-path"),
        ("ftp://127.0.0.1/image.png", "http(s) URL"),
        ("/etc/hostname", "http(s) URL"),
    ],
)
def test_an_image_url_the_server_does_not_fetch_is_a_400_naming_the_part(
    server, model_name, url, mentions
):
    messages = image_messages()
    messages[0]["content"][0]["image_url"]["url"] = url
    with pytest.raises(openai.BadRequestError) as caught:
        chat(server, model_name, {"prune": "pooling"}, messages)
    assert caught.value.body["param"] == "messages[0].content[0].image_url"
    assert mentions in caught.value.body["message"]
    assert chat(server, model_name, {"prune": "none"}).usage.prompt_tokens > 0
