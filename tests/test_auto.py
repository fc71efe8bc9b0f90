"""``prune: auto``: the ratio follows the engine's load as vLLM reports it to the API server.

The policy, its damping and the method rule on their own (pure functions, a fake clock),
then a real server with a small fixed KV pool: idle, an ``auto`` request keeps every visual
token; while held requests fill the pool, ``auto`` requests are pruned at the policy's
maximum and the headers, the log and the metrics say so; after they end, ``auto`` keeps
every token again.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from openai import OpenAI
from PIL import Image, ImageDraw

from devtools.tiny_llava import build_tiny_llava
from loadtests.content_keep import complexity, content_keeps, weight
from loadtests.probe import image_messages, metric
from tests.conftest import BLOCK_SIZE, TINY_NAME, Server, pruned_command, running
from vllm_prune import auto
from vllm_prune.demo import SERVE_ARGS as DEMO_ARGS
from vllm_prune.server.request_fields import ServerDefaults, rewrite
from vllm_prune.spec import PruneSpecError

N = 576  # tiny-llava's visual tokens per image
MAX_KEEP = 144  # at the default policy's maximum ratio, 0.75
KV_BLOCKS = 80  # of 32 tokens: one and a quarter requests of 2,000 tokens
HOLDERS = 6


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def load(clock: Clock) -> auto.Load:
    return auto.Load(clock)


POLICY = auto.Policy()


def test_the_default_policy_steps_from_half_to_nine_tenths_of_the_kv_cache():
    assert [POLICY.threshold(k) for k in (1, 2, 3)] == pytest.approx([0.5, 0.7, 0.9])
    assert [POLICY.ratio(k) for k in range(4)] == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="start < full"):
        auto.Policy(start=0.9, full=0.5)
    with pytest.raises(ValueError, match="max_ratio"):
        auto.Policy(max_ratio=0.0)


def test_an_engine_never_heard_from_reads_idle(load):
    level, reading = load.level(POLICY)
    assert level == 0 and reading == auto.IDLE


def _steady(load: auto.Load, clock: Clock, usage: float, waiting: int = 0) -> int:
    """The level after a busy engine (4 running requests) has reported this load for a minute."""
    load.record(0, usage, 4, waiting)
    clock.now += 60
    return load.level(POLICY)[0]


def test_kv_usage_sets_the_level_and_a_queue_sets_the_maximum(load, clock):
    assert _steady(load, clock, 0.6) == 1
    assert _steady(load, clock, 0.75) == 2
    assert _steady(load, clock, 0.1, waiting=3) == 3  # a queue: the maximum, whatever the KV
    assert load.level(POLICY)[1].waiting == 3


def test_a_load_hovering_at_a_threshold_does_not_flap(load, clock):
    assert _steady(load, clock, 0.91) == 3
    for usage in (0.88, 0.9, 0.87, 0.89, 0.86):  # below 0.9, but within the hysteresis
        assert _steady(load, clock, usage) == 3, usage
    assert _steady(load, clock, 0.84) == 2
    assert _steady(load, clock, 0.71) == 2
    assert _steady(load, clock, 0.3) == 0


def test_a_busy_engine_is_averaged_and_an_idle_one_reads_idle_at_once(load, clock):
    load.record(0, 1.0, 8, 0)
    clock.now += 0.5
    load.record(0, 0.2, 2, 0)  # still busy: one low reading does not undo a busy period
    level, reading = load.level(POLICY)
    assert reading.kv_usage == pytest.approx(1.0) and level == 3
    clock.now += auto.SMOOTHING_S
    assert load.reading().kv_usage == pytest.approx(0.2 + 0.8 / math.e, abs=1e-4)
    load.record(0, 0.0, 0, 0)  # the engine runs and holds nothing
    level, reading = load.level(POLICY)
    assert reading.kv_usage == 0.0 and level == 0 and reading.age_s == 0.0


def test_the_busiest_engine_counts(load, clock):
    load.record(0, 0.1, 1, 0)
    load.record(1, 0.95, 8, 0)
    clock.now += 60
    assert load.level(POLICY)[0] == 3


def test_requests_the_engine_does_not_run_yet_count_at_a_running_ones_share(load, clock):
    load.record(0, 0.1, 1, 0)  # one running request holds a tenth of the KV cache
    for _ in range(5):
        load.enter()  # a burst arrives: the engine runs one of them so far
    level, reading = load.level(POLICY)
    assert reading.pending == 4 and reading.projected == pytest.approx(0.5) and level == 1
    for _ in range(8):
        load.enter()
    level, reading = load.level(POLICY)
    assert reading.pending == 12 and level == 3
    for _ in range(13):
        load.leave()
    load.record(0, 0.0, 0, 0)
    assert load.level(POLICY) == (0, auto.Reading(0.0, 0, 0, 0.0, 0.0))


def test_the_method_follows_the_shape_of_the_request_and_the_family():
    every = lambda m: True  # noqa: E731
    assert auto.choose_method(1, 0, True, every) == "divprune"
    assert auto.choose_method(3, 0, False, every) == "divprune"
    assert auto.choose_method(2, 0, True, every) == "cdprune"
    assert auto.choose_method(1, 1, True, every) == "evs"
    no_video = lambda m: m not in ("evs", "vidcom2")  # noqa: E731
    assert auto.choose_method(0, 1, False, no_video) == "divprune"
    assert auto.choose_method(1, 0, False, lambda m: m in ("pooling", "none")) == "pooling"
    assert auto.choose_method(1, 0, False, lambda m: m == "none") == "none"


def _request(**fields) -> dict:
    return {"model": "m", "messages": image_messages(), **fields}


def _busy(clock: Clock) -> auto.Load:
    load = auto.Load(clock)
    load.record(0, 0.95, 4, 2)
    return load


def test_auto_resolves_to_a_method_and_ratio_before_vllm_sees_the_request(clock):
    idle = rewrite(_request(prune="auto"), "/v1/chat/completions", ServerDefaults())
    assert idle.payload["mm_processor_kwargs"] == {"prune": "none"}
    assert idle.choice.method == "none" and idle.choice.ratio == 0.0
    defaults = ServerDefaults(load=_busy(clock))
    busy = rewrite(_request(prune="auto"), "/v1/chat/completions", defaults)
    assert busy.payload["mm_processor_kwargs"] == {"prune": "divprune", "prune_ratio": 0.75}
    assert busy.choice.reading == auto.Reading(0.95, 2, 0, 0.95, 0.0)
    capped = rewrite(_request(prune="auto", prune_ratio=0.5), "/v1/chat/completions", defaults)
    assert capped.payload["mm_processor_kwargs"]["prune_ratio"] == 0.5
    budget = rewrite(_request(prune="auto", prune_budget=100), "/v1/chat/completions", defaults)
    assert budget.payload["mm_processor_kwargs"] == {"prune": "divprune", "prune_budget": 100}
    # A method parameter goes to the chosen method where it applies, and is dropped elsewhere.
    seeded = rewrite(_request(prune="auto", prune_seed=7), "/v1/chat/completions", defaults)
    assert seeded.payload["mm_processor_kwargs"] == {"prune": "divprune", "prune_ratio": 0.75}
    by_default = ServerDefaults(method="auto", load=_busy(clock))
    assert rewrite(_request(), "/v1/chat/completions", by_default).choice.ratio == 0.75
    assert rewrite(_request(prune="none"), "/v1/chat/completions", by_default).choice is None
    text_only = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prune": "auto"}
    assert rewrite(text_only, "/v1/chat/completions", defaults).choice is None


def test_auto_leaves_a_request_unpruned_where_the_model_cannot_prune_its_video(clock):
    """The generic adapter serves videos unpruned (a named method on one is a 400): auto
    then picks none rather than a method the processor would refuse."""
    video = {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}
    request = _request(prune="auto")
    request["messages"][0]["content"].insert(0, video)
    busy = _busy(clock)
    chosen = rewrite(request, "/v1/chat/completions", ServerDefaults(load=busy))
    assert chosen.choice.method == "evs"
    kept = rewrite(request, "/v1/chat/completions", ServerDefaults(load=busy, videos=False))
    assert kept.choice.method == "none"
    assert kept.payload["mm_processor_kwargs"] == {"prune": "none"}
    images_only = rewrite(
        _request(prune="auto"), "/v1/chat/completions", ServerDefaults(load=busy, videos=False)
    )
    assert images_only.choice.method == "divprune"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prune": "auto", "prune_keep": 10}, "prune_keep"),
        ({"prune": "auto", "prune_ratio": 1.5}, "prune_ratio"),
        ({"prune": "auto", "prune_ratio": 0.5, "prune_budget": 10}, "prune_ratio"),
        ({"prune": "auto", "prune_alpha": 2}, "prune_alpha"),
        ({"prune": "auto", "prune_layer": "two"}, "prune_layer"),
        ({"prune": "auto", "prune_ration": 0.5}, "prune_ration"),
    ],
)
def test_auto_takes_the_same_validation_as_any_method(fields, param):
    with pytest.raises(PruneSpecError) as caught:
        rewrite(_request(**fields), "/v1/chat/completions", ServerDefaults())
    assert caught.value.field == param


# -- served ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """tiny-llava with a pool of 80 KV blocks, every request `auto` unless it says otherwise."""
    root = tmp_path_factory.mktemp("auto")
    model = str(build_tiny_llava(root / "tiny-llava"))
    command = pruned_command(
        model,
        *DEMO_ARGS,
        "--served-model-name", TINY_NAME,
        "--block-size", str(BLOCK_SIZE),
        "--num-gpu-blocks-override", str(KV_BLOCKS),
        "--prune-default", "auto",
    )  # fmt: skip
    # Development mode for vLLM's /pause and /resume (the held requests), on loopback only.
    with running(root, {"pruned": command}, {"pruned": {"VLLM_SERVER_DEV_MODE": "1"}}) as started:
        yield started["pruned"]


def _auto_request(server: Server) -> tuple[dict[str, str], int]:
    """One streamed `auto` request: its headers (sent before generation starts) and its
    prompt tokens (from the usage chunk at the end)."""
    with server.client.chat.completions.with_streaming_response.create(
        model=TINY_NAME,
        messages=image_messages(),
        max_tokens=1,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        headers = {k: v for k, v in response.headers.items() if k.startswith("x-prune-")}
        chunks = list(response.parse())
    return headers, chunks[-1].usage.prompt_tokens


def _reading(server: Server) -> dict:
    return requests.get(f"{server.url}/v1/prune/methods", timeout=10).json()["auto"]["reading"]


def _hold(server: Server, seed: int) -> None:
    """An unpruned request that grows to 2,000 tokens of KV cache (a client and an image of
    its own)."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(
        model=TINY_NAME,
        messages=image_messages(seed=seed),
        max_tokens=1400,
        extra_body={"prune": "none", "ignore_eos": True},
    )


def _processed(server: Server) -> float:
    """Image requests the server's processor has counted (just before the engine)."""
    return metric(server.metrics_text(), "vllm_prune_requests_total")


def _wait_processed(server: Server, count: float, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _processed(server) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processed(server) >= count


def _auto_ratio(server: Server, metrics_text: str, method: str) -> tuple[float, float]:
    """(count, sum) of ``vllm_prune_auto_ratio`` for one method."""
    values = {}
    for line in metrics_text.splitlines():
        for part in ("count", "sum"):
            if line.startswith(f'vllm_prune_auto_ratio_{part}{{method="{method}"}}'):
                values[part] = float(line.rsplit(" ", 1)[1])
    return values.get("count", 0.0), values.get("sum", 0.0)


def test_auto_keeps_every_token_idle_prunes_at_the_maximum_under_load_and_recovers(
    auto_server: Server,
):
    # Unpruned, and long enough for the engine to report it running: the KV share of one
    # request, which requests still arriving are projected at.
    unpruned = auto_server.client.chat.completions.create(
        model=TINY_NAME,
        messages=image_messages(),
        max_tokens=64,
        extra_body={"prune": "none", "ignore_eos": True},
    ).usage.prompt_tokens

    headers, prompt = _auto_request(auto_server)
    assert headers["x-prune-method"] == "none" and headers["x-prune-ratio"] == "0"
    assert prompt == unpruned

    # Held requests: vLLM's scheduler is paused (its /pause, development mode) while six
    # requests of 2,000 tokens each arrive, so the load is certain when the auto request
    # comes: six requests the engine has not run yet, each at a running request's KV share
    # (80 blocks hold one and a quarter of them). Once resumed they fill the pool.
    before = _processed(auto_server)
    requests.post(f"{auto_server.url}/pause?mode=keep", timeout=60).raise_for_status()
    holders = [threading.Thread(target=_hold, args=(auto_server, 100 + i)) for i in range(HOLDERS)]
    with ThreadPoolExecutor(1) as pool:
        try:
            for holder in holders:
                holder.start()
            _wait_processed(auto_server, before + HOLDERS)
            reading = _reading(auto_server)
            assert reading["pending"] == HOLDERS and reading["projected"] >= 0.9, reading
            held_auto = pool.submit(_auto_request, auto_server)
            _wait_processed(auto_server, before + HOLDERS + 1)
        finally:
            requests.post(f"{auto_server.url}/resume", timeout=60).raise_for_status()
        headers, prompt = held_auto.result(timeout=600)
    assert headers["x-prune-method"] == "divprune" and headers["x-prune-ratio"] == "0.75"
    assert f"pending={HOLDERS}" in headers["x-prune-load"], headers
    assert prompt == unpruned - (N - MAX_KEEP)
    count, total = _auto_ratio(auto_server, auto_server.metrics_text(), "divprune")
    assert count == 1 and total == pytest.approx(0.75)
    assert _auto_ratio(auto_server, auto_server.metrics_text(), "none")[0] >= 1
    log = Path(auto_server.log).read_text()
    assert "prune auto method=divprune ratio=0.75 kv_usage=" in log

    for holder in holders:
        holder.join(timeout=600)
    assert not any(holder.is_alive() for holder in holders)
    # The held requests are answered and the engine is idle: every token again (within a
    # few requests: the last answer can reach the client a moment before the server has
    # counted it out of flight).
    deadline = time.monotonic() + 30
    while True:
        headers, prompt = _auto_request(auto_server)
        if headers["x-prune-ratio"] == "0" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert headers["x-prune-method"] == "none" and headers["x-prune-ratio"] == "0", headers
    assert prompt == unpruned


def test_the_methods_endpoint_shows_the_policy_and_the_load(auto_server: Server):
    document = requests.get(f"{auto_server.url}/v1/prune/methods", timeout=10).json()
    assert document["fields"]["prune"]["default"] == "auto"
    assert "auto" in document["fields"]["prune"]["allowed"]
    policy = document["auto"]["policy"]
    assert policy["ratios"] == [0.0, 0.25, 0.5, 0.75] and policy["image_method"] == "divprune"
    assert policy["thresholds"] == [0.5, 0.7, 0.9]
    assert set(document["auto"]["reading"]) == {
        "kv_usage", "waiting", "pending", "projected", "age_s",
    }  # fmt: skip


def test_a_bad_field_with_auto_is_a_400_naming_it(auto_server: Server):
    response = requests.post(
        f"{auto_server.url}/v1/chat/completions",
        json={"model": TINY_NAME, "messages": image_messages(), "prune": "auto", "prune_keep": 9},
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prune_keep"
    assert "prune_ratio" in response.json()["error"]["message"]


# -- the content measure (loadtests/content_keep.py; measured, not used by auto) ----------------------------------------------------------------------


def _squares(count: int, size: int = 336) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for k in range(count):
        x, y = 20 + (k % 6) * 50, 20 + (k // 6) * 50
        draw.rectangle((x, y, x + 30, y + 30), fill="black")
    return image


def test_a_busier_image_measures_higher():
    measures = [complexity(_squares(count)) for count in (0, 1, 6, 36)]
    assert measures[0] == 0.0
    assert measures == sorted(measures) and len(set(measures)) == 4
    # The measure reads a fixed side: the same scene at another size measures about the same.
    assert complexity(_squares(6).resize((672, 500))) == pytest.approx(measures[2], rel=0.2)
    noise = Image.effect_noise((336, 336), 100).convert("RGB")
    assert complexity(noise) > measures[3]


def test_content_keeps_follow_the_weights_and_keep_the_mean():
    weights = [weight(m, 0.5) for m in (0.0004, 0.0016, 0.0036)]  # sqrt: 0.02, 0.04, 0.06
    reference = sum(weights) / 3
    keeps = content_keeps([144] * 3, [576] * 3, weights, reference)
    assert keeps == [72, 144, 216] and sum(keeps) == 3 * 144
    # Within [floor, N]; a reference of 0 (nothing measured) keeps the fixed count.
    assert content_keeps([144, 144], [576, 576], [0.0, 10.0], 1.0, [4, 4]) == [4, 576]
    assert content_keeps([144], [576], [5.0], 0.0) == [144]
