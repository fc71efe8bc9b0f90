"""Videos under the hostile-input contract: fuzzed bodies with videos and a short video
soak, on a tiny Qwen2.5-VL. Every body gets an answer or a 4xx, never a 5xx, and the
server keeps serving. (The degenerate clips, each with its status and count, are sent to
Qwen2.5-VL and Qwen3-VL by ``tests/test_families.py``.)

One server: ``vllm-prune serve`` on the tiny Qwen2.5-VL with its multimodal processor
cache capped at 0.1 GiB. A ``prune_budget`` request's items get hashes of their own
request, so each one adds its items to that cache: the engine's memory settles only once
the cache is full (``make soak`` serves the same way).
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from devtools.tiny_families import build_tiny_qwen2_vl
from loadtests import clips, soak
from loadtests.probe import noise_image_data_url
from vllm_prune.methods import method_names

from .conftest import (
    BLOCK_SIZE,
    JSON,
    Server,
    check_fuzz_log,
    fuzz_settings,
    pruned_command,
    running,
    server_errors_in,
)

MODEL = "tiny"
SOAK_SERVE_ARGS = ["--dtype", "float32", "--enforce-eager", "--mm-processor-cache-gb", "0.1"]


@pytest.fixture(scope="module")
def video_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root: Path = tmp_path_factory.mktemp("video-hostile")
    model = str(build_tiny_qwen2_vl(root / "model", "2.5"))
    args = [*SOAK_SERVE_ARGS, "--max-model-len", "8192", "--block-size", str(BLOCK_SIZE)]
    command = pruned_command(model, *args, "--served-model-name", MODEL)
    with running(root, {"pruned": command}) as started:
        yield started["pruned"]


def assert_serving(server: Server) -> None:
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    body = {
        "model": MODEL,
        "max_tokens": 2,
        "messages": soak._video(clips.data_url(clips.mp4_bytes(seed=3))),
        "prune": "evs",
    }
    assert requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).ok


# -- fuzzing -------------------------------------------------------------------------------

_CLIP = clips.mp4_bytes(seed=4)
VIDEO_URLS = st.sampled_from(
    [
        clips.data_url(_CLIP),
        clips.data_url(_CLIP[: len(_CLIP) // 2]),  # truncated
        "data:video/mp4;base64," + base64.b64encode(random.Random(5).randbytes(2000)).decode(),
        clips.data_url(clips.DEGENERATE["one frame"][1]()),
        clips.data_url(clips.DEGENERATE["zero fps"][1]()),
        clips.data_url(clips.DEGENERATE["frame count lies"][1]()),
        clips.data_url(clips.mp4_bytes(seed=6, frames=3, size=(64, 48))),
        "data:video/mp4;base64,",
        "data:video/jpeg;base64,AAAA",
        "http://127.0.0.1:9/clip.mp4",
        "http://[::1]/clip.mp4",
        "http://169.254.169.254/latest/clip.mp4",
        "file:///etc/passwd",
        "",
    ]
) | st.text(max_size=20)
IMAGE_URLS = st.sampled_from([noise_image_data_url(7, (112, 112)), "data:image/png;base64,AAAA"])
PARTS = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("video_url"), "video_url": st.fixed_dictionaries({"url": VIDEO_URLS})}
    ),
    st.fixed_dictionaries(
        {"type": st.just("video_url"), "video_url": VIDEO_URLS | JSON}
    ),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": IMAGE_URLS})}
    ),
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}),
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "user", "assistant", "system"]),
            "content": st.lists(PARTS, min_size=1, max_size=3),
        }
    ),
    min_size=1,
    max_size=2,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "prune": st.sampled_from([*method_names(), "evs", "vidcom2", "", "EVS"]) | JSON,
        "prune_ratio": st.floats(-0.5, 1.5) | JSON,
        "prune_keep": st.integers(-2, 1000) | JSON,
        "prune_budget": st.integers(-2, 1000) | JSON,
        "mm_processor_kwargs": st.dictionaries(
            st.sampled_from(["prune", "prune_ratio", "fps", "num_frames"]), JSON, max_size=2
        ),
        "media_io_kwargs": st.just({"video": {"num_frames": 1}}) | JSON,
        "stream": st.booleans(),
    },
)


@pytest.fixture(scope="module")
def fuzz_log(video_server: Server) -> Iterator[list]:
    """The statuses the fuzzed bodies got: some served, some refused, the server serving."""
    log: list = []
    yield log
    check_fuzz_log(log, "video bodies")
    assert_serving(video_server)


@fuzz_settings(60)
@given(messages=MESSAGES, fields=FIELDS)
def test_fuzzed_video_bodies_never_get_a_5xx(video_server, fuzz_log, messages, fields):
    """Valid, truncated, random and degenerate clips, URLs the server must not fetch,
    images beside them in any order, every prune field incl. ``evs``, ``vidcom2`` and
    budgets over videos and images. ``make fuzz`` runs more, and new ones."""
    body = {"model": MODEL, "messages": messages, "max_tokens": 2, **fields}
    response = requests.post(f"{video_server.url}/v1/chat/completions", json=body, timeout=120)
    fuzz_log.append(response.status_code)
    assert server_errors_in(response) == [], json.dumps(body)[:2000]


# -- the soak ------------------------------------------------------------------------------


def test_the_video_soak_short_version(video_server):
    """``make soak`` runs 10,000 video-mix requests; here 1,500 after 1,000 of warm-up, with
    the same checks: no 5xx, every request the status of its kind, nothing left in vLLM,
    and no server process grown by 5% or more."""
    report = soak.soak(
        video_server.url,
        video_server.process.pid,
        MODEL,
        requests=1500,
        warmup=1000,
        concurrency=4,
        mix="videos",
    )
    assert report.requests == 1500
    assert report.ok, soak.markdown(report)
    kinds = set(report.statuses)
    assert {
        "video pruned", "video unpruned", "image pruned", "video and image, one budget",
        "video stream", "video dropped stream", "text",
    } <= kinds  # fmt: skip
    bad = {k for k in kinds if k.startswith("bad: ")}
    assert len(bad) == len(soak.bad_video_requests("x")), bad
    assert_serving(video_server)
