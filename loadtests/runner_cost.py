"""Per-request cost of Model Runner V2 against V1 on the demo model, side by side.

Serves ``shapes-llava`` twice (``vllm-prune serve`` on vLLM's V1 runner and on V2 under
Triton's interpreter, ``devtools/runner_v2``) and sends the README quickstart request to
each in turn, unpruned and at ``pooling`` 0.75, one request at a time. Prints the median
latency per runner and their ratio, and the ratio per decoded token (the difference of
a 16-token and a 1-token answer). CPU only: it says what the V2 lane costs here, not
what V2 costs on a GPU.

    .venv/bin/python -m loadtests.runner_cost --rounds 10
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from openai import OpenAI

from devtools.runner_v2 import V1, V2_LINE, runner_v2_env
from loadtests.local_server import local_server
from vllm_prune.eval import shapes
from vllm_prune.eval.client import data_url

QUESTION = "What color is the square?\nAnswer the question using a single word or phrase."
SETTINGS = {"none": {"prune": "none"}, "pooling 0.75": {"prune": "pooling", "prune_ratio": 0.75}}


def scene_url(seed: int) -> str:
    """A ``shapes`` scene as a data URL (the quickstart's is seed 1_000_000_001)."""
    return data_url(shapes.png_bytes(shapes.render(shapes.make_scene(seed))))


def timed(client: OpenAI, url: str, extra: dict, max_tokens: int) -> float:
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}]  # fmt: skip
    start = time.perf_counter()
    client.chat.completions.create(
        model="shapes-llava", messages=messages, max_tokens=max_tokens, temperature=0.0,
        extra_body={**extra, "ignore_eos": True},
    )  # fmt: skip
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="runner-cost-"))
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(local_server(root / f"{name}.log", env=env))
            for name, env in (("V1", V1), ("V2", runner_v2_env()))
        }
        assert V2_LINE in servers["V2"].log.read_text(), "the V2 server runs V1"
        assert V2_LINE not in servers["V1"].log.read_text()
        clients = {n: OpenAI(base_url=f"{s.url}/v1", api_key="-") for n, s in servers.items()}
        times: dict[tuple[str, str, int], list[float]] = {}
        seeds = itertools.count(1_000_000_001)
        for round_ in range(args.rounds + 1):  # the first round warms up, not counted
            for setting, extra in SETTINGS.items():
                for tokens in (1, 16):
                    # A new scene per request: neither the encoder cache nor the prefix
                    # cache answers it; both runners get the same one.
                    url = scene_url(next(seeds))
                    for name, client in clients.items():
                        took = timed(client, url, extra, tokens)
                        if round_:
                            times.setdefault((name, setting, tokens), []).append(took)
    median = {key: statistics.median(value) for key, value in times.items()}
    print(f"{args.rounds} rounds, median seconds per request (shapes-llava, CPU)")
    for setting in SETTINGS:
        v1, v2 = median[("V1", setting, 16)], median[("V2", setting, 16)]
        per_token = {
            n: (median[(n, setting, 16)] - median[(n, setting, 1)]) / 15 for n in ("V1", "V2")
        }
        print(
            f"{setting:>13}: V1 {v1:.3f} s, V2 {v2:.3f} s, V2/V1 {v2 / v1:.2f}x; "
            f"per decoded token V1 {per_token['V1'] * 1e3:.1f} ms, "
            f"V2 {per_token['V2'] * 1e3:.1f} ms, V2/V1 {per_token['V2'] / per_token['V1']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
