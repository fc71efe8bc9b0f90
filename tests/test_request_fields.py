"""How the server rewrites a client's JSON body for vLLM (pure functions)."""

from __future__ import annotations

import pytest

from vllm_prune.server.request_fields import ServerDefaults, rewrite
from vllm_prune.spec import PruneSpecError

CHAT = "/v1/chat/completions"
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def body(**extra):
    return {
        "model": "m",
        "messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "hi"}]}],
        **extra,
    }


def test_top_level_fields_move_into_mm_processor_kwargs():
    out = rewrite(body(prune="pooling", prune_ratio=0.75), CHAT, ServerDefaults())
    assert "prune" not in out.payload and "prune_ratio" not in out.payload
    assert out.payload["mm_processor_kwargs"] == {"prune": "pooling", "prune_ratio": 0.75}
    assert out.method == "pooling"


def test_server_default_applies_only_when_no_method_is_named():
    defaults = ServerDefaults(method="random", ratio=0.5)
    assert rewrite(body(), CHAT, defaults).payload["mm_processor_kwargs"] == {
        "prune": "random",
        "prune_ratio": 0.5,
        "prune_seed": 0,
    }
    assert rewrite(body(prune="none"), CHAT, defaults).payload["mm_processor_kwargs"] == {
        "prune": "none"
    }


def test_image_requests_always_carry_a_method_so_metrics_count_them():
    assert rewrite(body(), CHAT, ServerDefaults()).payload["mm_processor_kwargs"] == {
        "prune": "none"
    }


def test_text_only_requests_get_no_processor_kwargs():
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prune": "pooling"}
    out = rewrite(payload, CHAT, ServerDefaults(method="pooling"))
    assert "mm_processor_kwargs" not in out.payload and "prune" not in out.payload
    assert out.method is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (body(mm_processor_kwargs={"num_crops": 4}), "mm_processor_kwargs"),
        (body(mm_processor_kwargs=[1]), "mm_processor_kwargs"),
        (body(media_io_kwargs={"image": {}} | {"video": {"fps": 1}}), "media_io_kwargs"),
        (body(prune="pooling", mm_processor_kwargs={"prune": "random"}), "prune"),
        (body(prune="nope"), "prune"),
    ],
)
def test_refusals_name_the_field(payload, field):
    with pytest.raises(PruneSpecError) as caught:
        rewrite(payload, CHAT, ServerDefaults())
    assert caught.value.field == field


def test_other_endpoints_are_filtered_too():
    with pytest.raises(PruneSpecError):
        rewrite(
            {"prompt": "x", "mm_processor_kwargs": {"size": 1}}, "/v1/completions", ServerDefaults()
        )
    out = rewrite({"prompt": "x", "prune": "pooling"}, "/v1/completions", ServerDefaults())
    assert out.payload == {"prompt": "x", "prune": "pooling"}


def test_image_urls_are_checked_where_they_are():
    def image(url: str) -> dict:
        return {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": url}},
        ]}]}  # fmt: skip

    with pytest.raises(PruneSpecError) as caught:
        rewrite(image("file:///tmp/x.png"), CHAT, ServerDefaults())
    assert caught.value.field == "messages[0].content[1].image_url"
    assert "--allowed-local-media-path" in str(caught.value)
    # The operator's --allowed-local-media-path lets them through (vLLM checks the path).
    allowed = rewrite(image("file:///tmp/x.png"), CHAT, ServerDefaults(local_files=True))
    assert allowed.method == "none"
    assert rewrite(image("https://example.com/x.png"), CHAT, ServerDefaults()).method == "none"
    responses = {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "gopher://x"},
    ]}]}  # fmt: skip
    with pytest.raises(PruneSpecError) as caught:
        rewrite(responses, "/v1/responses", ServerDefaults())
    assert caught.value.field == "input[0].content[0].image_url"


def test_sagemaker_invocations_are_chat_completions():
    out = rewrite(body(prune="pooling"), "/invocations", ServerDefaults())
    assert out.method == "pooling" and out.payload["mm_processor_kwargs"]["prune"] == "pooling"


def test_a_batch_of_conversations_shares_one_setting():
    conversation = body()["messages"]
    batch = {"model": "m", "messages": [conversation, conversation], "prune": "random"}
    out = rewrite(batch, "/v1/chat/completions/batch", ServerDefaults())
    assert out.method == "random" and "prune" not in out.payload
    with pytest.raises(PruneSpecError, match="share one prune setting"):
        rewrite({**batch, "prune": "fastv"}, "/v1/chat/completions/batch", ServerDefaults())
    with pytest.raises(PruneSpecError) as caught:
        rewrite(
            {**batch, "messages": [conversation, 3]}, "/v1/chat/completions/batch", ServerDefaults()
        )
    assert caught.value.field == "messages"
    bad_url = [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x:y"}}]}]]
    with pytest.raises(PruneSpecError) as caught:
        rewrite(
            {"messages": [conversation, *bad_url]},
            "/v1/chat/completions/batch",
            ServerDefaults(),
        )
    assert caught.value.field == "messages[1][0].content[0].image_url"


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_the_anthropic_api_refuses_prune_fields(path):
    with pytest.raises(PruneSpecError, match="served unpruned") as caught:
        rewrite({"messages": [], "prune": "pooling"}, path, ServerDefaults())
    assert caught.value.field == "prune"
    with pytest.raises(PruneSpecError):
        rewrite({"messages": [], "mm_processor_kwargs": {"prune_keep": 3}}, path, ServerDefaults())
    assert rewrite({"messages": []}, path, ServerDefaults(method="pooling")).method is None


@pytest.mark.parametrize("path", ["/tokenize", "/v1/completions", "/v1/responses"])
def test_prune_text_is_refused_on_every_path(path):
    with pytest.raises(PruneSpecError) as caught:
        rewrite(
            {"mm_processor_kwargs": {"prune": "fastv", "prune_text": "x"}}, path, ServerDefaults()
        )
    assert caught.value.field == "prune_text"


OFF = "pruning is off: vLLM 0.35.0 is newer than the checked releases and breaks X"


def test_a_server_that_cannot_prune_refuses_a_named_method_and_says_why():
    with pytest.raises(PruneSpecError) as caught:
        rewrite(body(prune="pooling", prune_ratio=0.75), CHAT, ServerDefaults(off=OFF))
    assert caught.value.field == "prune" and OFF in str(caught.value)
    # The same fields in mm_processor_kwargs, too.
    with pytest.raises(PruneSpecError):
        rewrite(body(mm_processor_kwargs={"prune": "divprune"}), CHAT, ServerDefaults(off=OFF))


def test_a_server_that_cannot_prune_serves_the_rest_without_prune_fields():
    off = ServerDefaults(method="pooling", off=OFF)  # the server default does not apply
    for payload in (body(), body(prune="none"), body(mm_processor_kwargs={"prune": "none"})):
        out = rewrite(payload, CHAT, off)
        assert out.method == "none"
        assert "mm_processor_kwargs" not in out.payload and "prune" not in out.payload
    # A bad field is still a 400 naming it; no images: prune fields stay a no-op.
    with pytest.raises(PruneSpecError) as caught:
        rewrite(body(prune="none", prune_ratio=2), CHAT, off)
    assert caught.value.field == "prune_ratio"
    text = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prune": "pooling"}
    assert rewrite(text, CHAT, off).method is None
