"""The AI gateway: the only module that talks to AI providers.

Callers describe a model with a `ModelTarget` (resolved from the tenant catalogue and decrypted
credentials elsewhere) and get back plain dataclasses and typed `ProviderError`s; no LiteLLM or
OpenAI SDK type leaks out. The gateway adds what the client libraries leave to us:

- retries with backoff on transient failures, but only before the first token reached the caller
  (a retry after that would repeat text the user already saw);
- a fallback chain: when a model is down, rate limited or out of quota, the next one serves and
  the result says which;
- cancellation: closing the stream (the caller stopped iterating or its task was cancelled)
  closes the HTTP response, so the provider sees the disconnect and stops generating;
- every tenant-supplied `api_base` passes the outbound guard first, and OpenAI-protocol endpoints
  are connected through a transport pinned to the checked address;
- error texts are scrubbed of the key, even when the provider echoes it.

Chat completions for providers that speak the OpenAI protocol (`openai`, `openai_compatible`, and
`azure` with a plain resource endpoint) bypass LiteLLM and go straight through the OpenAI SDK
client the gateway builds and caches per endpoint. This departs from "all model calls go through
LiteLLM" on purpose: bench/bench_gateway.py measured LiteLLM's per-call work (logging objects,
provider resolution, parameter mapping, per-chunk stream wrapping) at about 7 ms added to the time
to first token at 1 stream, 60 ms at 10 and 340 ms at 50 concurrent streams against the stub,
far over the 3 ms budget. Through the SDK client (its `post`, with a lean decoder that keeps
chunks as JSON dicts) the same benchmark measures well under 1 ms added at 1 and 10 streams and
no difference beyond the machine's noise at 50. Streamed chat to a tenant's own OpenAI-protocol
endpoint (the self-hosted case) skips the SDK too: the same JSON is posted over the pinned aiohttp
session and its events are read straight from the response, about 2 ms of CPU less per question.
What LiteLLM knew and the fast path still needs is
borrowed from it once and cached: which parameters a model accepts (reasoning models take
`max_completion_tokens`, not `max_tokens` or `temperature`) and the price table. Anthropic,
Mistral, other Azure endpoint shapes, remote embeddings and transcription still go through
LiteLLM. Either way this module remains the only one that talks to providers. Messages are sent as
given, so they must already be in the OpenAI wire format (LiteLLM used to rewrite a few legacy
shapes, such as an image URL given as a bare string).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

# LiteLLM reads these at import time: use the bundled price table instead of downloading one, and
# fetch nothing of its own accord (tokenizers, catalogues). Telemetry is opt-in by group; an empty
# list keeps it off whatever the environment says.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"
os.environ["LITELLM_TELEMETRY_GROUPS"] = ""

import aiohttp
import aiohttp.abc
import anyio
import httpx2
import openai
import orjson
import yarl
from openai import AsyncAzureOpenAI, AsyncOpenAI, AsyncStream, DefaultAsyncHttpxClient, OpenAIError

from allting.ai import local_embeddings
from allting.ai.errors import (
    ContextTooLong,
    ModelNotFound,
    ProviderAuthError,
    ProviderEndpointBlocked,
    ProviderError,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderUnavailable,
    scrub,
)
from allting.platform import egress


class _LazyLiteLLM:
    """LiteLLM, imported on first use: the import takes seconds and a lot of memory, and only calls to
    providers that do not speak the OpenAI protocol, embeddings, transcription and prices need it.
    `warm_up()` imports it in a background thread once the server is up."""

    def __init__(self) -> None:
        self._module: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._module is None:
                import litellm as module

                module.suppress_debug_info = True  # it prints "Give Feedback" banners with error text
                module.telemetry = False
                module.callbacks = []
                module.success_callback = []
                module.failure_callback = []
                module.turn_off_message_logging = True
                module.redact_messages_in_exceptions = True
                module.drop_params = True
                # Usage and cost are recorded by Allting; LiteLLM's per-chunk logging and end-of-stream
                # cost calculation only add latency (they run even with no callbacks registered).
                module.disable_streaming_logging = True
                self._module = module
        return self._module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._load(), name)


litellm = _LazyLiteLLM()


def get_optional_params(**kwargs: Any) -> Any:
    from litellm.utils import get_optional_params as litellm_optional_params

    litellm._load()
    return litellm_optional_params(**kwargs)


async def warm_up() -> None:
    """Import LiteLLM in a worker thread so the first call that needs it does not wait."""
    await anyio.to_thread.run_sync(litellm._load)


log = logging.getLogger(__name__)

PROVIDER_TYPES = frozenset({"openai", "azure", "anthropic", "mistral", "openai_compatible", "local"})
_LITELLM_PREFIX = {
    "openai": "openai/",
    "azure": "azure/",
    "anthropic": "anthropic/",
    "mistral": "mistral/",
    "openai_compatible": "openai/",
}
# Ways the catalogue may already have spelled an OpenAI-compatible model; all go through the
# OpenAI client so the connection can be pinned to the checked address.
_OPENAI_COMPATIBLE_PREFIXES = ("openai/", "hosted_vllm/")
# Chat parameters callers may set. Anything else (api_base, client, ...) could redirect the call
# or the key, so it is refused rather than passed through.
ALLOWED_CHAT_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "reasoning_effort",
        "user",
    }
)
ALLOWED_EXTRA = frozenset({"organization", "extra_headers", "extra_body"})

T = TypeVar("T")


@dataclass(frozen=True)
class ModelTarget:
    """One model at one provider account. `litellm_model` may omit the provider prefix."""

    litellm_model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_version: str | None = None
    provider_type: str = "openai"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.provider_type not in PROVIDER_TYPES:
            raise ValueError(f"unknown provider type {self.provider_type!r}")
        unknown = set(self.extra) - ALLOWED_EXTRA
        if unknown:
            raise ValueError(
                f"ModelTarget.extra may only hold {sorted(ALLOWED_EXTRA)}, not {sorted(unknown)}"
            )


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 4.0
    # A provider asking us to wait longer than this is treated as down for now: fall back instead.
    max_retry_after: float = 10.0


@dataclass(frozen=True)
class GatewayConfig:
    """`allowed_networks` None means OUTBOUND_ALLOWED_NETWORKS from the settings."""

    retry: RetryPolicy = RetryPolicy()
    allowed_networks: str | tuple[str, ...] | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # True when the provider reported nothing and the counts are the gateway's rough estimate.
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ChatDone:
    """Last event of a stream. `served_by` is the target that answered; index 0 is the primary."""

    usage: Usage
    served_by: ModelTarget
    served_by_index: int
    finish_reason: str | None
    failed: tuple[str, ...] = ()  # error codes of the targets tried before, in order

    @property
    def fallback_used(self) -> bool:
        return self.served_by_index > 0


ChatEvent = TextDelta | ChatDone


@dataclass(frozen=True)
class ChatResult:
    text: str
    usage: Usage
    served_by: ModelTarget
    served_by_index: int
    finish_reason: str | None
    failed: tuple[str, ...] = ()

    @property
    def fallback_used(self) -> bool:
        return self.served_by_index > 0


@dataclass(frozen=True)
class PriceOverride:
    """Per-model price in the currency of the catalogue, replacing LiteLLM's table."""

    input_cost_per_token: float
    output_cost_per_token: float


# ---------------------------------------------------------------------------------------------
# Model names, endpoints and clients


def litellm_model_name(target: ModelTarget) -> str:
    name = target.litellm_model
    if target.provider_type == "openai_compatible":
        for prefix in _OPENAI_COMPATIBLE_PREFIXES:
            name = name.removeprefix(prefix)
        return "openai/" + name
    prefix = _LITELLM_PREFIX.get(target.provider_type, "")
    return name if name.startswith(prefix) else prefix + name


@lru_cache(maxsize=32)
def _parsed_networks(value: str | tuple[str, ...]) -> tuple[egress.IPNetwork, ...]:
    return egress.parse_allowed_networks(value)


def _allowed_networks(config: GatewayConfig) -> tuple[egress.IPNetwork, ...]:
    if config.allowed_networks is None:
        return egress.configured_allowed_networks()
    return _parsed_networks(config.allowed_networks)


# Endpoints that passed the outbound guard recently, with the time their check expires. Only used
# for clients whose connections are pinned: their transport resolves and checks the host again for
# every new TCP connection, so a cached pre-check only saves the DNS lookup (and its thread hop) on
# each call, never lets a connection reach an address the guard would refuse.
_ENDPOINT_CHECK_TTL = 30.0
_ENDPOINT_CHECK_CACHE_SIZE = 1024
_checked_endpoints: dict[tuple[str, tuple[egress.IPNetwork, ...]], float] = {}


async def _check_endpoint(
    target: ModelTarget, allowed: tuple[egress.IPNetwork, ...], *, pinned: bool
) -> None:
    """Refuse an api_base the outbound guard does not allow (ProviderEndpointBlocked)."""
    assert target.api_base is not None
    key = (target.api_base, allowed)
    if pinned and _checked_endpoints.get(key, 0.0) > time.monotonic():
        return
    try:
        await egress.check_url_async(target.api_base, allowed_networks=allowed)
    except egress.EgressError as exc:
        _checked_endpoints.pop(key, None)
        raise ProviderEndpointBlocked(detail=exc.reason, model=target.litellm_model) from None
    if pinned:
        if len(_checked_endpoints) >= _ENDPOINT_CHECK_CACHE_SIZE:
            _checked_endpoints.clear()
        _checked_endpoints[key] = time.monotonic() + _ENDPOINT_CHECK_TTL


class _GuardedResolver(aiohttp.abc.AbstractResolver):
    """Name resolution for the pinned transport: every address a host name resolves to must pass
    the outbound guard, and the connection is made to exactly those addresses (aiohttp connects to
    what the resolver returns), so a DNS answer that changes between check and connect cannot
    smuggle a connection to an internal address. aiohttp caches the checked answers briefly."""

    def __init__(self, allowed: tuple[egress.IPNetwork, ...]) -> None:
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        try:
            addresses = await asyncio.get_running_loop().run_in_executor(
                None, egress.checked_addresses, host, port, self._allowed
            )
        except egress.HostNotFound as exc:
            raise OSError(exc.reason) from exc
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        return None


@lru_cache(maxsize=1024)
def _literal_host_blocked(host: str, allowed: tuple[egress.IPNetwork, ...]) -> str | None:
    """Why an IP-literal host may not be reached (aiohttp never resolves literals), else None."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return egress.blocked_reason(address, allowed)


class _PinnedSession:
    """An aiohttp session for tenant-supplied endpoints: connections only to addresses the outbound
    guard allows, redirects never followed.

    aiohttp rather than the SDK's default httpx2/httpcore2 stack: its C HTTP parser and plain
    asyncio reads cost a fraction of the CPU per streamed chunk, which bench/bench_chat.py measured
    as about half the time Allting added to the first token at 1 and 10 streams."""

    def __init__(self, allowed: tuple[egress.IPNetwork, ...]) -> None:
        self._allowed = allowed
        self._session: aiohttp.ClientSession | None = None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=_GuardedResolver(self._allowed),
                limit=1000,
                limit_per_host=0,
                ttl_dns_cache=_ENDPOINT_CHECK_TTL,
                # Below the 5 s after which uvicorn-based servers (vLLM among them) close an idle
                # connection: reusing one just as the server closes it fails the call once.
                keepalive_timeout=4.0,
                ssl=httpx2.create_ssl_context(trust_env=False),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Any,
        body: bytes | None,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's per-phase timeouts
    ) -> aiohttp.ClientResponse:
        """Send a request; raises `egress.EgressBlocked` for an IP-literal host the guard refuses
        (aiohttp never hands literals to the resolver) and aiohttp's own errors otherwise."""
        _check_url_form(url)
        host = yarl.URL(url).host or ""
        reason = _literal_host_blocked(host, self._allowed)
        if reason:
            raise egress.EgressBlocked(
                f"host {host} is a {reason} address and not in OUTBOUND_ALLOWED_NETWORKS"
            )
        return await self._client_session().request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            compress=False,
            timeout=timeout,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _AiohttpByteStream(httpx2.AsyncByteStream):
    """An aiohttp response body as the byte stream the OpenAI SDK reads, with aiohttp's errors
    raised as the httpx2 ones the SDK (and `_JSONChunkStream`) know."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._response.content.iter_any():
                yield data
        except (TimeoutError, aiohttp.SocketTimeoutError) as exc:
            raise httpx2.ReadTimeout(str(exc) or "The provider stopped sending") from exc
        except aiohttp.ClientError as exc:
            raise httpx2.ReadError(str(exc) or "The provider's connection broke") from exc

    async def aclose(self) -> None:
        # An unfinished body closes the connection (the provider sees the disconnect and stops);
        # a finished one goes back to the pool.
        self._response.release()


class _PinnedAiohttpTransport(httpx2.AsyncBaseTransport):
    """The OpenAI SDK's transport for tenant-supplied endpoints, over a `_PinnedSession`."""

    def __init__(self, allowed: tuple[egress.IPNetwork, ...]) -> None:
        self._pinned = _PinnedSession(allowed)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = request.extensions.get("timeout", {})
        try:
            response = await self._pinned.request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                body=await request.aread() or None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except egress.EgressBlocked as blocked:
            raise httpx2.ConnectError(blocked.reason, request=request) from blocked
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx2.ConnectTimeout(
                str(exc) or "Connecting to the provider timed out", request=request
            ) from exc
        except aiohttp.ClientError as exc:
            raise httpx2.ConnectError(
                str(exc) or "Could not connect to the provider", request=request
            ) from exc
        return httpx2.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpByteStream(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        await self._pinned.close()


@lru_cache(maxsize=1024)
def _check_url_form(url: str) -> None:
    """`egress.check_url_form`, remembered per URL: the check depends on nothing but the string
    (and raises for a bad one, which is then not cached), and every call repeats the same URL."""
    egress.check_url_form(url)


# One OpenAI client per event loop and endpoint: connection pools are bound to the loop that
# opened them, and reusing them keeps TLS handshakes off the time to first token.
_openai_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


def _pinned_openai_client(target: ModelTarget, allowed: tuple[egress.IPNetwork, ...]) -> AsyncOpenAI:
    """The cached client for a tenant-supplied endpoint, connected only to checked addresses.

    Azure targets get an `AsyncAzureOpenAI` (deployment in the path, `api-version` query, `api-key`
    header); everything else a plain `AsyncOpenAI` with `api_base` as its base URL."""
    clients = _openai_clients.setdefault(asyncio.get_running_loop(), {})
    azure = target.provider_type == "azure"
    organization = target.extra.get("organization")
    key = (
        "azure" if azure else "openai",
        target.api_base,
        target.api_key,
        target.api_version,
        organization,
        allowed,
    )
    client = clients.get(key)
    if client is None:
        http_client = httpx2.AsyncClient(transport=_PinnedAiohttpTransport(allowed), trust_env=False)
        if azure:
            client = AsyncAzureOpenAI(
                azure_endpoint=target.api_base or "",
                api_version=target.api_version or litellm.AZURE_DEFAULT_API_VERSION,
                api_key=target.api_key,
                organization=organization,
                max_retries=0,
                http_client=http_client,
            )
        else:
            client = AsyncOpenAI(
                api_key=target.api_key or "none",
                base_url=target.api_base,
                organization=organization,
                max_retries=0,
                http_client=http_client,
            )
        clients[key] = client
    return client


# The sessions that stream chat from tenant endpoints directly, one per event loop and set of
# allowed networks, for the same reasons as the clients above.
_pinned_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[egress.IPNetwork, ...], _PinnedSession]
] = weakref.WeakKeyDictionary()


def _pinned_session(allowed: tuple[egress.IPNetwork, ...]) -> _PinnedSession:
    sessions = _pinned_sessions.setdefault(asyncio.get_running_loop(), {})
    session = sessions.get(allowed)
    if session is None:
        session = sessions[allowed] = _PinnedSession(allowed)
    return session


async def close_clients() -> None:
    """Close the cached provider clients and sessions of the running event loop (their pools)."""
    loop = asyncio.get_running_loop()
    for client in _openai_clients.pop(loop, {}).values():
        with contextlib.suppress(Exception):
            await client.close()
    for session in _pinned_sessions.pop(loop, {}).values():
        with contextlib.suppress(Exception):
            await session.close()


def _default_openai_client(target: ModelTarget) -> AsyncOpenAI:
    """The cached client for OpenAI's own API (no tenant endpoint, so nothing to pin).

    Like LiteLLM, the SDK takes OPENAI_BASE_URL and, without a key on the target, OPENAI_API_KEY
    from the operator's environment, and honours the environment's proxy settings."""
    clients = _openai_clients.setdefault(asyncio.get_running_loop(), {})
    organization = target.extra.get("organization")
    key = ("openai-default", target.api_key, organization)
    client = clients.get(key)
    if client is None:
        try:
            client = AsyncOpenAI(
                api_key=target.api_key,
                organization=organization,
                max_retries=0,
                http_client=DefaultAsyncHttpxClient(),
            )
        except OpenAIError:
            raise ProviderAuthError(
                detail="No API key is configured for OpenAI.", model=target.litellm_model
            ) from None
        clients[key] = client
    return client


def _sent_directly(target: ModelTarget) -> bool:
    """Whether streamed chats and embeddings for this target are sent and read straight over
    aiohttp: a tenant endpoint that speaks the plain OpenAI protocol (Azure's URL and header shapes
    stay with the SDK and LiteLLM)."""
    return bool(target.api_base) and target.provider_type in ("openai", "openai_compatible")


def _uses_openai_sdk(target: ModelTarget) -> bool:
    """Whether chat and embeddings for this target go through the OpenAI SDK instead of LiteLLM."""
    if target.provider_type in ("openai", "openai_compatible"):
        return True
    if target.provider_type == "azure":
        return _is_plain_azure_endpoint(target)
    return False


@lru_cache(maxsize=256)
def _plain_azure_endpoint(api_base: str, api_version: str | None) -> bool:
    try:
        url = httpx2.URL(api_base)
    except (httpx2.InvalidURL, ValueError):
        return False
    # The resource endpoint (https://NAME.openai.azure.com/) is what AsyncAzureOpenAI expects; full
    # deployment URLs, the /openai/v1 API and Azure AI Foundry endpoints stay with LiteLLM, which
    # knows their shapes.
    return url.path in ("", "/") and not url.query and api_version not in ("v1", "latest", "preview")


def _is_plain_azure_endpoint(target: ModelTarget) -> bool:
    return bool(target.api_base and target.api_key) and _plain_azure_endpoint(
        target.api_base, target.api_version
    )


def _sdk_model_name(target: ModelTarget) -> str:
    """The model (Azure: deployment) name as the provider knows it, without LiteLLM's prefix."""
    return litellm_model_name(target).split("/", 1)[1]


@lru_cache(maxsize=1024)
def _mapped_params_cached(
    provider: str, model: str, api_version: str | None, params_json: str
) -> tuple[tuple[str, Any], ...]:
    return tuple(_map_params(provider, model, api_version, json.loads(params_json)).items())


def _map_params(provider: str, model: str, api_version: str | None, params: dict[str, Any]) -> dict[str, Any]:
    try:
        mapped = get_optional_params(
            model=model,
            custom_llm_provider=provider,
            api_version=api_version,
            drop_params=True,
            **params,
        )
    except Exception:  # mapping must not fail the call: send what the caller asked for
        log.warning("could not map chat parameters", extra={"model": model, "params": sorted(params)})
        return dict(params)
    mapped.pop("stream", None)
    return mapped


def _provider_params(target: ModelTarget, model: str, params: dict[str, Any]) -> dict[str, Any]:
    """The caller's chat parameters as this model takes them, mapped the way LiteLLM would (for
    example `max_tokens` becomes `max_completion_tokens` and `temperature` is dropped for reasoning
    models). LiteLLM's mapping costs up to a millisecond, so it is cached per model and parameters."""
    if not params:
        return {}
    provider = "azure" if target.provider_type == "azure" else "openai"
    try:
        key = json.dumps(params, sort_keys=True)
    except (TypeError, ValueError):
        return _map_params(provider, model, target.api_version, params)
    return dict(_mapped_params_cached(provider, model, target.api_version, key))


class _SSEDecoder:
    """Server-sent events to their `data` payloads: the subset of the format the OpenAI protocol
    uses (data lines, blank line ends an event; comments, `event`, `id` and `retry` are ignored)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        held = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # maybe the first half of a CRLF split across reads
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop() + held
        events: list[bytes] = []
        for line in lines:
            self._line(line, events)
        return events

    def flush(self) -> list[bytes]:
        events: list[bytes] = []
        if self._buffer.strip(b"\r"):
            self._line(self._buffer.strip(b"\r"), events)
        self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)


_DRAIN_AFTER_DONE = 0.1  # seconds to wait for the end of the body after [DONE], as the SDK does
_TRANSPORT_TIMEOUTS = (httpx2.TimeoutException,)
_TRANSPORT_ERRORS = (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)


_DONE = object()


def _plain_text_delta(chunk: object) -> bool:
    """A chunk that carries nothing but answer text for the one choice (no usage, no finish)."""
    if not isinstance(chunk, dict) or chunk.get("usage"):
        return False
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    if choice.get("finish_reason") or choice.get("logprobs") or choice.get("index", 0) != 0:
        return False
    delta = choice.get("delta")
    return (
        isinstance(delta, dict)
        and isinstance(delta.get("content"), str)
        and delta.keys() <= {"content", "role", "refusal"}
        and not delta.get("refusal")
    )


def _coalesced(chunks: Iterable[object]) -> Iterator[object]:
    """Text deltas that arrived in the same read, merged into one chunk.

    Nothing waits for merging: only text already received together is joined. At light load every
    read holds one chunk and nothing changes; when the event loop falls behind, the text that piled
    up meanwhile goes out as one event instead of dozens, so the work per answer shrinks exactly
    when the process is busiest."""
    pending: Any = None
    for chunk in chunks:
        if pending is not None and _plain_text_delta(pending) and _plain_text_delta(chunk):
            delta = pending["choices"][0]["delta"]
            delta["content"] += chunk["choices"][0]["delta"]["content"]  # type: ignore[index]
            continue
        if pending is not None:
            yield pending
        pending = chunk
    if pending is not None:
        yield pending


class _JSONChunkStream(AsyncStream[object]):
    """The SDK's stream with a leaner decoder: chunks stay the JSON dicts the provider sent.

    The SDK's own decoding builds pydantic models for every chunk (more CPU than everything else
    in the call together) and leaves five async generators per stream for the event loop to
    finalise, each costing a task and a wake-up. Errors are raised as the SDK raises them."""

    def __init__(
        self, *, cast_to: type[object], response: httpx2.Response, client: Any, options: Any = None
    ) -> None:
        # As AsyncStream.__init__, without building the SDK's SSE decoder this class does not use.
        self.response = response
        self._cast_to = cast_to
        self._client = client
        self._options = options
        self._iterator = self.__stream__()

    async def __stream__(self) -> AsyncIterator[object]:  # type: ignore[override]
        response = self.response
        try:
            async with contextlib.aclosing(response.aiter_bytes()) as body:
                async for chunk in _json_chunks(body, self._error):
                    yield chunk
        except _TRANSPORT_TIMEOUTS as exc:
            raise openai.APITimeoutError(request=response.request) from exc
        except _TRANSPORT_ERRORS as exc:
            raise openai.APIConnectionError(request=response.request) from exc
        finally:
            await response.aclose()

    def _error(self, error: object) -> Exception:
        return openai.APIError(_stream_error_message(error), self.response.request, body=error)


async def _json_chunks(
    body: AsyncIterator[bytes], error: Callable[[object], Exception]
) -> AsyncIterator[object]:
    """The JSON chunks of an OpenAI-protocol event stream, up to [DONE]; text deltas that arrived
    in one read are merged. An error event raises `error(its error object)`."""
    decoder = _SSEDecoder()
    async for raw in body:
        for chunk in _coalesced(_parsed(decoder.feed(raw))):
            if chunk is _DONE:
                await _drain(body)
                return
            if isinstance(chunk, _ErrorEvent):
                raise error(chunk.error)
            yield chunk
    for chunk in _coalesced(_parsed(decoder.flush())):
        if chunk is _DONE:
            return
        if isinstance(chunk, _ErrorEvent):
            raise error(chunk.error)
        yield chunk


@dataclass(frozen=True)
class _ErrorEvent:
    """An error event, passed along in order so the text that arrived before it is still delivered."""

    error: object


def _parsed(payloads: list[bytes]) -> Iterable[object]:
    for payload in payloads:
        if payload.startswith(b"[DONE]"):
            yield _DONE
            return
        chunk = orjson.loads(payload)
        if isinstance(chunk, dict) and chunk.get("error"):
            yield _ErrorEvent(chunk["error"])
            return
        yield chunk


def _stream_error_message(error: object) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else "An error occurred during streaming"


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE] (normally only the end of the chunked body) so the connection
    goes back to the pool; give up after a moment and let the connection close instead."""
    with anyio.move_on_after(_DRAIN_AFTER_DONE):
        async for _ in body:
            pass


class _DirectStream:
    """A streamed chat read straight from a pinned aiohttp response, as JSON chunks.

    The SDK's request building and its response layers (httpx2 on top of aiohttp) cost about
    2 ms of CPU per question and a few async layers per chunk (bench/bench_chat.py); the request
    here is the same JSON, and failures are the same typed errors."""

    def __init__(self, response: aiohttp.ClientResponse, target: ModelTarget) -> None:
        self._response = response
        self._target = target
        self._chunks = _json_chunks(response.content.iter_any(), self._error)

    def _error(self, error: object) -> Exception:
        code = error.get("code") if isinstance(error, dict) else None
        detail = scrub(_stream_error_message(error), [self._target.api_key])
        return _protocol_error(self._target, status=None, code=code, detail=detail)

    async def __anext__(self) -> object:
        try:
            return await self._chunks.__anext__()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _connection_error(self._target, exc, "The provider's connection broke") from None

    async def aclose(self) -> None:
        # An unfinished body closes the connection (the provider sees the disconnect and stops);
        # a finished one goes back to the pool.
        try:
            await self._chunks.aclose()
        finally:
            self._response.release()


_ERROR_BODY_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024


def _embeddings_body_limit(texts: int) -> int:
    """The most an embeddings answer for this many texts can take: 16,000 dimensions (the most a
    model may declare) written as JSON numbers of up to 25 characters, and room for the rest."""
    return 64 * 1024 + texts * 16_000 * 25


@lru_cache(maxsize=1024)
def _endpoint_url(api_base: str, path: str) -> str:
    url = yarl.URL(api_base)
    return str(url.with_path(url.path.rstrip("/") + path, keep_query=True))


async def _post_directly(
    target: ModelTarget,
    config: GatewayConfig,
    path: str,
    body: dict[str, Any],
    *,
    accept: str,
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - per provider request, passed to aiohttp
) -> aiohttp.ClientResponse:
    """POST JSON to a tenant's OpenAI-protocol endpoint; a refusal or failure is a typed error."""
    assert target.api_base is not None
    allowed = _allowed_networks(config)
    await _check_endpoint(target, allowed, pinned=True)
    headers = {
        "Authorization": f"Bearer {target.api_key or 'none'}",
        "Content-Type": "application/json",
        "Accept": accept,
    }
    if target.extra.get("organization"):
        headers["OpenAI-Organization"] = target.extra["organization"]
    headers.update(target.extra.get("extra_headers") or {})
    try:
        response = await _pinned_session(allowed).request(
            "POST",
            _endpoint_url(target.api_base, path),
            headers=headers,
            body=orjson.dumps(body),
            timeout=timeout,
        )
    except Exception as exc:
        blocked = _egress_cause(exc)
        if blocked is not None:
            raise ProviderEndpointBlocked(detail=blocked.reason, model=target.litellm_model) from None
        if isinstance(exc, TimeoutError | aiohttp.ClientError):
            raise _connection_error(target, exc) from None
        raise
    if response.status >= 400:
        try:
            text = (await response.content.read(_ERROR_BODY_LIMIT)).decode(errors="replace").strip()
        except (TimeoutError, aiohttp.ClientError):
            text = ""
        finally:
            response.release()
        raise _status_error(target, response.status, response.headers, text)
    return response


def _connection_error(
    target: ModelTarget, exc: BaseException, unexplained: str = "Could not connect to the provider"
) -> ProviderUnavailable:
    """A broken or refused connection, with the exception's text (scrubbed) or `unexplained`."""
    detail = str(exc) or unexplained
    return ProviderUnavailable(detail=scrub(detail, [target.api_key]), model=target.litellm_model)


async def _open_direct_stream(
    target: ModelTarget,
    config: GatewayConfig,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    request_timeout: float,
) -> _DirectStream:
    """POST a streamed chat to a tenant's OpenAI-protocol endpoint; a refusal is a typed error."""
    body = _chat_body(target, messages, params)
    body.update(stream=True, stream_options={"include_usage": True})
    response = await _post_directly(
        target,
        config,
        "/chat/completions",
        body,
        accept="text/event-stream",
        timeout=aiohttp.ClientTimeout(
            total=None, connect=request_timeout, sock_connect=request_timeout, sock_read=request_timeout
        ),
    )
    return _DirectStream(response, target)


async def _embed_directly(
    target: ModelTarget, config: GatewayConfig, texts: list[str], request_timeout: float
) -> list[list[float]]:
    """One batch embedded by a tenant's OpenAI-protocol endpoint, in input order.

    LiteLLM's embedding call cost about 6 ms of the event loop's CPU per request, as much as the
    built-in model spends embedding a question (bench/bench_chat.py); this is the same request."""
    response = await _post_directly(
        target,
        config,
        "/embeddings",
        _embeddings_body(target, texts),
        accept="application/json",
        timeout=aiohttp.ClientTimeout(total=request_timeout),
    )
    # An endpoint is the tenant's to choose, so its answer is read only up to what the largest
    # vectors of these texts could take, not into memory whatever its size.
    limit = _embeddings_body_limit(len(texts))
    raw = bytearray()
    try:
        async for piece in response.content.iter_chunked(_READ_SIZE):
            raw += piece
            if len(raw) > limit:
                raise ProviderError(
                    "The AI provider's answer was larger than the embeddings of these texts can be.",
                    code="bad_response",
                    model=target.litellm_model,
                )
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _connection_error(target, exc) from None
    finally:
        response.release()
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    return _embedding_vectors(target, answer, len(texts))


async def _embed_with_sdk(
    target: ModelTarget, config: GatewayConfig, texts: list[str], request_timeout: float
) -> list[list[float]]:
    """One batch embedded through the OpenAI SDK: Azure's deployment URLs and OpenAI's own API."""
    client = await _sdk_client(target, config)
    answer = await client.post(
        "/embeddings",
        cast_to=object,
        body=_embeddings_body(target, texts),
        options=_sdk_options(target, request_timeout),
    )
    return _embedding_vectors(target, answer, len(texts))


def _embeddings_body(target: ModelTarget, texts: list[str]) -> dict[str, Any]:
    return {
        **(target.extra.get("extra_body") or {}),
        "model": _sdk_model_name(target),
        "input": texts,
        "encoding_format": "float",
    }


def _embedding_vectors(target: ModelTarget, answer: object, expected: int) -> list[list[float]]:
    """The vectors of an OpenAI-protocol embeddings answer, ordered by their index."""
    try:
        ordered = sorted(answer.get("data"), key=lambda item: item["index"])  # type: ignore[union-attr]
        vectors = [item["embedding"] for item in ordered]
    except (AttributeError, TypeError, KeyError):
        vectors = None
    if (
        vectors is None
        or len(vectors) != expected
        or not all(isinstance(vector, list) and vector for vector in vectors)
    ):
        raise ProviderError(
            "The AI provider's answer did not hold one embedding per text.",
            code="bad_response",
            model=target.litellm_model,
        )
    return vectors


def _status_error(target: ModelTarget, status: int, headers: Any, text: str) -> ProviderError:
    """The typed error for a refused request, from its status and body as the SDK would read them."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error", body) if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    detail = scrub(f"Error code: {status} - {text}" if text else f"Error code: {status}", [target.api_key])
    return _protocol_error(
        target, status=status, code=code, detail=detail, retry_after=_retry_after_header(headers)
    )


def _chat_body(target: ModelTarget, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of an OpenAI-protocol chat call: the model's parameters, the target's extra
    body fields, the model name as the provider knows it, and the messages."""
    model = _sdk_model_name(target)
    body = _provider_params(target, model, params)
    body.update({**(body.pop("extra_body", None) or {}), **(target.extra.get("extra_body") or {})})
    body.update(model=model, messages=messages)
    return body


@dataclass(frozen=True)
class _SdkRequest:
    client: AsyncOpenAI
    body: dict[str, Any]
    options: dict[str, Any]


async def _sdk_request(
    target: ModelTarget,
    config: GatewayConfig,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    request_timeout: float,
) -> _SdkRequest:
    """Client, JSON body and request options for one OpenAI-protocol chat call.

    The body goes to the SDK client's `post` as is: `chat.completions.create` would walk the whole
    conversation against its TypedDicts first (milliseconds for long histories) only to produce
    the same JSON, since Allting already speaks the wire format."""
    client = await _sdk_client(target, config)
    return _SdkRequest(client, _chat_body(target, messages, params), _sdk_options(target, request_timeout))


async def _sdk_client(target: ModelTarget, config: GatewayConfig) -> AsyncOpenAI:
    if target.api_base:
        allowed = _allowed_networks(config)
        await _check_endpoint(target, allowed, pinned=True)
        return _pinned_openai_client(target, allowed)
    if target.provider_type == "openai":
        return _default_openai_client(target)
    raise ProviderError("An OpenAI-compatible model needs an endpoint URL.", code="endpoint_missing")


def _sdk_options(target: ModelTarget, request_timeout: float) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout": request_timeout}
    if target.extra.get("extra_headers"):
        options["headers"] = dict(target.extra["extra_headers"])
    return options


async def _call_kwargs(target: ModelTarget, config: GatewayConfig, request_timeout: float) -> dict[str, Any]:
    """Keyword arguments for a LiteLLM call; refuses an api_base the outbound guard does not allow."""
    extra = dict(target.extra)
    kwargs: dict[str, Any] = {
        "model": litellm_model_name(target),
        "timeout": request_timeout,
        "max_retries": 0,  # retries are ours, so they stop once the first token is out
        "num_retries": 0,
    }
    if target.api_key:
        kwargs["api_key"] = target.api_key
    if target.api_version:
        kwargs["api_version"] = target.api_version
    if target.api_base:
        allowed = _allowed_networks(config)
        pinned = kwargs["model"].startswith("openai/")
        await _check_endpoint(target, allowed, pinned=pinned)
        kwargs["api_base"] = target.api_base
        if pinned:
            kwargs["client"] = _pinned_openai_client(target, allowed)
            extra.pop("organization", None)  # set on the client instead
    elif target.provider_type == "openai_compatible":
        raise ProviderError("An OpenAI-compatible model needs an endpoint URL.", code="endpoint_missing")
    kwargs.update(extra)
    return kwargs


# ---------------------------------------------------------------------------------------------
# Error mapping, retries and fallbacks


def _egress_cause(exc: BaseException) -> egress.EgressError | None:
    """The guard's refusal when it surfaced inside a client library's connection error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, egress.EgressError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _retry_after(exc: Exception) -> float | None:
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    return _retry_after_header(headers)


def _retry_after_header(headers: Any) -> float | None:
    if not headers:
        return None
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        return seconds / 1000 if name == "retry-after-ms" else seconds
    return None


# How providers that speak the OpenAI protocol say what went wrong, beyond the HTTP status: OpenAI
# and Azure set `code`, vLLM, llama.cpp and Ollama often only a message.
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})
_QUOTA_WORDS = ("quota", "billing", "credit")
_RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "429"})
_AUTH_CODES = frozenset({"invalid_api_key", "401", "invalid_organization"})
_NOT_FOUND_CODES = frozenset({"model_not_found", "deploymentnotfound", "404"})
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_WORDS = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
    "input is too long",
    "too many tokens",
    "reduce the length",
)


def _map_openai_error(exc: openai.OpenAIError, detail: str, target: ModelTarget) -> ProviderError:
    """Map an OpenAI SDK exception (raised for Azure and OpenAI's own API)."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return ProviderUnavailable(detail=detail, model=target.litellm_model)
    return _protocol_error(
        target,
        status=getattr(exc, "status_code", None),
        code=getattr(exc, "code", None),
        detail=detail,
        retry_after=_retry_after(exc),
    )


def _protocol_error(
    target: ModelTarget, *, status: int | None, code: Any, detail: str, retry_after: float | None = None
) -> ProviderError:
    """The typed error for an OpenAI-protocol failure: an HTTP status (None for an error event in
    the stream), the provider's error code if it gave one, and the scrubbed text."""
    model = target.litellm_model
    lowered = detail.lower()
    code = code.lower() if isinstance(code, str) else ""
    if status in (401, 403) or code in _AUTH_CODES:
        return ProviderAuthError(detail=detail, model=model)
    if code in _QUOTA_CODES:
        return ProviderQuotaError(detail=detail, model=model)
    if status == 429 or code in _RATE_LIMIT_CODES:
        if any(word in lowered for word in _QUOTA_WORDS):
            return ProviderQuotaError(detail=detail, model=model)
        return ProviderRateLimited(retry_after=retry_after, detail=detail, model=model)
    if code in _CONTEXT_CODES or (
        (status in (400, 413, 422) or status is None) and any(word in lowered for word in _CONTEXT_WORDS)
    ):
        return ContextTooLong(detail=detail, model=model)
    if status == 404 or code in _NOT_FOUND_CODES:
        return ModelNotFound(detail=detail, model=model)
    if status in (400, 422):
        return ProviderError(
            "The AI provider rejected the request.", detail=detail, code="bad_request", model=model
        )
    if status is not None and (status >= 500 or status == 408):
        return ProviderUnavailable(detail=detail, model=model)
    return ProviderError(detail=detail, model=model)


def map_provider_error(exc: Exception, target: ModelTarget) -> ProviderError:
    """Translate a LiteLLM/OpenAI/network exception into a typed, scrubbed ProviderError."""
    if isinstance(exc, ProviderError):
        return exc
    model = target.litellm_model
    detail = scrub(str(exc), [target.api_key])
    blocked = _egress_cause(exc)
    if blocked is not None:
        return ProviderEndpointBlocked(detail=blocked.reason, model=model)
    # LiteLLM's exceptions subclass the OpenAI SDK's: the SDK's own (raised by the fast path) are
    # the ones that are not also LiteLLM's.
    if isinstance(exc, openai.OpenAIError) and not type(exc).__module__.startswith("litellm"):
        return _map_openai_error(exc, detail, target)
    lowered = detail.lower()
    if isinstance(exc, litellm.ContextWindowExceededError):
        return ContextTooLong(detail=detail, model=model)
    if isinstance(exc, litellm.AuthenticationError | litellm.PermissionDeniedError):
        return ProviderAuthError(detail=detail, model=model)
    if isinstance(exc, litellm.RateLimitError):
        if any(word in lowered for word in _QUOTA_WORDS):
            return ProviderQuotaError(detail=detail, model=model)
        return ProviderRateLimited(retry_after=_retry_after(exc), detail=detail, model=model)
    if isinstance(exc, litellm.NotFoundError):
        return ModelNotFound(detail=detail, model=model)
    if isinstance(exc, litellm.BadRequestError):
        return ProviderError(
            "The AI provider rejected the request.", detail=detail, code="bad_request", model=model
        )
    transient = (
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.APIConnectionError,
        litellm.Timeout,
        TimeoutError,
        ConnectionError,
    )
    status = getattr(exc, "status_code", None)
    if isinstance(exc, transient) or (isinstance(status, int) and status >= 500):
        return ProviderUnavailable(detail=detail, model=model)
    return ProviderError(detail=detail, model=model)


_FALLBACK_ON = (ProviderUnavailable, ProviderRateLimited, ProviderQuotaError)


def _retry_delay(error: ProviderError, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before the next attempt, or None when this error is not worth retrying."""
    if isinstance(error, ProviderRateLimited):
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= policy.max_retry_after else None
    elif not isinstance(error, ProviderUnavailable):
        return None
    backoff = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    return backoff * random.uniform(0.5, 1.0)


async def _with_retries(target: ModelTarget, policy: RetryPolicy, call: Callable[[], Awaitable[T]]) -> T:
    attempt = 1
    while True:
        try:
            return await call()
        except Exception as exc:
            error = map_provider_error(exc, target)
        delay = _retry_delay(error, attempt, policy) if attempt < policy.max_attempts else None
        if delay is None:
            # Raised outside the except block so the original exception, whose text may hold
            # the key, is not chained into tracebacks.
            raise error
        log.info(
            "retrying model call",
            extra={"model": target.litellm_model, "code": error.code, "attempt": attempt},
        )
        await asyncio.sleep(delay)
        attempt += 1


async def _with_fallbacks(
    targets: Sequence[ModelTarget], call: Callable[[ModelTarget], Awaitable[T]]
) -> tuple[int, T, tuple[str, ...]]:
    """Try each target in turn while they are down, rate limited or out of quota; the last one's
    error is the caller's. Returns the index of the target that served, its result, and the codes
    of the failures before it."""
    failed: list[str] = []
    *fallible, last = targets
    for index, target in enumerate(fallible):
        try:
            return index, await call(target), tuple(failed)
        except _FALLBACK_ON as error:
            failed.append(error.code)
            log.warning(
                "model unavailable, using fallback",
                extra={
                    "model": target.litellm_model,
                    "code": error.code,
                    "fallback": targets[index + 1].litellm_model,
                },
            )
    return len(fallible), await call(last), tuple(failed)


# ---------------------------------------------------------------------------------------------
# Chat


def _chat_kwargs(params: Mapping[str, Any] | None) -> dict[str, Any]:
    params = dict(params or {})
    refused = set(params) - ALLOWED_CHAT_PARAMS
    if refused:
        raise ValueError(f"chat parameters not allowed: {sorted(refused)}")
    return params


def _field(value: Any, name: str) -> Any:
    """`name` of a JSON object (fast path) or of a LiteLLM response object."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def _usage_from(raw: Any) -> Usage | None:
    if raw is None:
        return None
    prompt = _field(raw, "prompt_tokens")
    completion = _field(raw, "completion_tokens")
    if prompt is None and completion is None:
        return None
    return Usage(prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0))


# A rough count for when the provider reports no usage: about four characters per token, plus the
# few tokens of framing each message costs. Tokenising the whole conversation (LiteLLM's
# token_counter) would cost milliseconds of CPU on long contexts for a figure that is flagged as an
# estimate anyway.
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_IMAGE = 85


def _estimated_tokens(text: str) -> int:
    return -(-len(text) // _CHARS_PER_TOKEN)


def _estimated_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    tokens = 3  # the reply's priming
    for message in messages:
        tokens += _TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            tokens += _estimated_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, Mapping):
                    continue
                if isinstance(part.get("text"), str):
                    tokens += _estimated_tokens(part["text"])
                elif part.get("type") in ("image_url", "input_image", "image"):
                    tokens += _TOKENS_PER_IMAGE
    return tokens


def _estimated_usage(messages: list[dict[str, Any]], text: str) -> Usage:
    return Usage(_estimated_prompt_tokens(messages), _estimated_tokens(text), estimated=True)


def _text_of(chunk: Any) -> tuple[str, str | None]:
    choices = _field(chunk, "choices") or []
    if not choices:
        return "", None
    choice = choices[0]
    delta = _field(choice, "delta")
    text = _field(delta, "content") if delta is not None else None
    return (text if isinstance(text, str) else ""), _field(choice, "finish_reason")


async def _next_chunk(stream: Any, target: ModelTarget) -> Any | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except Exception as exc:
        error = map_provider_error(exc, target)
    if isinstance(error, ProviderUnavailable):
        error = ProviderUnavailable(
            "The AI provider stopped answering in the middle of the reply.",
            detail=error.detail,
            code="stream_interrupted",
            model=error.model,
        )
    raise error


@dataclass
class _OpenedStream:
    stream: Any
    first_text: str
    first_chunks: list[Any]
    finished: bool


async def _open_stream(
    target: ModelTarget,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    config: GatewayConfig,
    request_timeout: float,
) -> _OpenedStream:
    """Start a stream and read up to the first text, so failures up to there can still be retried."""
    if _sent_directly(target):
        stream: Any = await _open_direct_stream(target, config, messages, params, request_timeout)
    elif _uses_openai_sdk(target):
        request = await _sdk_request(target, config, messages, params, request_timeout)
        request.body["stream"] = True
        request.body["stream_options"] = {"include_usage": True}
        stream = await request.client.post(
            "/chat/completions",
            cast_to=object,
            body=request.body,
            options=request.options,
            stream=True,
            stream_cls=_JSONChunkStream,
        )
    else:
        kwargs = await _call_kwargs(target, config, request_timeout)
        stream = await litellm.acompletion(
            messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs, **params
        )
    chunks: list[Any] = []
    try:
        while True:
            chunk = await stream.__anext__()
            chunks.append(chunk)
            text, _ = _text_of(chunk)
            if text:
                return _OpenedStream(stream, text, chunks, finished=False)
    except StopAsyncIteration:
        return _OpenedStream(stream, "", chunks, finished=True)
    except BaseException:
        await stream.aclose()
        raise


class ChatStream:
    """A streamed answer whose provider has already answered: iterate `events()` for the text and
    the final `ChatDone`, or `aclose()` to stop the provider without reading."""

    def __init__(
        self,
        opened: _OpenedStream,
        served_by: ModelTarget,
        index: int,
        failed: tuple[str, ...],
        messages: list[dict[str, Any]],
    ) -> None:
        self._opened = opened
        self._served_by = served_by
        self._index = index
        self._failed = failed
        self._messages = messages

    async def events(self) -> AsyncIterator[ChatEvent]:
        opened = self._opened
        parts: list[str] = []
        usage: Usage | None = None
        finish_reason: str | None = None
        try:
            for chunk in opened.first_chunks:
                usage = _usage_from(_field(chunk, "usage")) or usage
                finish_reason = _text_of(chunk)[1] or finish_reason
            if opened.first_text:
                parts.append(opened.first_text)
                yield TextDelta(opened.first_text)
            while not opened.finished:
                chunk = await _next_chunk(opened.stream, self._served_by)
                if chunk is None:
                    break
                usage = _usage_from(_field(chunk, "usage")) or usage
                text, reason = _text_of(chunk)
                finish_reason = reason or finish_reason
                if text:
                    parts.append(text)
                    yield TextDelta(text)
        finally:
            await self.aclose()
        usage = usage or _estimated_usage(self._messages, "".join(parts))
        yield ChatDone(usage, self._served_by, self._index, finish_reason, self._failed)

    async def aclose(self) -> None:
        """Close the HTTP response: the provider sees the client leave and stops generating."""
        await self._opened.stream.aclose()


async def open_chat(
    target: ModelTarget,
    messages: list[dict[str, Any]],
    *,
    params: Mapping[str, Any] | None = None,
    fallbacks: Iterable[ModelTarget] = (),
    timeout: float = 60.0,  # noqa: ASYNC109 - per provider request, passed to the HTTP client
    config: GatewayConfig | None = None,
) -> ChatStream:
    """Start a streamed answer and wait for its first text (or its end), with retries and the
    fallback chain; failures up to there raise `ProviderError`. The caller must iterate or
    `aclose()` the result. Useful to start the provider while other work goes on."""
    config = config or GatewayConfig()
    chat_params = _chat_kwargs(params)
    targets = [target, *fallbacks]

    async def open_one(candidate: ModelTarget) -> _OpenedStream:
        return await _with_retries(
            candidate, config.retry, lambda: _open_stream(candidate, messages, chat_params, config, timeout)
        )

    index, opened, failed = await _with_fallbacks(targets, open_one)
    return ChatStream(opened, targets[index], index, failed, messages)


async def stream_chat(
    target: ModelTarget,
    messages: list[dict[str, Any]],
    *,
    params: Mapping[str, Any] | None = None,
    fallbacks: Iterable[ModelTarget] = (),
    timeout: float = 60.0,  # noqa: ASYNC109 - per provider request, passed to the HTTP client
    config: GatewayConfig | None = None,
) -> AsyncIterator[ChatEvent]:
    """Yield `TextDelta`s and then one `ChatDone`. Close the iterator (or cancel the task) to stop
    the provider: use `contextlib.aclosing(stream_chat(...))` when you may stop early."""
    chat = await open_chat(
        target, messages, params=params, fallbacks=fallbacks, timeout=timeout, config=config
    )
    async with contextlib.aclosing(chat.events()) as events:
        async for event in events:
            yield event


async def complete_chat(
    target: ModelTarget,
    messages: list[dict[str, Any]],
    *,
    params: Mapping[str, Any] | None = None,
    fallbacks: Iterable[ModelTarget] = (),
    timeout: float = 60.0,  # noqa: ASYNC109 - per provider request, passed to the HTTP client
    config: GatewayConfig | None = None,
) -> ChatResult:
    """One non-streaming completion, with the same retries and fallbacks as `stream_chat`."""
    config = config or GatewayConfig()
    chat_params = _chat_kwargs(params)
    targets = [target, *fallbacks]

    async def call(candidate: ModelTarget) -> Any:
        async def once() -> Any:
            if _uses_openai_sdk(candidate):
                request = await _sdk_request(candidate, config, messages, chat_params, timeout)
                return await request.client.post(
                    "/chat/completions", cast_to=object, body=request.body, options=request.options
                )
            kwargs = await _call_kwargs(candidate, config, timeout)
            return await litellm.acompletion(messages=messages, stream=False, **kwargs, **chat_params)

        return await _with_retries(candidate, config.retry, once)

    index, response, failed = await _with_fallbacks(targets, call)
    served_by = targets[index]
    choices = _field(response, "choices") or []
    if not choices:
        raise ProviderError(
            "The AI provider returned no answer.", code="empty_response", model=served_by.litellm_model
        )
    choice = choices[0]
    message = _field(choice, "message")
    content = _field(message, "content") if message is not None else None
    text = content if isinstance(content, str) else ""
    usage = _usage_from(_field(response, "usage")) or _estimated_usage(messages, text)
    return ChatResult(text, usage, served_by, index, _field(choice, "finish_reason"), failed)


# ---------------------------------------------------------------------------------------------
# Embeddings and transcription

# Batches of one call a provider gets at a time: a long document is embedded in about a quarter of
# the time, while the provider's rate limit sees only a few requests at once.
EMBED_BATCHES_AT_ONCE = 4


async def embed(
    target: ModelTarget,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    timeout: float = 60.0,  # noqa: ASYNC109 - per provider request, passed to the HTTP client
    config: GatewayConfig | None = None,
) -> list[list[float]]:
    """Embed `texts` in batches of `batch_size`; vectors come back in input order. A provider gets
    up to EMBED_BATCHES_AT_ONCE of the batches at a time."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if target.provider_type == "local":
        return await local_embeddings.embed_texts(list(texts), batch_size=batch_size)
    config = config or GatewayConfig()
    in_flight = asyncio.Semaphore(EMBED_BATCHES_AT_ONCE)

    async def embedded(batch: list[str]) -> list[list[float]]:
        async def once() -> list[list[float]]:
            if _sent_directly(target):
                return await _embed_directly(target, config, batch, timeout)
            if _uses_openai_sdk(target):
                return await _embed_with_sdk(target, config, batch, timeout)
            kwargs = await _call_kwargs(target, config, timeout)
            response = await litellm.aembedding(input=batch, encoding_format="float", **kwargs)
            ordered = sorted(response.data, key=lambda item: item["index"])
            return [list(item["embedding"]) for item in ordered]

        async with in_flight:
            return await _with_retries(target, config.retry, once)

    batches = [list(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    if len(batches) <= 1:
        return await embedded(batches[0]) if batches else []
    tasks = [asyncio.ensure_future(embedded(batch)) for batch in batches]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        # One batch failed (or the caller gave up): the others stop, and their outcomes are
        # collected so none is left unretrieved.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [vector for result in results for vector in result]


async def transcribe(
    target: ModelTarget,
    audio_bytes: bytes,
    filename: str,
    *,
    language: str | None = None,
    timeout: float = 300.0,  # noqa: ASYNC109 - per provider request, passed to the HTTP client
    config: GatewayConfig | None = None,
) -> str:
    """Transcribe one audio file and return its text."""
    if target.provider_type == "local":
        raise ProviderError("The local provider offers no transcription model.", code="unsupported")
    config = config or GatewayConfig()

    async def once() -> Any:
        kwargs = await _call_kwargs(target, config, timeout)
        if language:
            kwargs["language"] = language
        return await litellm.atranscription(file=(filename, audio_bytes), **kwargs)

    response = await _with_retries(target, config.retry, once)
    return response.text or ""


# ---------------------------------------------------------------------------------------------
# Cost


_EXACT = "exact"  # the model's price is not linear in the token counts (tiered pricing)
_LINEARITY_PROBE = 1_000_000


def _litellm_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    prompt_cost, completion_cost = litellm.cost_per_token(
        model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )
    return float(prompt_cost) + float(completion_cost)


@lru_cache(maxsize=1024)
def _token_prices(model: str) -> tuple[float, float] | str | None:
    """Per-token input and output price of `model`, looked up once (LiteLLM's lookup takes about
    half a millisecond). None when the table does not know the model; `_EXACT` when the price
    depends on the size of the request (tiers above some context length), so each call asks LiteLLM."""
    try:
        prices = (_litellm_cost(model, 1, 0), _litellm_cost(model, 0, 1))
        probe = _litellm_cost(model, _LINEARITY_PROBE, _LINEARITY_PROBE)
    except Exception:  # LiteLLM raises a variety of errors for unmapped models
        return None
    linear = _LINEARITY_PROBE * (prices[0] + prices[1])
    if abs(probe - linear) > 1e-9 * max(1.0, abs(linear)):
        return _EXACT
    return prices


def estimate_cost(
    target: ModelTarget, usage: Usage, *, price_override: PriceOverride | None = None
) -> float | None:
    """Cost of `usage` from LiteLLM's bundled price table (USD), or from `price_override`.

    None when the model is not in the table and there is no override (self-hosted models).
    """
    if price_override is not None:
        return (
            usage.prompt_tokens * price_override.input_cost_per_token
            + usage.completion_tokens * price_override.output_cost_per_token
        )
    model = litellm_model_name(target)
    prices = _token_prices(model)
    if prices is None:
        return None
    if prices == _EXACT:
        try:
            return _litellm_cost(model, usage.prompt_tokens, usage.completion_tokens)
        except Exception:
            return None
    input_price, output_price = prices
    return usage.prompt_tokens * input_price + usage.completion_tokens * output_price
