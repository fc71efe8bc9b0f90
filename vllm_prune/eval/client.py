"""One benchmark question as one chat request to an OpenAI-compatible server.

The request carries the sample's images as base64 data URLs (image parts first, then
the text of ``sample.prompt``), ``temperature=0`` and the setting's prune fields as
top-level JSON fields (``extra_body``). The server's refusal of a request (HTTP 400 or
422: a method the model cannot run, a prompt too long...) comes back as a ``Record``
with the server's message; a server that cannot be reached, or answers with another
error after the client's retries, raises ``EndpointError``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import openai

from vllm_prune.eval.predictions import Record
from vllm_prune.eval.sample import ImageRef, Sample, image_bytes

# Leading bytes of the image formats vLLM's image loader (PIL) reads.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


class EndpointError(RuntimeError):
    """The server could not be reached, or failed in a way that retrying does not fix."""


@dataclass(frozen=True)
class Setting:
    """A pruning setting: a method and a ratio (``none`` has no ratio)."""

    method: str
    ratio: float | None = None

    @property
    def name(self) -> str:
        """File-name form: ``none``, ``pooling-0.75``."""
        return self.method if self.ratio is None else f"{self.method}-{self.ratio:g}"

    @property
    def retained_percent(self) -> float:
        """Visual tokens kept, as % of the image's (``round`` aside: 100 * (1 - ratio))."""
        return 100.0 if self.ratio is None else 100.0 * (1.0 - self.ratio)

    def extra_body(self) -> dict[str, Any]:
        # "none" is sent explicitly: a server with --prune-default would prune otherwise.
        body: dict[str, Any] = {"prune": self.method}
        if self.ratio is not None:
            body["prune_ratio"] = self.ratio
        return body


def mime_type(data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError(f"not a PNG, JPEG, GIF, BMP or WebP image (starts with {data[:8]!r})")


def data_url(image: ImageRef) -> str:
    data = image_bytes(image)
    try:
        mime = mime_type(data)
    except ValueError as error:
        where = "inline image" if isinstance(image, bytes) else str(image)
        raise ValueError(f"{where}: {error}") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def messages(sample: Sample) -> list[dict[str, Any]]:
    """One user message: every image of the sample, then its prompt."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(image)}} for image in sample.images
    ]
    content.append({"type": "text", "text": sample.prompt})
    return [{"role": "user", "content": content}]


def make_client(url: str, api_key: str, retries: int, timeout_s: float) -> openai.OpenAI:
    """The client; ``url`` with or without the ``/v1`` suffix."""
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return openai.OpenAI(base_url=base, api_key=api_key, max_retries=retries, timeout=timeout_s)


def ask(
    client: openai.OpenAI, model: str, sample: Sample, setting: Setting, max_tokens: int
) -> Record:
    """The server's answer to one sample, or its refusal; EndpointError on anything else."""
    try:
        response = client.chat.completions.create(
            model=model,
            messages=messages(sample),  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
            extra_body=setting.extra_body(),
        )
    except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
        return Record(id=sample.id, error_status=error.status_code, error_message=_message(error))
    except openai.APIConnectionError as error:  # includes timeouts
        raise EndpointError(
            f"{client.base_url}: no answer after {client.max_retries} retries "
            f"({type(error).__name__}: {error}); is the server running? Rerun the same "
            "command to resume: answered samples are kept"
        ) from error
    except openai.APIStatusError as error:
        raise EndpointError(
            f"{client.base_url}: HTTP {error.status_code} for sample {sample.id} "
            f"({setting.name}): {_message(error)}"
        ) from error
    choice = response.choices[0]
    usage = response.usage
    return Record(
        id=sample.id,
        answer=choice.message.content or "",
        prompt_tokens=None if usage is None else usage.prompt_tokens,
        completion_tokens=None if usage is None else usage.completion_tokens,
        finish_reason=choice.finish_reason,
    )


def _message(error: openai.APIStatusError) -> str:
    """The server's own message (OpenAI-style body), else the client's."""
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(error)


def served_models(client: openai.OpenAI) -> list[str]:
    """Names the server serves (``GET /v1/models``); EndpointError if it cannot say."""
    try:
        return [model.id for model in client.models.list()]
    except openai.APIConnectionError as error:
        raise EndpointError(
            f"{client.base_url}: cannot connect after {client.max_retries} retries ({error}); "
            "is the server running?"
        ) from error
    except openai.APIStatusError as error:
        raise EndpointError(
            f"{client.base_url}/models: HTTP {error.status_code}: {_message(error)}"
        ) from error


def prune_methods(client: openai.OpenAI) -> list[str] | None:
    """Methods listed at ``GET /v1/prune/methods``; None where the server has no such page
    (plain vLLM, which ignores the prune fields)."""
    try:
        document = client.get("/prune/methods", cast_to=object)
    except openai.NotFoundError:
        return None
    except openai.APIError:
        return None
    if not isinstance(document, dict):
        return None
    return [entry["name"] for entry in document.get("data", []) if isinstance(entry, dict)]
