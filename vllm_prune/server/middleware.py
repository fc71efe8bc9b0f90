"""ASGI middleware that adds pruning to vLLM's own OpenAI app.

vLLM installs it through its ``--middleware`` option, so chat completions,
streaming and chat templates stay vLLM's. It:
- answers ``GET /v1/prune/methods`` (the methods, the served model's support, the
  version gate's state);
- rewrites JSON request bodies (``request_fields.rewrite``) and answers a bad
  prune field with an OpenAI-style 400 naming the field;
- times requests with images for the per-method latency metrics;
- for ``prune: auto``, reports what the server's load chose: response headers, one log
  line, the ``vllm_prune_auto_*`` metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vllm_prune import auto
from vllm_prune.integration.compat import gate
from vllm_prune.integration.support import method_support, prunes_videos, unpruned_reason
from vllm_prune.observability import metrics
from vllm_prune.spec import DEFAULT_RATIO, PruneSpecError

from .methods_endpoint import METHODS_PATH, methods_document
from .request_fields import PRUNE_PATHS, ServerDefaults, rewrite

logger = logging.getLogger("vllm.prune")  # under vLLM's handler, so it is printed
# What prune: auto chose for a request, on its response.
METHOD_HEADER = b"x-prune-method"
RATIO_HEADER = b"x-prune-ratio"
LOAD_HEADER = b"x-prune-load"


def _support(scope: Scope) -> dict[str, str | None] | None:
    """Per method, why the served model refuses it (None: it runs); None if unknown.

    The same for every request of a server, so it is worked out once and kept on the app.
    """
    state = getattr(scope.get("app"), "state", None)
    known = getattr(state, "prune_support", None)
    if known is not None:
        return known
    config = getattr(state, "vllm_config", None)
    model_config = getattr(config, "model_config", None)
    if model_config is None:
        return None
    support = method_support(model_config)
    state.prune_support = support  # type: ignore[union-attr]
    return support


def _prunes_videos(scope: Scope) -> bool:
    """Whether the served model's videos are pruned (a family file's are; the generic
    adapter's are not)."""
    config = getattr(getattr(scope.get("app"), "state", None), "vllm_config", None)
    hf_config = getattr(getattr(config, "model_config", None), "hf_config", None)
    return prunes_videos(hf_config) if hf_config is not None else True


def _args(scope: Scope) -> Any:
    """The server's parsed options (vLLM keeps them on ``app.state.args``), or None."""
    return getattr(getattr(scope.get("app"), "state", None), "args", None)


def _defaults(scope: Scope) -> ServerDefaults:
    args = _args(scope)
    ratio = getattr(args, "prune_ratio", None)
    support = _support(scope)
    return ServerDefaults(
        method=getattr(args, "prune_default", None),
        ratio=DEFAULT_RATIO if ratio is None else ratio,
        local_files=bool(getattr(args, "allowed_local_media_path", "")),
        off=gate().off_reason() or (unpruned_reason(support) if support else None),
        policy=auto.Policy.from_args(args),
        support=support,
        videos=_prunes_videos(scope),
    )


# vLLM's --api-key guards these paths (its AuthenticationMiddleware), but it runs inside
# this middleware: a request without the key must reach it before we answer anything.
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


def _unauthorized(scope: Scope) -> bool:
    """A guarded path without one of the server's API keys (none set: never)."""
    keys = getattr(_args(scope), "api_key", None) or [os.environ.get("VLLM_API_KEY")]
    tokens = [t for t in keys if t]
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    if not tokens or not path.startswith(GUARDED_PREFIXES):
        return False
    headers = dict(scope.get("headers") or [])
    scheme, _, sent = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return True
    sent_hash = hashlib.sha256(sent.encode()).digest()
    return not any(
        secrets.compare_digest(sent_hash, hashlib.sha256(t.encode()).digest()) for t in tokens
    )


async def _send_json(send: Send, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error(err: PruneSpecError) -> dict[str, Any]:
    return {
        "error": {
            "message": str(err),
            "type": "BadRequestError",
            "param": err.field,
            "code": 400,
        }
    }


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class PruneMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _unauthorized(scope):
            await self.app(scope, receive, send)  # vLLM answers: 401 without the key
            return
        if scope["path"] == METHODS_PATH and scope["method"] == "GET":
            defaults = _defaults(scope)
            document = methods_document(defaults, _support(scope), gate().report())
            await _send_json(send, 200, document)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        body = await _read_body(receive)
        method = None
        # Every POST body that parses as a JSON object is checked, whatever its
        # content-type says: FastAPI parses a body without one as JSON too.
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None  # not JSON (forms, malformed): vLLM answers it itself
        if isinstance(payload, dict):
            try:
                rewritten = rewrite(payload, scope["path"], _defaults(scope))
            except PruneSpecError as err:
                await _send_json(send, 400, _error(err))
                return
            body = json.dumps(rewritten.payload).encode()
            method = rewritten.method
            if rewritten.choice is not None:
                send = _reporting(send, rewritten.choice)

        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-length"] + [
            (b"content-length", str(len(body)).encode())
        ]

        sent_body = False

        async def replay() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        # Requests on the generating endpoints count in flight until answered: prune: auto
        # projects the KV cache of those the engine does not run yet.
        load = auto.LOAD if scope["path"] in PRUNE_PATHS else None
        if load is not None:
            load.enter()
        try:
            if method is None:
                await self.app(scope, replay, send)
                return

            timing = _Timing(started)

            async def timed_send(message: Message) -> None:
                timing.see(message)
                await send(message)

            await self.app(scope, replay, timed_send)
            timing.observe(method)
        finally:
            if load is not None:
                load.leave()


def _reporting(send: Send, choice: auto.Choice) -> Send:
    """Report what ``prune: auto`` chose: the metrics, one log line, and response headers."""
    reading = choice.reading
    metrics.observe_auto(choice.method, choice.ratio, reading.projected, reading.waiting)
    load = (
        f"kv_usage={reading.kv_usage:.3f}; waiting={reading.waiting}; "
        f"pending={reading.pending}; projected={reading.projected:.3f}"
    )
    if reading.age_s is not None:
        load += f"; age_s={reading.age_s:.1f}"
    logger.info("prune auto method=%s ratio=%.4g %s", choice.method, choice.ratio, load)
    headers = [
        (METHOD_HEADER, choice.method.encode()),
        (RATIO_HEADER, f"{choice.ratio:.4g}".encode()),
        (LOAD_HEADER, load.encode()),
    ]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return send_with_headers


class _Timing:
    """First and last body chunk of a response, relative to the request's arrival."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.streaming = False
        self.first_chunk: float | None = None
        self.finished: float | None = None

    def see(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = dict(message.get("headers", []))
            self.streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body":
            now = time.perf_counter()
            if self.first_chunk is None and message.get("body"):
                self.first_chunk = now
            if not message.get("more_body", False):
                self.finished = now

    def observe(self, method: str) -> None:
        if self.status != 200 or self.finished is None:
            return
        ttft = None
        if self.streaming and self.first_chunk is not None:
            ttft = self.first_chunk - self.started
        metrics.observe_latency(method, self.finished - self.started, ttft)
