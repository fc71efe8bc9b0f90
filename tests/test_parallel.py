"""Same tokens, same answer on one rank or many: the parallel layouts on ``shapes-llava``.

The shipped model (its LLM and vision tower have 4 attention heads each, 2 per rank
under ``--tensor-parallel-size 2``) is served on one rank, on two tensor-parallel
ranks and on two data-parallel engines (which vLLM fronts with two API servers),
side by side. Every method at ratio 0.75 gets the same images and questions on each:
the prompt tokens, the greedy answer with its top log-probabilities, and the
retained indices of every rank (``VLLM_PRUNE_TRACE``; with TP each rank writes its
own line) must agree. Methods that read attention average over all heads of all
ranks (``signals.heads``); without that each rank kept its own tokens. Pipeline
parallelism is refused at start (``integration.parallel``). The one-rank server also
runs with ``--api-key``, as the deploy files do, for the test that the prune middleware
answers nothing on a guarded path before vLLM has checked the key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from loadtests.probe import metric
from vllm_prune.eval.client import data_url
from vllm_prune.eval.sample import SHORT_ANSWER
from vllm_prune.eval.shapes import make_scene, png_bytes, render
from vllm_prune.methods import method_names

from .conftest import (
    BLOCK_SIZE,
    TRACE_FILE,
    TWO_RANKS,
    Server,
    Traced,
    ask_traced,
    assert_same_answer,
    assert_same_on_two_ranks,
    free_port,
    running,
    stop,
)

API_KEY = "unused"  # what the tests' clients send (conftest); tp1 requires it
LAYOUTS = {
    "tp1": ["--api-key", API_KEY],  # as the deploy files run: with an API key
    "tp2": ["--tensor-parallel-size", "2"],
    "dp2": ["--data-parallel-size", "2"],  # two engines; vLLM starts two API servers
}
# Two ranks sum the row-parallel layers' halves in another order than one rank does:
# log-probabilities move in the last digits, never by more than this.
LOGPROB_TOLERANCE = 1e-3
# (scene seed, question): a new image each, so vLLM's encoder cache never hides a trace line.
ASKED = (
    (1_000_000_007, "Where is the red circle?"),
    (1_000_000_011, "How many squares are there?"),
)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Server], Path]]:
    root = tmp_path_factory.mktemp("parallel")
    base = [sys.executable, "-m", "vllm_prune.cli", "serve", "--block-size", str(BLOCK_SIZE)]
    commands = {name: [*base, *args] for name, args in LAYOUTS.items()}
    envs = {name: TWO_RANKS for name in LAYOUTS if name != "tp1"}
    with running(root, commands, envs=envs) as started:
        yield started, root / TRACE_FILE


def _ask(
    server: Server, trace: Path, method: str, seed: int, question: str, new_connection=False
) -> Traced:
    image = data_url(png_bytes(render(make_scene(seed))))
    content = [
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "text", "text": f"{question}\n{SHORT_ANSWER}"},
    ]
    messages = [{"role": "user", "content": content}]
    extra = {"prune": method, "prune_ratio": 0.75}
    return ask_traced(server, trace, "shapes-llava", messages, extra, new_connection=new_connection)


def test_pipeline_parallelism_is_refused_at_start_with_what_to_use(tmp_path: Path) -> None:
    # First in the module: its engine and two workers start before the three layouts do
    # (all of them at once came close to this machine's 24 GiB).
    command = [
        sys.executable, "-m", "vllm_prune.cli", "serve", "--block-size", str(BLOCK_SIZE),
        "--pipeline-parallel-size", "2", "--port", str(free_port()),
    ]  # fmt: skip
    env = {**os.environ, **TWO_RANKS, "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = tmp_path / "pp2.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=600)
        finally:
            stop(process)  # the whole group: no engine or worker outlives the test
    text = log.read_text(errors="replace")
    assert returncode != 0
    assert "pruning does not run with --pipeline-parallel-size > 1" in text
    assert "use --tensor-parallel-size instead" in text


# Methods whose later steps follow the whole order of near-equal cosines (``vispruner``'s
# rounds of matching): the last digits two ranks add differently swap duplicate patches
# of a flat background, so TP keeps one selection on every rank, as many tokens as one
# rank, but not always the same duplicates (docs/parallel.md).
ORDER_SENSITIVE = {"vispruner"}


@pytest.mark.parametrize("method", sorted(set(method_names()) - ORDER_SENSITIVE))
def test_two_ranks_keep_the_tokens_and_give_the_answer_of_one(
    layouts: tuple[dict[str, Server], Path], method: str
) -> None:
    servers, trace = layouts
    for seed, question in ASKED:
        one = _ask(servers["tp1"], trace, method, seed, question)
        two = _ask(servers["tp2"], trace, method, seed, question)
        if method == "none":
            assert one.kept == two.kept == {}
        assert_same_on_two_ranks(one, two, LOGPROB_TOLERANCE)


@pytest.mark.parametrize("method", sorted(ORDER_SENSITIVE))
def test_two_ranks_keep_one_selection_of_the_size_of_one(
    layouts: tuple[dict[str, Server], Path], method: str
) -> None:
    servers, trace = layouts
    for seed, question in ASKED:
        one = _ask(servers["tp1"], trace, method, seed, question)
        two = _ask(servers["tp2"], trace, method, seed, question)
        assert two.prompt_tokens == one.prompt_tokens
        assert set(two.kept) == {(0, None), (1, None)}
        assert two.kept[(0, None)] == two.kept[(1, None)]
        assert len(two.kept[(0, None)]) == len(one.kept[(None, None)])


DP_METHODS = method_names()
# Images of their own: tp1 has not seen them, so both servers trace each one.
DP_ASKED = (
    (1_000_000_013, "Is there a red circle?"),
    (1_000_000_017, "Where is the blue square?"),
    (1_000_000_019, "How many circles are there?"),
)


def _api_servers(server: Server, what: str = "") -> set[str]:
    """The API servers whose log lines (vLLM prefixes each with its process) hold ``what``."""
    names = ("ApiServer_0", "ApiServer_1")
    lines = server.log.read_text(errors="replace").splitlines()
    return {
        n for n in names if any(line.startswith(f"({n} pid=") and what in line for line in lines)
    }


def test_two_engines_answer_as_one_and_count_each_request_once(
    layouts: tuple[dict[str, Server], Path],
) -> None:
    servers, trace = layouts
    dp = servers["dp2"]
    assert _api_servers(dp) == {"ApiServer_0", "ApiServer_1"}
    before = dp.metrics_text()
    asked = 0
    for method in DP_METHODS:
        for seed, question in DP_ASKED:
            one = _ask(servers["tp1"], trace, method, seed, question)
            two = _ask(dp, trace, method, seed, question, new_connection=True)
            asked += 1
            assert two.kept == one.kept, (method, question)  # one engine prunes each image
            assert_same_answer(one, two, LOGPROB_TOLERANCE)
    # Both API servers processed some of them (the log line each writes per request)...
    assert _api_servers(dp, "prune method=") == {"ApiServer_0", "ApiServer_1"}
    # ... and /metrics, on either, adds up both (vLLM's multiprocess Prometheus registry).
    after = [dp.metrics_text() for _ in range(4)]
    for text in after:
        for method in DP_METHODS:
            counted = metric(text, "vllm_prune_requests_total", method=method)
            assert counted - metric(before, "vllm_prune_requests_total", method=method) == len(
                DP_ASKED
            )
        kept = metric(text, "vllm_prune_visual_tokens_after_total")
        gained = kept - metric(before, "vllm_prune_visual_tokens_after_total")
        assert gained == len(DP_ASKED) * (576 + 144 * (len(DP_METHODS) - 1))
    assert requests.get(f"{dp.url}/health", timeout=10).status_code == 200
    assert asked == len(DP_ASKED) * len(DP_METHODS)


def test_an_api_key_guards_the_prune_routes_and_leaves_probes_open(
    layouts: tuple[dict[str, Server], Path],
) -> None:
    servers, _ = layouts
    url = servers["tp1"].url
    key = {"Authorization": f"Bearer {API_KEY}"}
    bad = {"model": "shapes-llava", "messages": [], "prune": "bogus"}
    # Without the key, vLLM's 401 comes first: no prune validation, no method list.
    assert requests.post(f"{url}/v1/chat/completions", json=bad, timeout=30).status_code == 401
    assert requests.get(f"{url}/v1/prune/methods", timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert requests.get(f"{url}/v1/prune/methods", headers=wrong, timeout=30).status_code == 401
    # With it, the middleware answers as usual.
    done = requests.post(f"{url}/v1/chat/completions", json=bad, headers=key, timeout=30)
    assert done.status_code == 400 and done.json()["error"]["param"] == "prune"
    methods = requests.get(f"{url}/v1/prune/methods", headers=key, timeout=30)
    assert methods.status_code == 200
    # Probes and scraping need no key (the deploy files' health checks and Prometheus).
    assert requests.get(f"{url}/health", timeout=30).status_code == 200
    assert requests.get(f"{url}/metrics", timeout=30).status_code == 200
