"""Prometheus metrics of pruning, served on vLLM's own ``/metrics``.

They live in the API-server process: token counts are recorded by the
multimodal processor (which decides them), latencies by the server middleware
(which sees the HTTP request). Names never start with ``vllm:`` because vLLM
unregisters collectors with that prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
)

REQUESTS = Counter(
    "vllm_prune_requests",
    "Requests with images (modality=image) or videos (modality=video) processed, by prune "
    "method (none = unpruned); a request with both counts once in each.",
    ["method", "modality"],
)
PATCHES = Counter(
    "vllm_prune_visual_patches",
    "Vision-tower patches before any training-aware merging (Qwen2-VL merges 2 x 2; "
    "equal to visual_tokens_before for LLaVA).",
    ["method", "modality"],
)
TOKENS_BEFORE = Counter(
    "vllm_prune_visual_tokens_before",
    "Visual tokens the model would have used without pruning.",
    ["method", "modality"],
)
TOKENS_AFTER = Counter(
    "vllm_prune_visual_tokens_after",
    "Visual tokens kept in the prompt (and in the KV cache) after pruning.",
    ["method", "modality"],
)
KV_BYTES_SAVED = Counter(
    "vllm_prune_kv_cache_bytes_saved",
    "KV-cache bytes not allocated: tokens removed x per-token KV bytes.",
    ["method", "modality"],
)
TOTAL_REDUCTION = Histogram(
    "vllm_prune_total_reduction_ratio",
    "Per request: patches / kept tokens = training-aware merging (TACR) x pruning (N / keep).",
    ["method", "modality"],
    buckets=(1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 36.0, 48.0, 64.0, 128.0),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "vllm_prune_time_to_first_token_seconds",
    "Time from request arrival to the first streamed chunk (streaming requests).",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
E2E_LATENCY = Histogram(
    "vllm_prune_e2e_request_latency_seconds",
    "Time from request arrival to the end of the response.",
    ["method"],
    buckets=LATENCY_BUCKETS,
)


# prune: auto (vllm_prune/auto.py): what it chose per request, and the load behind it.
AUTO_RATIO = Histogram(
    "vllm_prune_auto_ratio",
    "Per request with prune: auto, the ratio the server's load chose (0: not pruned), by the "
    "method it chose.",
    ["method"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
)
AUTO_KV_USAGE = Histogram(
    "vllm_prune_auto_kv_usage",
    "Per request with prune: auto, the KV-cache usage (0 to 1) the choice followed: the "
    "engine's smoothed usage plus the requests still arriving, at a running request's share.",
    ["method"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0),
)
AUTO_WAITING = Histogram(
    "vllm_prune_auto_waiting_requests",
    "Per request with prune: auto, the requests waiting in the engine that it read.",
    ["method"],
    buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128),
)


def _read(config: object, name: str) -> object:
    """A config value, or None where it is absent or not one value: transformers raises
    for an attribute that differs per layer (Gemma 4's ``head_dim``), and the count then
    falls back to the model-wide value (an estimate for such models)."""
    try:
        return getattr(config, name, None)
    except Exception:  # noqa: BLE001  e.g. AmbiguousGlobalPerLayerAttributeError
        return None


def kv_bytes_per_token(hf_text_config: object, dtype: torch.dtype) -> int:
    """2 (K and V) x layers x KV heads x head dim x bytes per element, whole model.

    Hybrid models (Qwen3.5) list their ``layer_types``: linear-attention layers keep a
    fixed-size state, not a KV entry per token, so only the attention layers count.
    """
    layers = int(hf_text_config.num_hidden_layers)  # type: ignore[attr-defined]
    layer_types = _read(hf_text_config, "layer_types")
    if layer_types:
        layers = sum(t != "linear_attention" for t in layer_types)
    heads = int(hf_text_config.num_attention_heads)  # type: ignore[attr-defined]
    kv_heads = int(_read(hf_text_config, "num_key_value_heads") or heads)
    head_dim = _read(hf_text_config, "head_dim") or (
        int(hf_text_config.hidden_size) // heads  # type: ignore[attr-defined]
    )
    element_bytes = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * kv_heads * int(head_dim) * element_bytes


def record_prompt(
    method: str,
    patches: Sequence[int],
    tokens_before: Sequence[int],
    tokens_after: Sequence[int],
    bytes_per_token: int,
    modality: str = "image",
) -> None:
    """Count one request's images (or its videos): patches, tokens before and after, and
    the KV bytes saved."""
    before, after = sum(tokens_before), sum(tokens_after)
    REQUESTS.labels(method, modality).inc()
    PATCHES.labels(method, modality).inc(sum(patches))
    TOTAL_REDUCTION.labels(method, modality).observe(sum(patches) / after)
    TOKENS_BEFORE.labels(method, modality).inc(before)
    TOKENS_AFTER.labels(method, modality).inc(after)
    KV_BYTES_SAVED.labels(method, modality).inc((before - after) * bytes_per_token)


def observe_latency(method: str, e2e_seconds: float, ttft_seconds: float | None) -> None:
    E2E_LATENCY.labels(method).observe(e2e_seconds)
    if ttft_seconds is not None:
        TIME_TO_FIRST_TOKEN.labels(method).observe(ttft_seconds)


def observe_auto(method: str, ratio: float, kv_usage: float, waiting: int) -> None:
    """``kv_usage``: the projected usage the choice followed (``auto.Reading.projected``)."""
    AUTO_RATIO.labels(method).observe(ratio)
    AUTO_KV_USAGE.labels(method).observe(kv_usage)
    AUTO_WAITING.labels(method).observe(waiting)
