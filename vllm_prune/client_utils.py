"""Small helpers for clients of a server (tests, benchmarks): images and /metrics."""

from __future__ import annotations

import base64
import io

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
