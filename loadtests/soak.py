"""Soak: many mixed requests against one local server, then its 5xx, memory and leftovers.

    python -m loadtests.soak                          # 10,000 requests on a server of its own
    python -m loadtests.soak --mix videos --tiny qwen2.5-vl --requests 2000
    python -m loadtests.soak --requests 500 --url http://127.0.0.1:8000 --pid 1234

The image mix (``--mix images``): image requests pruned by a random method and ratio,
unpruned, text only, streamed to the end, streams the client drops after the first
chunk, the Responses API, and bad input of every kind the server refuses (each must get
its own 4xx). The video mix (``--mix videos``, a model that takes videos): videos pruned
by ``evs``, ``vidcom2`` and ``pooling`` and unpruned, images, a video and an image under
one ``prune_budget``, streams and dropped streams with a video, text, and bad clips
(a single frame, zero fps, random and truncated bytes, a loopback URL, keeps below the
frame floor). Images and clips come from fixed pools, so vLLM's caches are warm after
the warm-up and memory that keeps growing is a leak, not a cache filling. It reports the status of
every request by kind, the 5xx count, the resident memory of every server process
(the API server, the engine, its workers) after the warm-up and at the end, and the
requests vLLM still has running or waiting once the last answer is in.

Loopback only: it is a load generator, not a scanner. Bounded in count
(``--requests``) and in time (``--max-seconds``). Exit status 1 when any request got a
5xx or an unexpected status, a process grew by ``--max-growth`` or more, or requests
were left running. ``make soak`` runs the full version; ``tests/test_hostile.py`` a
short one on the test server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from loadtests import clips
from loadtests.local_server import TINY, build_tiny
from loadtests.probe import metric, noise_image_data_url

FAST_METHODS = ("pooling", "random", "divprune", "fastv", "visionzip", "dart")
POOL = 8  # distinct images; with the settings below, every mm item the soak makes is
RATIOS = (0.75, 0.889)  # in vLLM's caches after the warm-up (``warmup_requests``)
DEFAULT_REQUESTS = 10_000
# vLLM's worker settles in its first few thousand image requests (allocator and caches:
# +6% over 6,000 requests after 1,100, then +0.2% over the next 6,000 on shapes-llava).
DEFAULT_WARMUP = 3000
DEFAULT_MAX_GROWTH = 0.05
MIXES = ("images", "videos")
VIDEO_POOL = 3  # distinct clips of 8 frames (224 x 224, 4 fps: 2 temporal patches of Qwen's)
VIDEO_METHODS = ("evs", "vidcom2", "pooling")
VIDEO_IMAGE_SIZE = (336, 336)


def png_claiming(width: int, height: int) -> str:
    """A 4 x 4 PNG whose header claims ``width`` x ``height``: a decompression bomb's header."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode()


def _user(url: str, text: str = "what is in the image ?") -> list[dict]:
    image = {"type": "image_url", "image_url": {"url": url}}
    return [{"role": "user", "content": [image, {"type": "text", "text": text}]}]


def _video(url: str, image: str | None = None, text: str = "what moves ?") -> list[dict]:
    """A user message with a video (and an image after it, where given)."""
    parts: list[dict] = [{"type": "video_url", "video_url": {"url": url}}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": image}})
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@dataclass(frozen=True)
class Request:
    kind: str
    path: str
    body: dict
    expect: frozenset[int]
    stream: bool = False
    drop: bool = False  # close the stream after its first chunk


def bad_requests(image: str) -> list[tuple[str, dict, int]]:
    """(what, body without model and max_tokens, the status it must get)."""
    return [
        ("unknown method", {"messages": _user(image), "prune": "nope"}, 400),
        ("ratio out of range", {"messages": _user(image), "prune_ratio": 2}, 400),
        ("typo in a prune field", {"messages": _user(image), "prune_ration": 0.5}, 400),
        ("prune_text from the client", {"messages": _user(image), "prune_text": "x"}, 400),
        ("messages not a list", {"messages": 5, "prune": "pooling"}, 400),
        ("processor kwargs", {"messages": _user(image), "mm_processor_kwargs": {"x": 1}}, 400),
        ("media_io_kwargs", {"messages": _user(image), "media_io_kwargs": {"image": {}}}, 400),
        ("file URL", {"messages": _user("file:///etc/hostname")}, 400),
        ("loopback URL", {"messages": _user("http://127.0.0.1:9/x.png")}, 400),
        ("metadata URL", {"messages": _user("http://169.254.169.254/latest/")}, 400),
        ("decompression bomb", {"messages": _user(png_claiming(30000, 30000))}, 400),
        ("not an image", {"messages": _user("data:image/png;base64,AAAA")}, 400),
        ("not base64", {"messages": _user("data:image/png;base64,@@@")}, 400),
    ]


def bad_video_requests(clip: str) -> list[tuple[str, dict, int]]:
    """Clips and video fields the server refuses: (what, body, the status it must get)."""
    truncated = clips.data_url(clips.mp4_bytes(seed=2100)[:4000])
    noise = "data:video/mp4;base64," + base64.b64encode(random.Random(7).randbytes(3000)).decode()
    degenerate = {name: clips.data_url(make()) for name, (_, make) in clips.DEGENERATE.items()}
    return [
        ("single-frame clip", {"messages": _video(degenerate["one frame"])}, 400),
        ("clip with zero fps", {"messages": _video(degenerate["zero fps"])}, 400),
        ("random bytes as a clip", {"messages": _video(noise)}, 400),
        ("truncated clip", {"messages": _video(truncated)}, 400),
        ("loopback video URL", {"messages": _video("http://127.0.0.1:9/x.mp4")}, 400),
        (
            "keep below the frame floor",
            {"messages": _video(clip), "prune": "pooling", "prune_keep": 1},
            400,
        ),
        (
            "budget below the frame floor",
            {"messages": _video(clip, noise_image_data_url(1)), "prune": "evs", "prune_budget": 2},
            400,
        ),
    ]


def _pool(mix: str = "images") -> list[str]:
    if mix == "videos":
        return [noise_image_data_url(1000 + i, VIDEO_IMAGE_SIZE) for i in range(POOL)]
    return [noise_image_data_url(1000 + i) for i in range(POOL)]


def _clips() -> list[str]:
    return [clips.data_url(clips.mp4_bytes(seed=2000 + i)) for i in range(VIDEO_POOL)]


def warmup_requests(model: str, mix: str = "images") -> list[Request]:
    """Each image (and clip) with each setting once (vLLM caches an item per setting: the
    prune fields are part of its hash), and one request of every kind of the mix."""
    if mix == "videos":
        settings = [{"prune": "none"}] + [
            {"prune": m, "prune_ratio": r} for m in VIDEO_METHODS for r in RATIOS
        ]
        messages = [_video(clip) for clip in _clips()] + [_user(i) for i in _pool(mix)]
    else:
        settings = [{"prune": "none"}] + [
            {"prune": m, "prune_ratio": r} for m in FAST_METHODS for r in RATIOS
        ]
        messages = [_user(image) for image in _pool()]
    combos = [
        Request(
            "warm-up",
            "/v1/chat/completions",
            {"model": model, "max_tokens": 2, "messages": message, **setting},
            frozenset({200}),
        )
        for message in messages
        for setting in settings
    ]
    every_kind = {r.kind: r for r in build_requests(model, 400, seed=-1, mix=mix)}
    return combos + list(every_kind.values())


def build_requests(model: str, count: int, seed: int, mix: str = "images") -> list[Request]:
    """``count`` requests of the mix, in a random (seeded) order."""
    if mix == "videos":
        return _video_requests(model, count, seed)
    rng = random.Random(seed)
    pool = _pool()
    bad = bad_requests(pool[0])

    def chat(body: dict, kind: str, expect: int = 200, **flags: bool) -> Request:
        full = {"model": model, "max_tokens": 2, "temperature": 0.0, **body}
        if flags.get("stream"):
            full["stream"] = True
        return Request(kind, "/v1/chat/completions", full, frozenset({expect}), **flags)

    def pruned() -> dict:
        return {"prune": rng.choice(FAST_METHODS), "prune_ratio": rng.choice(RATIOS)}

    makers: list[tuple[float, Callable[[], Request]]] = [
        (0.30, lambda: chat({"messages": _user(rng.choice(pool)), **pruned()}, "pruned")),
        (0.15, lambda: chat({"messages": _user(rng.choice(pool)), "prune": "none"}, "unpruned")),
        (0.10, lambda: chat({"messages": [{"role": "user", "content": "hello"}]}, "text")),
        (
            0.12,
            lambda: chat({"messages": _user(rng.choice(pool)), **pruned()}, "stream", stream=True),
        ),
        (
            0.08,
            lambda: chat(
                {"messages": _user(rng.choice(pool)), "max_tokens": 16, **pruned()},
                "dropped stream",
                stream=True,
                drop=True,
            ),
        ),
        (0.05, lambda: _responses(model, rng.choice(pool), pruned())),
        (0.20, lambda: _bad(model, rng.choice(bad))),
    ]
    weights = [w for w, _ in makers]
    return [rng.choices(makers, weights)[0][1]() for _ in range(count)]


def _video_requests(model: str, count: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    pool, videos = _pool("videos"), _clips()
    bad = bad_video_requests(videos[0])

    def chat(body: dict, kind: str, **flags: bool) -> Request:
        full = {"model": model, "max_tokens": 2, "temperature": 0.0, **body}
        if flags.get("stream"):
            full["stream"] = True
        return Request(kind, "/v1/chat/completions", full, frozenset({200}), **flags)

    def pruned() -> dict:
        return {"prune": rng.choice(VIDEO_METHODS), "prune_ratio": rng.choice(RATIOS)}

    def video() -> list[dict]:
        return _video(rng.choice(videos))

    makers: list[tuple[float, Callable[[], Request]]] = [
        (0.25, lambda: chat({"messages": video(), **pruned()}, "video pruned")),
        (0.10, lambda: chat({"messages": video(), "prune": "none"}, "video unpruned")),
        (
            0.12,
            lambda: chat(
                {"messages": _user(rng.choice(pool)), "prune": "pooling", "prune_ratio": 0.75},
                "image pruned",
            ),
        ),
        (
            0.10,
            lambda: chat(
                {
                    "messages": _video(rng.choice(videos), rng.choice(pool)),
                    "prune": rng.choice(VIDEO_METHODS),
                    "prune_budget": rng.choice((64, 128)),
                },
                "video and image, one budget",
            ),
        ),
        (0.07, lambda: chat({"messages": video(), **pruned()}, "video stream", stream=True)),
        (
            0.06,
            lambda: chat(
                {"messages": video(), "max_tokens": 16, **pruned()},
                "video dropped stream",
                stream=True,
                drop=True,
            ),
        ),
        (0.05, lambda: chat({"messages": [{"role": "user", "content": "hello"}]}, "text")),
        (0.25, lambda: _bad(model, rng.choice(bad))),
    ]
    weights = [w for w, _ in makers]
    return [rng.choices(makers, weights)[0][1]() for _ in range(count)]


def _responses(model: str, image: str, extra: dict) -> Request:
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_image", "image_url": image},
                {"type": "input_text", "text": "what is in the image ?"},
            ],
        }
    ]
    body = {"model": model, "input": items, "max_output_tokens": 2, **extra}
    return Request("responses", "/v1/responses", body, frozenset({200}))


def _bad(model: str, case: tuple[str, dict, int]) -> Request:
    what, body, status = case
    full = {"model": model, "max_tokens": 2, **body}
    return Request(f"bad: {what}", "/v1/chat/completions", full, frozenset({status}))


def server_processes(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def memory(processes: list[psutil.Process]) -> dict[str, int]:
    """Resident bytes of each live process, by ``pid name``."""
    found = {}
    for process in processes:
        try:
            found[f"{process.pid} {process.name()}"] = process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return found


@dataclass
class Report:
    requests: int
    seconds: float
    statuses: dict[str, dict[str, int]]  # kind -> status -> count
    server_errors: int
    unexpected: list[str]
    memory_before: dict[str, int]
    memory_after: dict[str, int]
    growth: dict[str, float]
    left_running: float
    left_waiting: float
    max_growth: float
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


async def _send(client: httpx.AsyncClient, request: Request) -> int:
    if not request.stream:
        response = await client.post(request.path, json=request.body)
        return response.status_code
    async with client.stream("POST", request.path, json=request.body) as response:
        async for _ in response.aiter_raw():
            if request.drop:
                break  # leaving the block unread closes the connection: a client gone
        return response.status_code


async def _run(
    url: str, requests: list[Request], concurrency: int, deadline: float, on_done: Callable
) -> list[tuple[Request, int | str]]:
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    results: list[tuple[Request, int | str]] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty() and time.monotonic() < deadline:
                request = queue.get_nowait()
                try:
                    outcome: int | str = await _send(client, request)
                except httpx.HTTPError as err:
                    outcome = f"{type(err).__name__}"
                results.append((request, outcome))
                on_done()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def _leftovers(url: str, settle_s: float = 20.0) -> tuple[float, float]:
    """vLLM's running and waiting requests, once they have had ``settle_s`` to finish."""
    stop = time.monotonic() + settle_s
    while True:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        running = metric(text, "vllm:num_requests_running")
        waiting = metric(text, "vllm:num_requests_waiting")
        if running == waiting == 0 or time.monotonic() > stop:
            return running, waiting
        time.sleep(0.5)


def soak(
    url: str,
    pid: int,
    model: str,
    requests: int = DEFAULT_REQUESTS,
    concurrency: int = 8,
    warmup: int = DEFAULT_WARMUP,
    max_seconds: float = 3600,
    max_growth: float = DEFAULT_MAX_GROWTH,
    seed: int = 0,
    progress: bool = False,
    mix: str = "images",
) -> Report:
    """Warm-up (``warmup_requests``, then ``warmup`` of the mix), memory, the soak, memory."""
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the soak runs against a loopback server only, not {url}")
    processes = server_processes(pid)
    started = time.monotonic()
    deadline = started + max_seconds
    warm = warmup_requests(model, mix) + build_requests(model, warmup, seed + 1, mix)
    asyncio.run(_run(url, warm, concurrency, deadline, _noop))
    before = memory(processes)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=requests, unit="req", file=sys.stderr)
    soak_started = time.monotonic()
    plan = build_requests(model, requests, seed, mix)
    results = asyncio.run(
        _run(url, plan, concurrency, deadline, bar.update if bar else _noop)  # type: ignore[arg-type]
    )
    seconds = time.monotonic() - soak_started
    if bar:
        bar.close()
    running, waiting = _leftovers(url)
    after = memory(processes)

    statuses: dict[str, Counter] = {}
    unexpected = []
    for request, outcome in results:
        statuses.setdefault(request.kind, Counter())[str(outcome)] += 1
        if outcome not in request.expect:
            unexpected.append(f"{request.kind}: got {outcome}, expected {sorted(request.expect)}")
    server_errors = sum(1 for _, o in results if isinstance(o, int) and o >= 500)
    growth = {k: after[k] / before[k] - 1 for k in before if k in after}
    failures = []
    if len(results) < requests:
        failures.append(f"only {len(results)} of {requests} requests within {max_seconds:g} s")
    if server_errors:
        failures.append(f"{server_errors} answers were 5xx")
    if unexpected:
        failures.append(f"{len(unexpected)} unexpected statuses, e.g. {unexpected[0]}")
    failures += [f"{k} grew by {g:.1%}" for k, g in growth.items() if g >= max_growth]
    failures += [f"{k} is gone" for k in before if k not in after]
    if running or waiting:
        failures.append(f"left in vLLM: {running:g} running, {waiting:g} waiting")
    return Report(
        requests=len(results),
        seconds=seconds,
        statuses={k: dict(v) for k, v in sorted(statuses.items())},
        server_errors=server_errors,
        unexpected=unexpected[:20],
        memory_before=before,
        memory_after=after,
        growth=growth,
        left_running=running,
        left_waiting=waiting,
        max_growth=max_growth,
        failures=failures,
    )


def _noop() -> None:
    pass


def markdown(report: Report) -> str:
    mib = 1024 * 1024
    lines = [
        f"{report.requests} requests in {report.seconds:.0f} s "
        f"({report.requests / max(report.seconds, 1e-9):.1f}/s); 5xx: {report.server_errors}; "
        f"left running {report.left_running:g}, waiting {report.left_waiting:g}",
        "",
        "| kind | statuses |",
        "|---|---|",
        *(
            f"| {kind} | {', '.join(f'{s}: {n}' for s, n in sorted(counts.items()))} |"
            for kind, counts in report.statuses.items()
        ),
        "",
        "| process | RSS after warm-up (MiB) | RSS at the end (MiB) | growth |",
        "|---|---|---|---|",
        *(
            f"| {name} | {report.memory_before[name] / mib:.0f} | "
            f"{report.memory_after.get(name, 0) / mib:.0f} | {report.growth.get(name, 0):+.1%} |"
            for name in report.memory_before
        ),
        "",
        "OK" if report.ok else "FAILED: " + "; ".join(report.failures),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--max-seconds", type=float, default=3600)
    parser.add_argument("--max-growth", type=float, default=DEFAULT_MAX_GROWTH)
    parser.add_argument("--url", help="a running loopback server (with --pid); default: start one")
    parser.add_argument("--pid", type=int, help="the server's main process (with --url)")
    parser.add_argument("--model", help="served model name (default: the server's first)")
    parser.add_argument("--serve-model", help="model path for the server it starts (default: demo)")
    parser.add_argument(
        "--mix", choices=MIXES, default="images", help="images (default), or videos (a video model)"
    )
    parser.add_argument(
        "--tiny",
        choices=sorted(TINY),
        help="the server it starts serves this tiny fixture (built under --out)",
    )
    parser.add_argument(
        "--serve-args",
        type=str.split,
        default=[],
        help='more vllm serve options, e.g. --serve-args="--dtype float32 --enforce-eager"',
    )
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/soak"))
    args = parser.parse_args(argv)
    if (args.url is None) != (args.pid is None):
        parser.error("--url and --pid go together")

    def run(url: str, pid: int) -> Report:
        model = args.model or httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        return soak(
            url, pid, model, args.requests, args.concurrency, args.warmup,
            args.max_seconds, args.max_growth, progress=True, mix=args.mix,
        )  # fmt: skip

    if args.url:
        report = run(args.url, args.pid)
    else:
        from loadtests.local_server import local_server

        model = args.serve_model
        if args.tiny is not None:
            model = str(build_tiny(args.tiny, args.out / "model"))
        with local_server(args.out / "server.log", model, args.serve_args) as server:
            report = run(server.url, server.pid)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(asdict(report), indent=2))
    (args.out / "report.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
