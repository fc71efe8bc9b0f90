"""vLLM's media connector with the server's fetch rules: no internal addresses, one deadline.

An image URL is fetched by the server, so a client could point it at the server's own
network (cloud metadata, admin ports). ``vllm-prune serve`` selects this connector
(``VLLM_MEDIA_CONNECTOR=vllm-prune``) in every API-server process. It keeps vLLM's
loading, caching and size limits, and adds:

- **no loopback, private, link-local or other non-global addresses** unless the operator
  allows them (``--allow-private-media-urls``). The address is checked where the socket
  is made, so a DNS answer that changes between check and connect (rebinding) and a
  redirect to an internal host are refused too; the host name is checked before the
  fetch as well, for a clear message (and for fetches through an HTTP proxy, whose own
  address is allowed).
- **one deadline per URL** (``--media-fetch-timeout``): connect, retries, body and
  decoding together; past it the request is answered 504, not after vLLM's retries with
  growing timeouts (5 + 20 + 80 s).
- **client errors, not 500s**: a host that cannot be reached or answers an error is a
  422 naming ``image_url`` (as vLLM answers a 404), a decompression bomb a 400, a video
  that yields no frame or that vLLM's frame sampling cannot divide (a single-frame clip:
  ``ZeroDivisionError`` in vLLM's Qwen2-VL loader) a 400 naming ``video_url``.

Data URLs are never fetched and always work. Only the asynchronous path is the server's;
the synchronous one (offline ``LLM.chat``) gets the name check and vLLM's per-attempt
timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from PIL import Image
from vllm.connections import HTTPConnection
from vllm.exceptions import GracefulHTTPError, VLLMUnprocessableEntityError, VLLMValidationError
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector, VideoMediaIO

CONNECTOR_NAME = "vllm-prune"
ALLOW_PRIVATE_ENV = "VLLM_PRUNE_MEDIA_ALLOW_PRIVATE"  # "1": internal addresses allowed
DEADLINE_ENV = "VLLM_PRUNE_MEDIA_FETCH_TIMEOUT"  # seconds, for the whole fetch of one URL
DEFAULT_DEADLINE_S = 10.0
PIXELS_ENV = "VLLM_MAX_IMAGE_PIXELS"  # vLLM's own limit, checked on the header before decoding
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
PIL_BOUND = 2 * 89_478_485  # PIL refuses more as a decompression bomb before vLLM's check
PARAM = "image_url"
VIDEO_PARAM = "video_url"
# What vLLM's video loaders raise on a clip they cannot sample (client data, not a bug of
# ours): a ValueError is already vLLM's 400, but without naming the part.
VIDEO_ERRORS = (ZeroDivisionError, IndexError, ValueError)
# The part being loaded (image_url or video_url), for the refusals raised below it: set
# for each load, and seen by the socket factory of the same task.
_PART: ContextVar[str] = ContextVar("vllm_prune_media_part", default=PARAM)


def _url_noun() -> str:
    return "video URL" if _PART.get() == VIDEO_PARAM else "image URL"


@contextmanager
def _loading(media_io: Any) -> Iterator[None]:
    token = _PART.set(VIDEO_PARAM if isinstance(media_io, VideoMediaIO) else PARAM)
    try:
        yield
    finally:
        _PART.reset(token)


def internal_address(address: str) -> bool:
    """Not an address of the public internet: loopback, private, link-local (cloud
    metadata), shared, reserved, unspecified or multicast; IPv4 inside IPv6 unwrapped."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _allow_private() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "") == "1"


def deadline_s() -> float:
    return float(os.environ.get(DEADLINE_ENV, DEFAULT_DEADLINE_S))


def _refusal(subject: str, address: str) -> VLLMValidationError:
    return VLLMValidationError(
        f"{subject} is at {address}, an internal address; this server fetches media from "
        "public addresses only (the operator allows others with --allow-private-media-urls); "
        "send it as a data URL",
        parameter=_PART.get(),
    )


def _host_refusal(url: str, host: str, address: str) -> VLLMValidationError:
    return _refusal(f"{_url_noun()} {url[:200]!r}: the host {host}", address)


def _proxy_addresses() -> frozenset[str]:
    """Addresses of the HTTP(S) proxies in the environment: media fetches connect to them."""
    found = set()
    for scheme, proxy in urllib.request.getproxies().items():
        host = urlsplit(proxy).hostname if scheme in ("http", "https") else None
        if host:
            try:
                found |= {info[4][0] for info in socket.getaddrinfo(host, None)}
            except OSError:
                pass
    return frozenset(found)


class GuardedConnection(HTTPConnection):
    """vLLM's HTTP client whose sockets refuse internal addresses at connect time."""

    def __init__(self, allowed: frozenset[str] | None = None) -> None:
        """``allowed``: internal addresses it may connect to (default: the proxies')."""
        super().__init__(reuse_client=True)
        self._allowed = allowed

    def _socket(self, addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = sockaddr[0]
        if not _allow_private() and internal_address(address) and address not in self._allowed:
            raise _refusal(
                f"a connection for this {_url_noun()} (a redirect, or a changed DNS answer)",
                address,
            )
        return socket.socket(family=family, type=type_, proto=proto)

    async def get_async_client(self) -> aiohttp.ClientSession:
        if self._async_client is None:
            if self._allowed is None:
                self._allowed = _proxy_addresses()
            self._async_client = aiohttp.ClientSession(
                trust_env=True, connector=aiohttp.TCPConnector(socket_factory=self._socket)
            )
        return self._async_client


_connection = GuardedConnection()


def _unresolved(url: str, host: str, err: OSError) -> VLLMUnprocessableEntityError:
    return VLLMUnprocessableEntityError(
        f"{_url_noun()} {url[:200]!r}: the host {host} cannot be resolved ({err})",
        parameter=_PART.get(),
    )


def _host_to_check(url: str) -> str | None:
    """The URL's host, where internal addresses are refused (None: nothing to check)."""
    return None if _allow_private() else urlsplit(url).hostname


def _refuse_internal(url: str, host: str, infos: list[Any]) -> None:
    for info in infos:
        if internal_address(info[4][0]):
            raise _host_refusal(url, host, info[4][0])


async def _check_host_async(url: str) -> None:
    host = _host_to_check(url)
    if host is None:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as err:
        raise _unresolved(url, host, err) from err
    _refuse_internal(url, host, infos)


def _check_host(url: str) -> None:
    host = _host_to_check(url)
    if host is None:
        return
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as err:
        raise _unresolved(url, host, err) from err
    _refuse_internal(url, host, infos)


def _is_http(url: str) -> bool:
    return url[:7].lower() == "http://" or url[:8].lower() == "https://"


def _bomb(err: Exception) -> VLLMValidationError:
    limit = os.environ.get(PIXELS_ENV, "")
    return VLLMValidationError(
        f"the image has more pixels than this server's limit of {limit} "
        f"(--max-image-pixels): {err}",
        parameter=PARAM,
    )


def _unreadable_video(reason: str) -> VLLMValidationError:
    return VLLMValidationError(
        f"the video could not be read into frames: {reason}; send a clip with at least "
        "two decodable frames and a frame rate in its header (a single frame as an image)",
        parameter=VIDEO_PARAM,
    )


def _checked_video(media_io: Any, media: Any) -> Any:
    """A loaded video with at least one frame; anything else loaded, unchanged."""
    if isinstance(media_io, VideoMediaIO):
        frames, _ = media
        if len(frames) == 0:
            raise _unreadable_video("no frame of it could be decoded")
    return media


@contextmanager
def _client_errors(media_io: Any) -> Iterator[None]:
    """Media vLLM could not load because of what the client sent, as a 400 naming it."""
    try:
        yield
    except (Image.DecompressionBombError, *VIDEO_ERRORS) as err:
        bomb = _bomb_in(err)
        if bomb is not None:
            raise _bomb(bomb) from err
        if isinstance(media_io, VideoMediaIO):
            raise _unreadable_video(f"{type(err).__name__}: {err}") from err
        raise


def _bomb_in(err: Exception) -> Exception | None:
    """PIL's decompression-bomb refusal, as raised or as the cause of vLLM's error: 0.34's
    ``ImageMediaIO`` re-raises it as ``ValueError("Failed to load image")``, 0.32 and 0.33
    let it through."""
    bomb = err if isinstance(err, Image.DecompressionBombError) else err.__cause__
    return bomb if isinstance(bomb, Image.DecompressionBombError) else None


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
class GuardedMediaConnector(MediaConnector):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("connection", _connection)
        super().__init__(*args, **kwargs)

    async def load_from_url_async(
        self, url: str, media_io: Any, *, fetch_timeout: int | None = None
    ) -> Any:
        with _loading(media_io), _client_errors(media_io):
            if _is_http(url):
                media = await self._fetch_within_deadline(url, media_io)
            else:
                media = await super().load_from_url_async(
                    url, media_io, fetch_timeout=fetch_timeout
                )
        return _checked_video(media_io, media)

    async def _fetch_within_deadline(self, url: str, media_io: Any) -> Any:
        deadline = deadline_s()
        try:
            return await asyncio.wait_for(self._fetch(url, media_io, deadline), deadline)
        except (TimeoutError, asyncio.TimeoutError):
            raise GracefulHTTPError(
                f"{_url_noun()} {url[:200]!r}: not fetched within {deadline:g} s (this "
                "server's media fetch deadline, --media-fetch-timeout)",
                HTTPStatus.GATEWAY_TIMEOUT,
            ) from None

    async def _fetch(self, url: str, media_io: Any, deadline: float) -> Any:
        await _check_host_async(url)
        try:
            return await super().load_from_url_async(url, media_io, fetch_timeout=deadline)
        except (aiohttp.ClientError, OSError) as err:
            raise VLLMUnprocessableEntityError(
                f"{_url_noun()} {url[:200]!r} could not be fetched: {err}",
                parameter=_PART.get(),
            ) from err

    def load_from_url(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        with _loading(media_io):
            if _is_http(url):
                _check_host(url)
            with _client_errors(media_io):
                media = super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)
        return _checked_video(media_io, media)
