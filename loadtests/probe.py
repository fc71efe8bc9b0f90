"""Small helpers for clients of a server (tests, benchmarks): images, /metrics, KV."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families


def noise_image_data_url(seed: int, size: tuple[int, int] = (336, 336)) -> str:
    """A deterministic noise image as a PNG data URL (distinct seeds never share a cache)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_messages(
    question: str = "what is in the image ?", seed: int = 0, size: tuple[int, int] = (336, 336)
) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": noise_image_data_url(seed, size)}},
                {"type": "text", "text": question},
            ],
        }
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` in a /metrics page whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metric_labels(text: str, name: str) -> dict[str, str]:
    """Labels of the first sample called ``name`` (e.g. vllm:cache_config_info)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return dict(sample.labels)
    raise KeyError(name)


@dataclass(frozen=True)
class KvReport:
    """One prompt's KV cache, as the server's own vLLM metrics report it."""

    prompt_tokens: int  # usage.prompt_tokens of the first request
    computed_tokens: int  # vllm:request_prefill_kv_computed_tokens of the first request
    cached_tokens: int  # vllm:prefix_cache_hits of an identical second request
    block_size: int

    @property
    def blocks(self) -> int:
        """KV blocks the prompt occupies: its full blocks plus a partial last one."""
        return -(-self.computed_tokens // self.block_size)


def measure_kv(client: Any, url: str, model: str, extra: dict, seed: int) -> KvReport:
    """Send a fresh image prompt twice and read what vLLM reports about its KV.

    The first request computes the whole prompt's KV (a fresh image, so no
    prefix-cache hit); the identical second one finds the first one's full KV
    blocks in vLLM's prefix cache, which counts them in its hit metric.
    """

    def scrape() -> str:
        response = requests.get(f"{url}/metrics", timeout=30)
        response.raise_for_status()
        return response.text

    def ask() -> Any:
        return client.chat.completions.create(
            model=model, messages=image_messages(seed=seed), max_tokens=1, extra_body=extra
        )

    before = scrape()
    first = ask()
    middle = scrape()
    ask()
    after = scrape()
    computed = "vllm:request_prefill_kv_computed_tokens_sum"
    hits = "vllm:prefix_cache_hits_total"
    return KvReport(
        prompt_tokens=first.usage.prompt_tokens,
        computed_tokens=int(metric(middle, computed) - metric(before, computed)),
        cached_tokens=int(metric(after, hits) - metric(middle, hits)),
        block_size=int(metric_labels(after, "vllm:cache_config_info")["block_size"]),
    )


def moving_square_video_data_url(
    seed: int, frames: int = 8, size: tuple[int, int] = (224, 224), fps: float = 4.0
) -> str:
    """A deterministic clip as an MP4 data URL (``clips.mp4_bytes``: a moving square)."""
    from loadtests.clips import data_url, mp4_bytes

    return data_url(mp4_bytes(seed, frames, size, fps))


def video_messages(
    question: str = "what moves in the video ?", seed: int = 0, **clip: Any
) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {
                    "type": "video_url",
                    "video_url": {"url": moving_square_video_data_url(seed, **clip)},
                },
                {"type": "text", "text": question},
            ],
        }
    ]
