"""One pruning server and one plain vLLM server per test session, shared by the tests.

Both serve the same tiny LLaVA folder (seeded random weights on disk, so the two
servers hold identical weights). The plain server runs with every vLLM
plugin switched off: it is the reference for "pruning off changes nothing".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from openai import OpenAI

from devtools.tiny_llava import build_tiny_llava
from loadtests.local_server import wait_healthy
from vllm_prune.demo import SERVE_ARGS as DEMO_ARGS
from vllm_prune.observability.trace import TraceLine, read_trace

TINY_NAME = "tiny-llava"  # the session servers' model: random weights, real token counts
BLOCK_SIZE = 32  # the smallest KV block the CPU attention backend takes (default 128)
TRACE_FILE = "prune-trace.jsonl"  # beside the server logs: what the servers kept (VLLM_PRUNE_TRACE)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    @cached_property
    def client(self) -> OpenAI:
        # One client for the session: a client that is garbage-collected closes
        # its connections, and the server then aborts a stream still running.
        return OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def metrics_text(self) -> str:
        response = requests.get(f"{self.url}/metrics", timeout=30)
        response.raise_for_status()
        return response.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    handle = log.open("wb")
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group started with ``start_new_session``, SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def pruned_command(model: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "vllm_prune.cli", "serve", model, *args]


def plain_command(model: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *args]


@dataclass(frozen=True)
class Traced:
    """A greedy answer with what the servers' trace gained while it was computed."""

    prompt_tokens: int
    text: str
    top: list[dict[str, float]]  # per generated token: its top tokens' log-probabilities
    kept: dict[tuple[int | None, str | None], tuple[int, ...]]  # (rank, part) -> indices


def ask_traced(
    server: Server, trace: Path, model: str, messages: list, extra: dict, *, new_connection=False
) -> Traced:
    """One request, and the trace lines it added (so: one request at a time per trace).

    ``new_connection``: a client of its own, so the kernel picks the API server anew
    where several share the port.
    """
    before = trace.stat().st_size if trace.exists() else 0
    client = (
        OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        if new_connection
        else server.client
    )
    response = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=3,
        temperature=0.0,
        logprobs=True,
        top_logprobs=5,
        extra_body=extra,
    )
    if new_connection:
        client.close()
    lines = trace_lines_since(trace, before)
    kept = {(line.rank, line.part): line.indices for line in lines}
    assert len(kept) == len(lines), lines  # one line per rank and part
    return Traced(
        prompt_tokens=response.usage.prompt_tokens,
        text=response.choices[0].message.content,
        top=[
            {t.token: t.logprob for t in token.top_logprobs}
            for token in response.choices[0].logprobs.content
        ],
        kept=kept,
    )


def kept_alone(server: Server, trace: Path, seeds, size, kept: int) -> list[dict]:
    """What ``divprune`` keeps of each noise image (``seeds``) sent alone with ``prune_keep``:
    its trace rows by (rank, part), one dict per image."""
    from loadtests.probe import image_messages

    extra = {"prune": "divprune", "prune_keep": kept}
    return [
        ask_traced(
            server, trace, "tiny", image_messages("what ?", seed=seed, size=size), extra
        ).kept
        for seed in seeds
    ]


def trace_lines_since(path: Path, start: int) -> list[TraceLine]:
    """The trace lines written after byte ``start`` (read and checked as ``read_trace`` does)."""
    if not path.exists():
        return []
    fresh = path.with_suffix(".new.jsonl")
    fresh.write_bytes(path.read_bytes()[start:])
    return read_trace(fresh)


def assert_same_answer(one: Traced, two: Traced, tolerance: float) -> None:
    """The same prompt tokens and greedy tokens, log-probabilities within ``tolerance``.

    A token may be in one top list and not the other only where it ties, within
    ``tolerance``, with the last token of the other list (the two swapped places at
    the edge).
    """
    assert two.prompt_tokens == one.prompt_tokens
    assert two.text == one.text
    for mine, theirs in zip(two.top, one.top, strict=True):
        for token in set(mine) | set(theirs):
            if token in mine and token in theirs:
                assert abs(mine[token] - theirs[token]) <= tolerance, (token, mine, theirs)
            else:
                found, other = (mine, theirs) if token in mine else (theirs, mine)
                assert found[token] <= min(other.values()) + tolerance, (token, mine, theirs)


def assert_same_on_two_ranks(one: Traced, two: Traced, tolerance: float) -> None:
    """``two`` (tensor parallel, 2 ranks) kept on each rank what ``one`` kept, and answered
    alike (``assert_same_answer``: two ranks add the row-parallel layers' halves in
    another order)."""
    parts = {part for rank, part in one.kept}
    assert all(rank is None for rank, _ in one.kept)
    assert set(two.kept) == {(rank, part) for rank in (0, 1) for part in parts}
    for part in parts:
        assert two.kept[(0, part)] == two.kept[(1, part)] == one.kept[(None, part)], part
    assert_same_answer(one, two, tolerance)


# vLLM's CPU build runs one rank per core set: two ranks on this machine's two cores.
TWO_RANKS = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}


@contextmanager
def running(
    root: Path, commands: dict[str, list[str]], envs: dict[str, dict[str, str]] | None = None
) -> Iterator[dict[str, Server]]:
    """Start servers at once (start-up dominates), wait for all, stop them at the end.

    A name starting with ``plain`` runs with every vLLM plugin switched off;
    ``envs`` adds variables to a named server's environment.
    """
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["VLLM_PRUNE_TRACE"] = str(root / TRACE_FILE)
    plain_env = dict(env, VLLM_PLUGINS="")  # an allowlist that matches no plugin
    started = {}
    try:
        for name, command in commands.items():
            log = root / f"{name}.log"
            chosen = plain_env if name.startswith("plain") else env
            chosen = {**chosen, **(envs or {}).get(name, {})}
            started[name] = (*_start(command, log, chosen), log)
        for process, url, log in started.values():
            wait_healthy(process, url, log)
        yield {name: Server(url, process, log) for name, (process, url, log) in started.items()}
    finally:
        for process, _, _ in started.values():
            stop(process)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Our server (pooling 0.75 by default) and plain vLLM on the demo LLaVA."""
    root = tmp_path_factory.mktemp("servers")
    model = str(build_tiny_llava(root / "tiny-llava"))
    common = [*DEMO_ARGS, "--served-model-name", TINY_NAME, "--block-size", str(BLOCK_SIZE)]
    commands = {
        "pruned": pruned_command(
            model, *common, "--prune-default", "pooling", "--prune-ratio", "0.75"
        ),
        "plain": plain_command(model, *common),
    }
    with running(root, commands) as started:
        yield started


@pytest.fixture(scope="session")
def server(servers: dict[str, Server]) -> Server:
    return servers["pruned"]


@pytest.fixture(scope="session")
def plain_server(servers: dict[str, Server]) -> Server:
    return servers["plain"]


@pytest.fixture(scope="session")
def model_name() -> str:
    return TINY_NAME


# -- fuzzing (tests/test_hostile.py, tests/test_video_hostile.py) --------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def server_errors_in(response: requests.Response) -> list[str]:
    """A 5xx status, or a 5xx error event inside a stream that had started with 200."""
    if response.status_code >= 500:
        return [f"{response.status_code}: {response.text[:300]}"]
    found = []
    for line in response.text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            error = json.loads(line.removeprefix("data: ")).get("error", {})
            if isinstance(error, dict) and int(error.get("code") or 0) >= 500:
                found.append(line[:300])
    return found


def fuzz_settings(default_examples: int) -> settings:
    """The fuzz tests' settings: CI runs the same bounded set every time;
    ``VLLM_PRUNE_FUZZ_EXAMPLES`` / ``VLLM_PRUNE_FUZZ_RANDOM=1`` (``make fuzz``) run more,
    and new ones."""
    return settings(
        max_examples=int(os.environ.get("VLLM_PRUNE_FUZZ_EXAMPLES", default_examples)),
        deadline=None,
        derandomize=os.environ.get("VLLM_PRUNE_FUZZ_RANDOM") != "1",
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def check_fuzz_log(log: list[int], what: str) -> None:
    """The fuzzed bodies' statuses: some served, some refused (the fuzzing reaches past the
    validation)."""
    print(f"fuzzed {what}: {len(log)}, statuses {dict(sorted(Counter(log).items()))}")
    assert 200 in log and any(400 <= s < 500 for s in log), Counter(log)
