"""One pruning server and one plain vLLM server per test session, shared by the tests.

Both serve the same tiny LLaVA folder (seeded random weights on disk, so the two
servers hold identical weights). The plain server runs with every vLLM
plugin switched off: it is the reference for "pruning off changes nothing".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from devtools.tiny_llava import build_tiny_llava
from loadtests.local_server import wait_healthy
from vllm_prune.demo import SERVE_ARGS as DEMO_ARGS

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


@contextmanager
def running(root: Path, commands: dict[str, list[str]]) -> Iterator[dict[str, Server]]:
    """Start servers at once (start-up dominates), wait for all, stop them at the end.

    A name starting with ``plain`` runs with every vLLM plugin switched off.
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
