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
