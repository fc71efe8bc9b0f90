"""Hostile and careless clients: every mistake is a 4xx naming the field or the part,
nothing internal is fetched, and the server keeps serving.

Two servers: the session's (``vllm-prune serve`` defaults: public media addresses only)
and one started here with the operator's options (``--allow-private-media-urls``, a 2 s
``--media-fetch-timeout``, ``--max-image-pixels 1000000``, a chat template that does not
render system messages, ``--enable-scale-out`` for the render routes) and an image host
on a loopback port. The soak and the fuzzing
run on the session server, bounded so that they fit the suite.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from devtools.tiny_llava import build_tiny_llava
from loadtests import soak
from loadtests.probe import image_messages, noise_image_data_url
from vllm_prune.demo import SERVE_ARGS as DEMO_ARGS
from vllm_prune.methods import method_names

from .conftest import (
    JSON,
    TINY_NAME,
    Server,
    check_fuzz_log,
    fuzz_settings,
    pruned_command,
    running,
    server_errors_in,
)

DEADLINE_S = 2
MAX_PIXELS = 1_000_000
# Renders user and assistant messages only, as many real templates drop or flatten others.
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{{ message['content'] }} {% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{{ message['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def png_bytes(size: tuple[int, int], color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


class ImageHost(http.server.ThreadingHTTPServer):
    """An HTTP server on a loopback port: images, errors, redirects and a host that stalls."""

    daemon_threads = True

    def __init__(self, address: str = "127.0.0.1") -> None:
        super().__init__((address, 0), _ImageHandler)
        self.hits: list[str] = []
        self.image = png_bytes((64, 64))
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    server: ImageHost

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.hits.append(self.path)
        if self.path == "/image.png":
            self._send(200, self.server.image)
        elif self.path == "/stall.png":  # headers, then a byte a second: never done in time
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.server.image)))
            self.end_headers()
            for byte in self.server.image:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(1)
        elif self.path.startswith("/to/"):  # /to/127.0.0.2:PORT/image.png
            self.send_response(302)
            self.send_header("Location", "http://" + self.path.removeprefix("/to/"))
            self.end_headers()
        else:
            self._send(404, b"not here")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.shutdown()


@pytest.fixture(scope="module")
def operator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("operator")
    model = str(build_tiny_llava(root / "tiny-llava"))
    template = root / "no-system.jinja"
    template.write_text(NO_SYSTEM_TEMPLATE)
    command = pruned_command(
        model, *DEMO_ARGS, "--served-model-name", TINY_NAME, "--chat-template", str(template),
        "--allow-private-media-urls", "--media-fetch-timeout", str(DEADLINE_S),
        "--max-image-pixels", str(MAX_PIXELS), "--enable-scale-out",
    )  # fmt: skip
    with running(root, {"operator": command}) as started:
        yield started["operator"]


def post(server: Server, body: dict, path: str = "/v1/chat/completions") -> requests.Response:
    body = {"model": TINY_NAME, "max_tokens": 2, **body}
    return requests.post(f"{server.url}{path}", json=body, timeout=120)


def with_image(url: str) -> list[dict]:
    messages = image_messages()
    messages[0]["content"][0]["image_url"]["url"] = url
    return messages


def assert_refused(response: requests.Response, status: int, param: str | None, *mentions: str):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["param"] == param, error
    for text in mentions:
        assert text in error["message"], error["message"]


# Image seeds of this file's own (other files' tests count cache hits of theirs).
SEEDS = itertools.count(90_000)


def assert_serving(server: Server) -> None:
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    assert post(server, {"messages": image_messages(seed=next(SEEDS)), "prune": "pooling"}).ok


# -- the default: no internal addresses ------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.1", "169.254.169.254"],
)
def test_internal_image_urls_are_refused_and_not_fetched(server, image_host, host):
    port = image_host.server_address[1]
    before = len(image_host.hits)
    response = post(server, {"messages": with_image(f"http://{host}:{port}/image.png")})
    assert_refused(response, 400, "image_url", "internal address", "--allow-private-media-urls")
    assert len(image_host.hits) == before  # refused before any connection
    assert_serving(server)


def test_a_redirect_or_a_changed_dns_answer_to_an_internal_address_is_refused(image_host):
    """The check is made where the socket is created: a connection the name check allowed
    (here 127.0.0.1, as a proxy's address is) cannot be redirected to another internal one."""
    from vllm.exceptions import VLLMValidationError

    from vllm_prune.integration.media import GuardedConnection

    second = ImageHost("127.0.0.2")
    connection = GuardedConnection(allowed=frozenset({"127.0.0.1"}))

    async def fetch(url: str) -> bytes:
        try:
            return await connection.async_get_bytes(url, timeout=5)
        finally:
            await (await connection.get_async_client()).close()

    try:
        assert asyncio.run(fetch(f"{image_host.url}/image.png")) == image_host.image
        connection._async_client = None  # a new session for the new loop
        target = second.url.removeprefix("http://") + "/image.png"
        with pytest.raises(VLLMValidationError, match="internal address"):
            asyncio.run(fetch(f"{image_host.url}/to/{target}"))
        assert second.hits == []
    finally:
        second.shutdown()


def test_internal_address_policy():
    from vllm_prune.integration.media import internal_address

    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                    "100.64.0.1", "0.0.0.0", "::1", "fe80::1%eth0", "::ffff:10.0.0.1",
                    "fd00::1", "224.0.0.1", "ff02::1", "240.0.0.1"):  # fmt: skip
        assert internal_address(address), address
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert not internal_address(address), address


# -- the operator's options: private hosts, one deadline, a pixel limit -------------------


def test_an_allowed_private_host_serves_the_image(operator_server, image_host):
    url = f"{image_host.url}/image.png"
    fetched = post(operator_server, {"messages": with_image(url), "prune": "none"})
    inline = post(
        operator_server, {"messages": with_image(png_data_url((64, 64))), "prune": "none"}
    )
    assert fetched.ok and inline.ok, fetched.text
    assert fetched.json()["usage"] == inline.json()["usage"]
    redirected = f"{image_host.url}/to/127.0.0.1:{image_host.server_address[1]}/image.png"
    assert post(operator_server, {"messages": with_image(redirected), "prune": "none"}).ok


def png_data_url(size: tuple[int, int]) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes(size)).decode()


def test_a_host_that_stalls_is_a_504_at_the_deadline(operator_server, image_host):
    started = time.monotonic()
    response = post(operator_server, {"messages": with_image(f"{image_host.url}/stall.png")})
    elapsed = time.monotonic() - started
    assert_refused(response, 504, None, f"within {DEADLINE_S} s", "--media-fetch-timeout")
    assert DEADLINE_S <= elapsed < DEADLINE_S + 3, elapsed
    assert_serving(operator_server)


def test_unreachable_or_missing_images_are_a_4xx_naming_image_url(operator_server, image_host):
    missing = post(operator_server, {"messages": with_image(f"{image_host.url}/missing.png")})
    assert_refused(missing, 422, "image_url", "HTTP 404")
    # Refused connections are retried (vLLM's retries) until the deadline.
    refused = post(operator_server, {"messages": with_image("http://127.0.0.1:9/image.png")})
    assert refused.status_code in (422, 504), refused.text
    assert_serving(operator_server)


def test_the_pixel_limit_is_the_operators(operator_server):
    assert post(operator_server, {"messages": with_image(png_data_url((1000, 1000)))}).ok
    over = post(operator_server, {"messages": with_image(png_data_url((1001, 1000)))})
    assert_refused(over, 400, None, "1001x1000", f"maximum of {MAX_PIXELS} pixels")
    bomb = post(operator_server, {"messages": with_image(soak.png_claiming(30000, 30000))})
    assert_refused(bomb, 400, "image_url", f"limit of {MAX_PIXELS}", "--max-image-pixels")
    assert_serving(operator_server)


def test_a_decompression_bomb_is_a_400_on_the_default_server(server):
    for size in ((30000, 30000), (9000, 9000)):  # past PIL's own bound; past the default
        response = post(server, {"messages": with_image(soak.png_claiming(*size))})
        assert response.status_code == 400, response.text
    assert_serving(server)


def test_an_image_the_chat_template_does_not_render_is_a_400(operator_server):
    image = noise_image_data_url(94_242)
    hidden = [
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": image}}]},
        {"role": "user", "content": "what is in the image ?"},
    ]
    response = post(operator_server, {"messages": hidden, "prune": "pooling"})
    assert_refused(response, 400, "messages", "does not render", "user messages")
    # The same image where the template renders it: served (vLLM's processor cache had
    # kept the refused item, and the engine then answered the next request with a 500).
    shown = [{"role": "user", "content": [hidden[0]["content"][0], {"type": "text", "text": "x"}]}]
    for _ in range(2):
        assert post(operator_server, {"messages": shown, "prune": "pooling"}).ok


# -- fuzzing and the soak --------------------------------------------------------------

URLS = st.sampled_from(
    [
        noise_image_data_url(90_005),
        "data:image/png;base64,AAAA",
        "data:image/png,plain",
        "data:;base64,",
        soak.png_claiming(20000, 20000),
        "http://127.0.0.1:9/x.png",
        "http://[::1]/x",
        "file:///etc/passwd",
        "ftp://x/y",
        "",
    ]
) | st.text(max_size=30)
PARTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40) | JSON}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": URLS}) | JSON}
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["input_image", "image", "video_url", "x"])}
    ).map(lambda part: {**part, "image_url": noise_image_data_url(90_005)}),
    JSON,
)
MESSAGES = (
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "assistant", "system", "tool", "developer", "x"]),
                "content": st.text(max_size=40) | st.lists(PARTS, max_size=3) | JSON,
            }
        ),
        min_size=1,
        max_size=3,
    )
    | JSON
)
PRUNE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "prune": st.sampled_from([*method_names(), "auto", "", "NONE", "pool"]) | JSON,
        "prune_ratio": st.floats(-1, 2) | JSON,
        "prune_keep": st.integers(-5, 5000) | JSON,
        "prune_budget": st.integers(-5, 5000) | JSON,
        "prune_layer": st.integers(-3, 40) | JSON,
        "prune_text": st.text(max_size=10),
        "prune_x": JSON,
        "mm_processor_kwargs": st.dictionaries(
            st.sampled_from(["prune", "prune_ratio", "prune_keep", "do_resize"]), JSON, max_size=2
        )
        | JSON,
        "media_io_kwargs": JSON,
        "max_tokens": st.sampled_from([1, 2, 0, -1, "2", None]),
        "stream": st.booleans() | JSON,
        "n": st.sampled_from([1, 2, 0]),
    },
)


@pytest.fixture(scope="module")
def fuzz_log(server: Server) -> Iterator[list]:
    """The statuses the fuzzed bodies got: some served, some refused (the fuzzing reaches
    past the validation), and the server still serving after them."""
    log: list = []
    yield log
    check_fuzz_log(log, "bodies")
    assert_serving(server)


@fuzz_settings(150)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/responses"]),
    messages=MESSAGES,
    fields=PRUNE_FIELDS,
    model=st.just(TINY_NAME) | JSON,
)
def test_fuzzed_request_bodies_never_get_a_5xx(server, fuzz_log, path, messages, fields, model):
    """Bodies of every JSON type in every place the server reads: never a 5xx.

    ``VLLM_PRUNE_FUZZ_EXAMPLES`` / ``VLLM_PRUNE_FUZZ_RANDOM=1`` (``make fuzz``) run more,
    and new ones; CI runs the same bounded set every time.
    """
    key = "messages" if path == "/v1/chat/completions" else "input"
    body = {"model": model, key: messages, "max_tokens": 2, **fields}
    if path == "/v1/responses":
        body["max_output_tokens"] = body.pop("max_tokens")
    response = requests.post(f"{server.url}{path}", json=body, timeout=120)
    fuzz_log.append(response.status_code)
    assert server_errors_in(response) == [], json.dumps(body)[:2000]


def test_the_soak_short_version(server):
    """``make soak`` runs 10,000 requests; here 1,500 after 1,000 of warm-up, with the same
    checks: no 5xx, every request the status of its kind, nothing left in vLLM, and no
    server process grown by 5% or more."""
    report = soak.soak(
        server.url, server.process.pid, TINY_NAME, requests=1500, warmup=1000, concurrency=4
    )
    assert report.requests == 1500
    assert report.ok, soak.markdown(report)
    kinds = set(report.statuses)
    assert {"pruned", "unpruned", "stream", "dropped stream", "responses", "text"} <= kinds
    assert sum(1 for k in kinds if k.startswith("bad: ")) == len(soak.bad_requests("x"))


def test_the_soak_refuses_a_server_that_is_not_local():
    with pytest.raises(ValueError, match="loopback"):
        soak.soak("http://10.0.0.1:8000", os.getpid(), "m", requests=1)


# -- one contract on every endpoint that takes images -----------------------------------


def test_sagemaker_invocations_and_chat_batches_prune_like_chat(server):
    extra = {"prune": "pooling", "prune_ratio": 0.889}
    chat = post(server, {"messages": image_messages(seed=90_031), **extra}).json()["usage"]
    invoked = post(server, {"messages": image_messages(seed=90_031), **extra}, "/invocations")
    assert invoked.ok, invoked.text
    assert invoked.json()["usage"]["prompt_tokens"] == chat["prompt_tokens"]
    conversations = [image_messages(seed=90_031), image_messages(seed=90_032)]
    batch = post(server, {"messages": conversations, **extra}, "/v1/chat/completions/batch")
    assert batch.ok, batch.text
    assert batch.json()["usage"]["prompt_tokens"] == 2 * chat["prompt_tokens"]
    unpruned = post(server, {"messages": image_messages(seed=90_031), "prune": "none"}).json()
    assert unpruned["usage"]["prompt_tokens"] > chat["prompt_tokens"]
    for path in ("/invocations", "/v1/chat/completions/batch"):
        body = {"messages": image_messages(seed=90_031), "prune_text": "x"}
        if path.endswith("batch"):
            body["messages"] = [body["messages"]]
        assert_refused(post(server, body, path), 400, "prune_text")


def test_the_anthropic_messages_api_serves_images_unpruned_and_refuses_prune_fields(server):
    data = noise_image_data_url(90_033).split(",", 1)[1]
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "what is in the image ?"},
    ]
    body = {"messages": [{"role": "user", "content": content}]}
    refused = post(server, {**body, "prune": "pooling"}, "/v1/messages")
    assert_refused(refused, 400, "prune", "served unpruned", "/v1/chat/completions")
    served = post(server, body, "/v1/messages")
    assert served.ok, served.text
    unpruned = post(server, {"messages": image_messages(seed=90_033), "prune": "none"}).json()
    # The server's --prune-default (pooling) does not reach this API: unpruned tokens.
    assert served.json()["usage"]["input_tokens"] == unpruned["usage"]["prompt_tokens"]


def test_the_render_routes_prune_like_chat(operator_server):
    """``--enable-scale-out``'s render routes run the processor for another server: the
    token ids they hand on are the pruned prompt."""
    extra = {"prune": "pooling", "prune_ratio": 0.75}
    served = post(operator_server, {"messages": image_messages(seed=90_034), **extra}).json()
    body = {"model": TINY_NAME, "messages": image_messages(seed=90_034)}
    url = f"{operator_server.url}/v1/chat/completions/render"
    rendered = requests.post(url, json={**body, **extra}, timeout=60)
    assert rendered.ok, rendered.text
    assert len(rendered.json()["token_ids"]) == served["usage"]["prompt_tokens"]
    whole = requests.post(url, json={**body, "prune": "none"}, timeout=60).json()
    assert len(whole["token_ids"]) == served["usage"]["prompt_tokens"] + 576 - 144
    refused = requests.post(url, json={**body, "prune_ration": 0.5}, timeout=60)
    assert_refused(refused, 400, "prune_ration", "prune_ratio")
