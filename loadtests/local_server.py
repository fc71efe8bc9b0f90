"""A local ``vllm-prune serve`` for the load tests: free port, own process group, stopped after.

``make loadtest`` without URL and ``kv_capacity.py`` start one: the demo model
(or any model path) with a fixed number of KV blocks, so that KV usage and
queueing show on a CPU, where 1 GiB of KV would hold a million tiny-model tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from loadtests.probe import metric_labels

STARTUP_TIMEOUT_S = 420
DEFAULT_BLOCK_SIZE = 32  # the smallest KV block the CPU attention backend takes


@dataclass(frozen=True)
class LocalServer:
    url: str
    log: Path
    pid: int  # the server's main process (its engine and workers are its children)


@dataclass(frozen=True)
class KvConfig:
    """The KV cache the server got, as its ``vllm:cache_config_info`` reports it."""

    num_blocks: int
    block_size: int

    @property
    def usable_blocks(self) -> int:
        """vLLM's block pool keeps one block aside (the null block) that no request gets."""
        return self.num_blocks - 1


def kv_config(metrics_text: str) -> KvConfig:
    labels = metric_labels(metrics_text, "vllm:cache_config_info")
    return KvConfig(num_blocks=int(labels["num_gpu_blocks"]), block_size=int(labels["block_size"]))


TINY = {"qwen2.5-vl", "qwen3-vl"}  # fixtures that take videos (devtools.tiny_families)


def build_tiny(name: str, path: Path) -> Path:
    """The tiny fixture ``name`` (seeded random weights) under ``path``."""
    from devtools.tiny_families import build_tiny_qwen2_vl, build_tiny_qwen3

    return build_tiny_qwen2_vl(path, "2.5") if name == "qwen2.5-vl" else build_tiny_qwen3(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_args(
    kv_blocks: int | None,
    block_size: int,
    max_num_seqs: int | None,
    max_model_len: int | None = None,
) -> list[str]:
    """Options that fix the KV cache (``--num-gpu-blocks-override`` works on the CPU backend).

    vLLM refuses to start unless one request of ``max_model_len`` tokens fits the
    usable blocks; a small KV cache needs a smaller ``max_model_len``.
    """
    args = ["--block-size", str(block_size)]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len)]
    if kv_blocks is not None:
        args += ["--num-gpu-blocks-override", str(kv_blocks)]
    if max_num_seqs is not None:
        args += ["--max-num-seqs", str(max_num_seqs)]
    return args


@contextmanager
def local_server(
    log: Path,
    model: str | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[LocalServer]:
    """``vllm-prune serve [model] args`` on a loopback port until the block ends (``env``:
    added to this process's environment)."""
    port = free_port()
    command = [sys.executable, "-m", "vllm_prune.cli", "serve", *([model] if model else []), *args]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, **(env or {}))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    # A SIGTERM (a CI timeout, kill) unwinds through `finally` like Ctrl-C does, so the
    # server, in a session of its own, is stopped with us and not left running.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        wait_healthy(process, url, log)
        yield LocalServer(url=url, log=log, pid=process.pid)
    finally:
        _stop(process)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def wait_healthy(process: subprocess.Popen, url: str, log: Path) -> None:
    """Until GET /health answers 200; a server that exits first raises with its log's tail."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server exited with {process.returncode} ({log}):\n{tail}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S}s; log: {log}")


def _stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the server's process group (API server, engine, workers), then SIGKILL
    whatever of the group is left, so that no engine outlives a load test."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def image_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (width, height), for options."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def add_target_args(parser: argparse.ArgumentParser) -> None:
    """Where a load test sends its load: ``--url`` (else a local server of its own)."""
    target = parser.add_argument_group("target (no --url: a local server is started and stopped)")
    target.add_argument("--url", help="server base URL, e.g. http://host:8000")
    target.add_argument("--model", help="served model name (default: the server's first model)")
    target.add_argument("--tokenizer", help="tokenizer for the random text (default: the model)")
    target.add_argument(
        "--metrics-url", help="/metrics to sample (default URL/metrics; one replica's)"
    )


def add_local_server_args(parser: argparse.ArgumentParser) -> None:
    """The local server a load test starts without ``--url``: model, options, a fixed KV."""
    local = parser.add_argument_group("local server (without --url)")
    local.add_argument("--serve-model", help="model path (default: vllm-prune serve's demo)")
    local.add_argument(
        "--serve-args",
        type=shlex.split,
        default=[],
        help='more vllm serve options, e.g. --serve-args="--dtype float32 --enforce-eager"',
    )
    local.add_argument(
        "--kv-blocks", type=int, default=256, help="KV blocks, fixed (default 256; 0: vLLM's own)"
    )
    local.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    local.add_argument("--max-num-seqs", type=int, default=256)
