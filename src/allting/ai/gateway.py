"""The AI gateway: the only module that talks to LiteLLM.

Callers describe a model with a `ModelTarget` (resolved from the tenant catalogue and decrypted
credentials elsewhere) and get back plain dataclasses and typed `ProviderError`s; no LiteLLM type
leaks out. The gateway adds what LiteLLM leaves to us:

- retries with backoff on transient failures, but only before the first token reached the caller
  (a retry after that would repeat text the user already saw);
- a fallback chain: when a model is down, rate limited or out of quota, the next one serves and
  the result says which;
- cancellation: closing the stream (the caller stopped iterating or its task was cancelled)
  closes the HTTP response, so the provider sees the disconnect and stops generating;
- every tenant-supplied `api_base` passes the outbound guard first, and OpenAI-protocol endpoints
  are connected through a transport pinned to the checked address;
- error texts are scrubbed of the key, even when the provider echoes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

# LiteLLM reads these at import time: use the bundled price table instead of downloading one, and
# fetch nothing of its own accord (tokenizers, catalogues). Telemetry is opt-in by group; an empty
# list keeps it off whatever the environment says.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LITELLM_OFFLINE_MODE"] = "true"
os.environ["LITELLM_TELEMETRY_GROUPS"] = ""

import httpcore2
import httpx2
import litellm
from openai import AsyncOpenAI

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

litellm.suppress_debug_info = True  # it prints "Give Feedback" banners with error text to stdout
litellm.telemetry = False
litellm.callbacks = []
litellm.success_callback = []
litellm.failure_callback = []
litellm.turn_off_message_logging = True
litellm.redact_messages_in_exceptions = True
litellm.drop_params = True
# Usage and cost are recorded by Allting; LiteLLM's own per-chunk logging and end-of-stream cost
# calculation only add latency (they run for every stream even with no callbacks registered).
litellm.disable_streaming_logging = True

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
    # True when the provider reported nothing and the counts come from LiteLLM's tokenizer.
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


class _PinnedOpenAITransport(httpx2.AsyncHTTPTransport):
    """httpx2 (the OpenAI SDK's HTTP library) counterpart of `egress.GuardedTransport`."""

    def __init__(self, allowed: tuple[egress.IPNetwork, ...]) -> None:
        limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=egress.PinnedNetworkBackend(httpcore2.AnyIOBackend(), allowed),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        egress.check_url_form(str(request.url))
        return await super().handle_async_request(request)


# One OpenAI client per event loop and endpoint: connection pools are bound to the loop that
# opened them, and reusing them keeps TLS handshakes off the time to first token.
_openai_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


def _pinned_openai_client(target: ModelTarget, allowed: tuple[egress.IPNetwork, ...]) -> AsyncOpenAI:
    clients = _openai_clients.setdefault(asyncio.get_running_loop(), {})
    key = (target.api_base, target.api_key, allowed)
    client = clients.get(key)
    if client is None:
        client = AsyncOpenAI(
            api_key=target.api_key or "none",
            base_url=target.api_base,
            organization=target.extra.get("organization"),
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=_PinnedOpenAITransport(allowed), trust_env=False),
        )
        clients[key] = client
    return client


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
        try:
            await egress.check_url_async(target.api_base, allowed_networks=allowed)
        except egress.EgressError as exc:
            raise ProviderEndpointBlocked(detail=exc.reason, model=target.litellm_model) from None
        kwargs["api_base"] = target.api_base
        if kwargs["model"].startswith("openai/"):
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


def map_provider_error(exc: Exception, target: ModelTarget) -> ProviderError:
    """Translate a LiteLLM/OpenAI/network exception into a typed, scrubbed ProviderError."""
    if isinstance(exc, ProviderError):
        return exc
    model = target.litellm_model
    detail = scrub(str(exc), [target.api_key])
    blocked = _egress_cause(exc)
    if blocked is not None:
        return ProviderEndpointBlocked(detail=blocked.reason, model=model)
    lowered = detail.lower()
    if isinstance(exc, litellm.ContextWindowExceededError):
        return ContextTooLong(detail=detail, model=model)
    if isinstance(exc, litellm.AuthenticationError | litellm.PermissionDeniedError):
        return ProviderAuthError(detail=detail, model=model)
    if isinstance(exc, litellm.RateLimitError):
        if "quota" in lowered or "billing" in lowered or "credit" in lowered:
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


def _usage_from(raw: Any) -> Usage | None:
    if raw is None:
        return None
    prompt = getattr(raw, "prompt_tokens", None)
    completion = getattr(raw, "completion_tokens", None)
    if prompt is None and completion is None:
        return None
    return Usage(prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0))


def _estimated_usage(target: ModelTarget, messages: list[dict[str, Any]], text: str) -> Usage:
    model = litellm_model_name(target)
    try:
        prompt = litellm.token_counter(model=model, messages=messages)
        completion = litellm.token_counter(model=model, text=text) if text else 0
    except Exception:  # counting must never fail the call; budgets then see zero, and the log says why
        log.warning("token estimate failed", extra={"model": target.litellm_model})
        return Usage(0, 0, estimated=True)
    return Usage(prompt, completion, estimated=True)


def _text_of(chunk: Any) -> tuple[str, str | None]:
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return "", None
    choice = choices[0]
    delta = getattr(choice, "delta", None)
    return (getattr(delta, "content", None) or ""), getattr(choice, "finish_reason", None)


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
    config = config or GatewayConfig()
    chat_params = _chat_kwargs(params)
    targets = [target, *fallbacks]

    async def open_one(candidate: ModelTarget) -> _OpenedStream:
        return await _with_retries(
            candidate, config.retry, lambda: _open_stream(candidate, messages, chat_params, config, timeout)
        )

    index, opened, failed = await _with_fallbacks(targets, open_one)
    served_by = targets[index]
    stream = opened.stream
    parts: list[str] = []
    usage: Usage | None = None
    finish_reason: str | None = None
    try:
        for chunk in opened.first_chunks:
            usage = _usage_from(getattr(chunk, "usage", None)) or usage
            finish_reason = _text_of(chunk)[1] or finish_reason
        if opened.first_text:
            parts.append(opened.first_text)
            yield TextDelta(opened.first_text)
        while not opened.finished:
            chunk = await _next_chunk(stream, served_by)
            if chunk is None:
                break
            usage = _usage_from(getattr(chunk, "usage", None)) or usage
            text, reason = _text_of(chunk)
            finish_reason = reason or finish_reason
            if text:
                parts.append(text)
                yield TextDelta(text)
    finally:
        # Closing the LiteLLM stream closes the HTTP response: the provider sees the client leave.
        await stream.aclose()
    usage = usage or _estimated_usage(served_by, messages, "".join(parts))
    yield ChatDone(usage, served_by, index, finish_reason, failed)


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
            kwargs = await _call_kwargs(candidate, config, timeout)
            return await litellm.acompletion(messages=messages, stream=False, **kwargs, **chat_params)

        return await _with_retries(candidate, config.retry, once)

    index, response, failed = await _with_fallbacks(targets, call)
    served_by = targets[index]
    choice = response.choices[0]
    text = choice.message.content or ""
    usage = _usage_from(getattr(response, "usage", None)) or _estimated_usage(served_by, messages, text)
    return ChatResult(text, usage, served_by, index, choice.finish_reason, failed)


# ---------------------------------------------------------------------------------------------
# Embeddings and transcription


async def embed(
    target: ModelTarget,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    timeout: float = 60.0,  # noqa: ASYNC109 - per provider request, passed to the HTTP client
    config: GatewayConfig | None = None,
) -> list[list[float]]:
    """Embed `texts` in batches of `batch_size`; vectors come back in input order."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if target.provider_type == "local":
        return await local_embeddings.embed_texts(list(texts), batch_size=batch_size)
    config = config or GatewayConfig()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])

        async def once(batch: list[str] = batch) -> Any:
            kwargs = await _call_kwargs(target, config, timeout)
            return await litellm.aembedding(input=batch, encoding_format="float", **kwargs)

        response = await _with_retries(target, config.retry, once)
        ordered = sorted(response.data, key=lambda item: item["index"])
        vectors.extend(list(item["embedding"]) for item in ordered)
    return vectors


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
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=litellm_model_name(target),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
    except Exception:  # LiteLLM raises a variety of errors for unmapped models
        return None
    return float(prompt_cost) + float(completion_cost)
