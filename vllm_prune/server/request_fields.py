"""Turn a client's JSON request into what vLLM's OpenAI server should see.

The OpenAI client sends the prune fields at the top level (``extra_body``);
vLLM's multimodal processor reads them from ``mm_processor_kwargs``. The server
runs vLLM with ``--trust-request-mm-kwargs`` so those kwargs reach the
processor, which is exactly why it must refuse every other processor argument
a client might send. Pure functions on dicts, no vLLM imports.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from vllm_prune import auto
from vllm_prune.methods import get_method, method_names
from vllm_prune.spec import (
    BUDGET_FIELD,
    DEFAULT_RATIO,
    KEEP_FIELD,
    MAX_TEXT_CHARS,
    METHOD_FIELD,
    RATIO_FIELD,
    TEXT_FIELD,
    PruneSpec,
    PruneSpecError,
    client_field_names,
    method_param_names,
    needs_text,
    prune_field_names,
)

MM_KWARGS = "mm_processor_kwargs"
MEDIA_IO_KWARGS = "media_io_kwargs"
CHAT_PATH = "/v1/chat/completions"
CHAT_BATCH_PATH = "/v1/chat/completions/batch"
RESPONSES_PATH = "/v1/responses"
# Where the body's conversation is, for every endpoint that takes images and whose
# top-level prune fields are moved into mm_processor_kwargs: one contract for all of
# them (the same fields, refusals, defaults and metrics). /invocations is SageMaker's
# name for chat completions; the render routes (``--enable-scale-out``) run the same
# processor and hand its output to another server.
PRUNE_PATHS = {
    CHAT_PATH: "messages",
    "/invocations": "messages",
    CHAT_BATCH_PATH: "messages",  # a list of conversations
    f"{CHAT_PATH}/render": "messages",
    RESPONSES_PATH: "input",
    f"{RESPONSES_PATH}/render": "input",
}
# The Anthropic Messages API takes images but has no mm_processor_kwargs to carry the
# prune fields: its images are served unpruned, and prune fields there are refused.
UNPRUNED_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens", "/v1/messages/render"})
TEXT_PART_TYPES = frozenset({"text", "input_text"})
IMAGE_PART_TYPES = frozenset({"image_url", "image_pil", "image_embeds", "input_image"})
VIDEO_PART_TYPES = frozenset({"video_url", "video_embeds"})
MEDIA_URL_FIELDS = {"image_url": "image_url", "input_image": "image_url", "video_url": "video_url"}


@dataclass(frozen=True)
class ServerDefaults:
    """``--prune-default`` / ``--prune-ratio``: applied when a request names no method.

    ``local_files``: the operator allows ``file://`` images (``--allowed-local-media-path``).
    ``off``: why this server does not prune (the version gate), None where it does.
    ``policy``, ``load``: what ``prune: auto`` follows (``--prune-auto-*``, the engine's load);
    ``support``: per method, why the served model refuses it (None: it runs; unknown: None).
    ``videos``: whether the served model's videos are pruned (the generic adapter's are not).
    """

    method: str | None = None
    ratio: float = DEFAULT_RATIO
    local_files: bool = False
    off: str | None = None
    policy: auto.Policy = field(default_factory=auto.Policy)
    load: auto.Load = field(default=auto.LOAD, compare=False)
    support: Mapping[str, str | None] | None = None
    videos: bool = True


@dataclass(frozen=True)
class Rewritten:
    payload: dict[str, Any]
    method: str | None  # the prune method in force; None when there are no images
    choice: auto.Choice | None = None  # what ``prune: auto`` chose, and the load behind it


def _conversations(payload: dict[str, Any], path: str) -> list[tuple[str, list[Any]]]:
    """(where, messages) of each conversation in the body: one, or a batch's several."""
    key = PRUNE_PATHS.get(path, "messages")
    messages = payload.get(key)
    if not isinstance(messages, list):
        return []  # absent, or the Responses API's plain string
    if path == CHAT_BATCH_PATH:
        return [(f"{key}[{c}]", m) for c, m in enumerate(messages) if isinstance(m, list)]
    return [(key, messages)]


def _content_parts(payload: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``messages[0].content[1]``-style place, part) of every object part of a list content."""
    for top, messages in _conversations(payload, path):
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            for j, part in enumerate(content if isinstance(content, list) else []):
                if isinstance(part, dict):
                    yield f"{top}[{i}].content[{j}]", part


def has_media(payload: dict[str, Any], path: str = CHAT_PATH) -> bool:
    """Whether the request holds an image or a video (what prune fields apply to)."""
    media = IMAGE_PART_TYPES | VIDEO_PART_TYPES
    return any(part.get("type") in media for _, part in _content_parts(payload, path))


def last_user_text(payload: dict[str, Any], path: str = CHAT_PATH) -> str:
    """The text of the last user message: the question text-guided methods score against."""
    conversations = _conversations(payload, path)
    for message in reversed(conversations[-1][1] if conversations else []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(
                part["text"]
                for part in content
                if isinstance(part, dict)
                and part.get("type") in TEXT_PART_TYPES
                and isinstance(part.get("text"), str)
            )
        return ""
    return ""


def _image_urls(payload: dict[str, Any], path: str) -> list[tuple[str, str]]:
    """Each image or video part's URL with where it is, ``messages[0].content[1].image_url``."""
    found = []
    for where, part in _content_parts(payload, path):
        field = MEDIA_URL_FIELDS.get(part.get("type"))  # type: ignore[arg-type]
        if field is None:
            continue
        url = part.get(field)
        url = url.get("url") if isinstance(url, dict) else url
        if isinstance(url, str):
            found.append((f"{where}.{field}", url))
    return found


def check_image_urls(payload: dict[str, Any], path: str, local_files: bool) -> None:
    """Only data and http(s) images, and local files where the operator allowed them.

    vLLM answers a ``file://`` URL on a server without ``--allowed-local-media-path``
    with a 500 (a RuntimeError): a client mistake, so it is refused here.
    """
    for where, url in _image_urls(payload, path):
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme in ("data", "http", "https") or (scheme == "file" and local_files):
            continue
        if scheme == "file":
            message = (
                f"'{where}': this server does not read local files (the operator allows "
                "them with --allowed-local-media-path); send the image as a data URL or an "
                "http(s) URL"
            )
        else:
            message = f"'{where}' must be a data URL or an http(s) URL; got {url[:40]!r}"
        raise PruneSpecError(where, message)


def check_unknown_fields(payload: dict[str, Any]) -> None:
    """A top-level field named like a prune field but not one is a typo, not a no-op."""
    unknown = sorted(
        k
        for k in payload
        if isinstance(k, str) and k.startswith(METHOD_FIELD) and k not in prune_field_names()
    )
    if unknown:
        raise PruneSpecError(
            unknown[0],
            f"'{unknown[0]}' is not a prune field; the prune fields are "
            f"{', '.join(client_field_names())}",
        )


def check_untrusted_kwargs(payload: dict[str, Any]) -> None:
    """Refuse processor and media arguments that are not prune fields."""
    allowed = sorted(prune_field_names())
    mm_kwargs = payload.get(MM_KWARGS)
    if mm_kwargs is not None:
        if not isinstance(mm_kwargs, dict):
            raise PruneSpecError(MM_KWARGS, f"'{MM_KWARGS}' must be an object")
        unknown = sorted(set(mm_kwargs) - set(allowed))
        if unknown:
            raise PruneSpecError(
                MM_KWARGS,
                f"'{MM_KWARGS}' may only hold prune fields ({', '.join(allowed)}); "
                f"got {', '.join(repr(k) for k in unknown)}",
            )
    if payload.get(MEDIA_IO_KWARGS):
        raise PruneSpecError(MEDIA_IO_KWARGS, f"'{MEDIA_IO_KWARGS}' is not accepted by this server")


def check_message_lists(payload: dict[str, Any], path: str) -> None:
    """The conversation is a list of message objects (a batch: a list of such lists).

    vLLM answers some of these with a 400 that names no field ("'int' object is not
    iterable"); the shape is checked here, the rest stays vLLM's to validate.
    """
    key = PRUNE_PATHS[path]
    if key != "messages" or key not in payload:
        return
    messages = payload[key]
    if path == CHAT_BATCH_PATH:
        if not (isinstance(messages, list) and all(isinstance(m, list) for m in messages)):
            raise PruneSpecError(key, f"'{key}' must be a list of conversations (lists)")
        conversations = messages
    else:
        conversations = [messages]
    for conversation in conversations:
        if not (isinstance(conversation, list) and all(isinstance(m, dict) for m in conversation)):
            raise PruneSpecError(key, f"'{key}' must be a list of message objects")


def _refuse_on_unpruned_path(payload: dict[str, Any], path: str) -> None:
    sent = [k for k in sorted(prune_field_names()) if k in payload]
    sent += [k for k in sorted(prune_field_names()) if k in (payload.get(MM_KWARGS) or {})]
    if sent:
        raise PruneSpecError(
            sent[0],
            f"'{sent[0]}' is not taken on {path}: the Anthropic Messages API cannot carry "
            f"prune fields, and its images are served unpruned; use {CHAT_PATH} or "
            f"{RESPONSES_PATH}",
        )


def _unpruned(payload: dict[str, Any], path: str, spec: PruneSpec | None, off: str) -> Rewritten:
    """A server that cannot prune: a request that asks for a method on its images is a 400
    saying why; the rest goes to vLLM without prune fields (and no server default)."""
    if not has_media(payload, path):
        return Rewritten(payload, None)
    if spec is not None and spec.method != "none":
        raise PruneSpecError(
            METHOD_FIELD,
            f"'{METHOD_FIELD}': this server does not prune ({off}); send '{METHOD_FIELD}': "
            "'none' or no prune fields",
        )
    return Rewritten(payload, "none")


def _media_counts(payload: dict[str, Any], path: str) -> tuple[int, int]:
    """The request's images and videos (parts of those types)."""
    kinds = [part.get("type") for _, part in _content_parts(payload, path)]
    return (
        sum(k in IMAGE_PART_TYPES for k in kinds),
        sum(k in VIDEO_PART_TYPES for k in kinds),
    )


def _wants_auto(fields: dict[str, Any], defaults: ServerDefaults) -> bool:
    """``prune: auto``, or no prune field at all on a ``--prune-default auto`` server."""
    if fields.get(METHOD_FIELD) == auto.AUTO:
        return True
    return defaults.method == auto.AUTO and not any(v is not None for v in fields.values())


def _auto_bounds(fields: dict[str, Any], default_ratio: float) -> dict[str, Any]:
    """Validate what a client sent with ``prune: auto``: the bounds and method parameters
    get the same 400s as with any method; returns them, parsed."""
    sent = {k: v for k, v in fields.items() if k != METHOD_FIELD and v is not None}
    if KEEP_FIELD in sent:
        raise PruneSpecError(
            KEEP_FIELD,
            f"'{KEEP_FIELD}' does not go with '{METHOD_FIELD}': '{auto.AUTO}', which picks how "
            f"many tokens to keep from the server's load; bound it with '{RATIO_FIELD}' (the "
            f"most of each image it may remove) or '{BUDGET_FIELD}' (the tokens it keeps when "
            "the load asks for pruning)",
        )
    bounds = {k: sent[k] for k in (RATIO_FIELD, BUDGET_FIELD) if k in sent}
    PruneSpec.from_fields({METHOD_FIELD: "random", **bounds}, default_ratio)
    for name in sorted(method_param_names() & set(sent)):
        owner = next(m for m in method_names() if name in {p.name for p in get_method(m).params})
        PruneSpec.from_fields({METHOD_FIELD: owner, name: sent[name]}, default_ratio)
    return sent


def _auto_spec(
    sent: dict[str, Any], payload: dict[str, Any], path: str, defaults: ServerDefaults
) -> tuple[PruneSpec, auto.Choice]:
    """The method and ratio ``prune: auto`` picks for this request at this load."""
    policy = defaults.policy
    level, reading = defaults.load.level(policy)
    ratio = policy.ratio(level)
    if RATIO_FIELD in sent:
        ratio = min(ratio, float(sent[RATIO_FIELD]))
    images, videos = _media_counts(payload, path)
    question = path != CHAT_BATCH_PATH and bool(last_user_text(payload, path).strip())
    support = defaults.support
    method = "none"
    if ratio > 0 and (defaults.videos or not videos):  # a video this model cannot prune: none
        method = auto.choose_method(
            images,
            videos,
            question,
            lambda m: support is None or support.get(m) is None,
            policy.image_method,
        )
    if method == "none":
        return PruneSpec(method="none"), auto.Choice("none", 0.0, reading)
    declared = {p.name for p in get_method(method).params}
    fields = {METHOD_FIELD: method, **{k: v for k, v in sent.items() if k in declared}}
    if BUDGET_FIELD in sent:
        fields[BUDGET_FIELD] = sent[BUDGET_FIELD]
    else:
        fields[RATIO_FIELD] = ratio
    spec = PruneSpec.from_fields(fields, defaults.ratio)
    assert spec is not None
    return spec, auto.Choice(method, ratio, reading)


def rewrite(payload: dict[str, Any], path: str, defaults: ServerDefaults) -> Rewritten:
    """Validate the prune fields and place the spec where vLLM's processor reads it."""
    check_unknown_fields(payload)
    check_untrusted_kwargs(payload)
    if TEXT_FIELD in payload or TEXT_FIELD in (payload.get(MM_KWARGS) or {}):
        raise PruneSpecError(
            TEXT_FIELD,
            f"'{TEXT_FIELD}' is set by the server from the last user message; do not send it",
        )
    if path in UNPRUNED_PATHS:
        _refuse_on_unpruned_path(payload, path)
        return Rewritten(payload, None)
    if path not in PRUNE_PATHS:
        # Prune fields sent in mm_processor_kwargs elsewhere are validated here
        # and again by the processor; top-level ones are not ours to move.
        PruneSpec.from_fields(payload.get(MM_KWARGS) or {}, defaults.ratio)
        return Rewritten(payload, None)

    check_message_lists(payload, path)
    check_image_urls(payload, path, defaults.local_files)
    payload = dict(payload)
    in_mm_kwargs = dict(payload.pop(MM_KWARGS, None) or {})
    top_level = {k: payload.pop(k) for k in sorted(prune_field_names()) if k in payload}
    both = sorted(set(in_mm_kwargs) & set(top_level))
    if both:
        raise PruneSpecError(
            both[0],
            f"'{both[0]}' was sent both at the top level and in '{MM_KWARGS}'; send it once",
        )
    fields = {**in_mm_kwargs, **top_level}
    wants_auto = _wants_auto(fields, defaults)
    spec = None
    if wants_auto:
        sent = _auto_bounds(fields, defaults.ratio)
    else:
        spec = PruneSpec.from_fields(fields, defaults.ratio)
    if defaults.off is not None:
        return _unpruned(payload, path, spec, defaults.off)  # auto: a server that cannot prune
    if spec is None and defaults.method is not None and not wants_auto:
        spec = PruneSpec.from_fields({"prune": defaults.method}, defaults.ratio)

    if not has_media(payload, path):
        return Rewritten(payload, None)  # prune fields are a no-op without images or videos
    choice = None
    if wants_auto:
        spec, choice = _auto_spec(sent, payload, path, defaults)
    spec = spec or PruneSpec(method="none")
    if needs_text(spec.method):
        if path == CHAT_BATCH_PATH:
            raise PruneSpecError(
                METHOD_FIELD,
                f"'{spec.method}' scores images against the question, and a batch's "
                f"conversations share one prune setting; send each on {CHAT_PATH}",
            )
        spec = replace(spec, text=last_user_text(payload, path)[-MAX_TEXT_CHARS:])
    payload[MM_KWARGS] = spec.to_fields()
    return Rewritten(payload, spec.method, choice)
