"""Chat for OpenAI-protocol providers goes straight through the OpenAI SDK, not LiteLLM.

These tests pin what the fast path must keep from the LiteLLM path: typed, scrubbed errors, the
parameter mapping for reasoning models, usage, cancellation, the outbound guard, Azure's URL shape.
"""

import asyncio
import contextlib
import ipaddress
import re
import socket
import time

import httpx2
import litellm
import openai
import pytest

from allting.ai import gateway
from allting.ai.errors import (
    ContextTooLong,
    ModelNotFound,
    ProviderAuthError,
    ProviderEndpointBlocked,
    ProviderError,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from allting.ai.gateway import (
    ChatDone,
    ModelTarget,
    TextDelta,
    Usage,
    complete_chat,
    estimate_cost,
    map_provider_error,
    stream_chat,
)
from allting.platform import egress
from allting.testing import stub_llm
from allting.testing.stub_llm import StubLLM

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello to the council"},
]


async def _collect(events):
    deltas, done = [], None
    async for event in events:
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert isinstance(event, ChatDone)
            done = event
    return deltas, done


async def _wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


@pytest.fixture
def no_litellm_chat(monkeypatch):
    """Fail the test if a chat call reaches LiteLLM."""

    async def refuse(*args, **kwargs):
        raise AssertionError("the OpenAI-protocol chat path must not call LiteLLM")

    monkeypatch.setattr(litellm, "acompletion", refuse)


# ---------------------------------------------------------------------------------------------
# Routing


@pytest.mark.parametrize(
    ("provider_type", "api_base", "api_version", "fast"),
    [
        ("openai", None, None, True),
        ("openai", "https://proxy.example/v1", None, True),
        ("openai_compatible", "http://10.0.0.5/v1", None, True),
        ("azure", "https://res.openai.azure.com/", "2024-10-21", True),
        ("azure", "https://res.openai.azure.com", None, True),
        ("azure", "https://res.openai.azure.com/openai/v1", "v1", False),
        ("azure", "https://res.services.ai.azure.com/models", "2024-05-01-preview", False),
        ("azure", None, "2024-10-21", False),
        ("anthropic", None, None, False),
        ("mistral", None, None, False),
    ],
)
def test_which_targets_take_the_fast_path(provider_type, api_base, api_version, fast):
    target = ModelTarget(
        litellm_model="m",
        api_base=api_base,
        api_key="k" * 10,
        api_version=api_version,
        provider_type=provider_type,
    )
    assert gateway._uses_openai_sdk(target) is fast


@pytest.mark.parametrize(
    ("provider_type", "api_base", "direct"),
    [
        ("openai_compatible", "http://10.0.0.5/v1", True),
        ("openai", "https://proxy.example/v1", True),
        ("openai", None, False),
        ("azure", "https://res.openai.azure.com/", False),
        ("anthropic", None, False),
    ],
)
def test_which_chats_and_embeddings_skip_the_sdk_and_litellm(provider_type, api_base, direct):
    target = ModelTarget(
        litellm_model="m",
        api_base=api_base,
        api_key="k" * 10,
        api_version="2024-10-21",
        provider_type=provider_type,
    )
    assert gateway._sent_directly(target) is direct


async def test_streaming_and_non_streaming_skip_litellm(stub, target, config, no_litellm_chat):
    stub.script(answer="Hej kommunen.")
    deltas, done = await _collect(stream_chat(target, MESSAGES, config=config))
    assert "".join(deltas) == "Hej kommunen." and not done.usage.estimated
    result = await complete_chat(target, MESSAGES, config=config)
    assert result.text == "Hej kommunen." and result.finish_reason == "stop"
    assert [request.path for request in stub.requests] == ["/v1/chat/completions"] * 2


# ---------------------------------------------------------------------------------------------
# Errors through the stub, while streaming (complete_chat is covered in test_gateway_chat.py)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (401, ProviderAuthError),
        ("insufficient_quota", ProviderQuotaError),
        ("model_not_found", ModelNotFound),
        ("context_length_exceeded", ContextTooLong),
    ],
)
async def test_streaming_errors_are_typed_and_not_retried(stub, target, config, planted_key, error, expected):
    stub.script(error=error, echo_key_in_error=True)
    with pytest.raises(expected) as raised:
        await _collect(stream_chat(target, MESSAGES, config=config))
    assert raised.value.code == expected.code
    assert planted_key not in str(raised.value) and planted_key not in raised.value.detail
    assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert len(stub.requests) == 1


async def test_error_event_in_the_middle_of_a_stream_is_typed_after_the_partial_text(stub, target, config):
    stub.script(answer="ett två tre fyra", error="error_event_mid_stream")
    deltas = []
    with pytest.raises(ContextTooLong):
        async for event in stream_chat(target, MESSAGES, config=config):
            deltas.append(event.text)
    assert "".join(deltas) == "ett två "
    assert len(stub.requests) == 1


async def test_streaming_rate_limit_with_retry_after(stub, target, config):
    stub.script(error=429, retry_after=7)
    with pytest.raises(ProviderRateLimited) as limited:
        await _collect(stream_chat(target, MESSAGES, config=config))
    assert limited.value.retry_after == 7
    assert len(stub.requests) == 1


async def test_unreachable_endpoint_is_unavailable_after_retries(config):
    # A port nobody listens on: connection refused on every attempt.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = ModelTarget(
        litellm_model="stub-chat",
        api_base=f"http://127.0.0.1:{port}/v1",
        api_key="sk-unused-key-123456",
        provider_type="openai_compatible",
    )
    with pytest.raises(ProviderUnavailable):
        await _collect(stream_chat(target, MESSAGES, config=config))


# ---------------------------------------------------------------------------------------------
# Error mapping of OpenAI SDK exceptions (shapes the stub cannot produce)

KEY = "sk-fastpath-Zq8Xv3Lm0Pt7Rw2Ny5Kb"
TARGET = ModelTarget(
    litellm_model="m", api_base="http://10.0.0.5/v1", api_key=KEY, provider_type="openai_compatible"
)
_REQUEST = httpx2.Request("POST", "http://10.0.0.5/v1/chat/completions")


def _status_error(cls, status, *, code=None, message="failure", headers=None):
    body = {"message": message, "type": "error", "param": None, "code": code}
    response = httpx2.Response(status, request=_REQUEST, headers=headers or {}, json={"error": body})
    return cls(f"Error code: {status} - {{'error': {body}}}", response=response, body=body)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (openai.APITimeoutError(request=_REQUEST), ProviderUnavailable),
        (openai.APIConnectionError(request=_REQUEST), ProviderUnavailable),
        (_status_error(openai.InternalServerError, 502), ProviderUnavailable),
        (_status_error(openai.InternalServerError, 503), ProviderUnavailable),
        (_status_error(openai.APIStatusError, 408), ProviderUnavailable),
        (_status_error(openai.AuthenticationError, 401, code="invalid_api_key"), ProviderAuthError),
        (_status_error(openai.PermissionDeniedError, 403), ProviderAuthError),
        (_status_error(openai.RateLimitError, 429, code="insufficient_quota"), ProviderQuotaError),
        (
            _status_error(openai.RateLimitError, 429, message="You exceeded your current quota"),
            ProviderQuotaError,
        ),
        (_status_error(openai.RateLimitError, 429, code="rate_limit_exceeded"), ProviderRateLimited),
        (_status_error(openai.NotFoundError, 404, code="DeploymentNotFound"), ModelNotFound),
        (_status_error(openai.NotFoundError, 404), ModelNotFound),
        (_status_error(openai.BadRequestError, 400, code="context_length_exceeded"), ContextTooLong),
        (
            # vLLM says it in words only
            _status_error(
                openai.BadRequestError,
                400,
                message="This model's maximum context length is 4096 tokens. However, you requested 5000",
            ),
            ContextTooLong,
        ),
        (_status_error(openai.BadRequestError, 400, code="invalid_value"), ProviderError),
        (_status_error(openai.UnprocessableEntityError, 422), ProviderError),
        # An error event inside an SSE stream carries no status, only the body.
        (
            openai.APIError("quota", _REQUEST, body={"code": "insufficient_quota", "message": "quota"}),
            ProviderQuotaError,
        ),
        (openai.APIError("oops", _REQUEST, body={"message": "oops"}), ProviderError),
    ],
)
def test_openai_sdk_errors_map_to_typed_errors(exc, expected):
    error = map_provider_error(exc, TARGET)
    assert type(error) is expected
    assert error.model == "m"


def test_bad_request_is_a_bad_request_code():
    error = map_provider_error(_status_error(openai.BadRequestError, 400, code="invalid_value"), TARGET)
    assert error.code == "bad_request"


def test_retry_after_is_read_from_the_sdk_response():
    exc = _status_error(openai.RateLimitError, 429, headers={"retry-after-ms": "1500"})
    error = map_provider_error(exc, TARGET)
    assert isinstance(error, ProviderRateLimited) and error.retry_after == 1.5


def test_sdk_error_texts_are_scrubbed():
    exc = _status_error(openai.AuthenticationError, 401, message=f"Incorrect API key provided: {KEY}")
    error = map_provider_error(exc, TARGET)
    assert KEY not in str(error) and KEY not in error.detail and "[redacted]" in error.detail


def test_guard_refusal_inside_an_sdk_connection_error_is_endpoint_blocked():
    try:
        try:
            raise egress.EgressBlocked("host 10.0.0.5 is a private address")
        except egress.EgressBlocked as inner:
            raise openai.APIConnectionError(request=_REQUEST) from inner
    except openai.APIConnectionError as exc:
        error = map_provider_error(exc, TARGET)
    assert isinstance(error, ProviderEndpointBlocked) and "10.0.0.5" in error.detail


def test_litellm_errors_still_map_as_before():
    exc = litellm.ContextWindowExceededError(message="too long", model="m", llm_provider="anthropic")
    assert isinstance(map_provider_error(exc, TARGET), ContextTooLong)
    exc = litellm.RateLimitError(message="slow down", model="m", llm_provider="anthropic")
    assert isinstance(map_provider_error(exc, TARGET), ProviderRateLimited)


# ---------------------------------------------------------------------------------------------
# Cancellation


async def test_cancelling_before_the_first_token_reaches_the_provider(stub, target, config):
    # The first text comes after 1 s: cancel while the gateway is still waiting for it.
    stub.script(chunks=["late ", "text"], delay_per_token=1.0)
    task = asyncio.create_task(_collect(stream_chat(target, MESSAGES, config=config)))
    assert await _wait_for(lambda: stub.active_streams == 1, 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await _wait_for(lambda: stub.cancelled_streams == 1, 2), "stub never saw the disconnect"
    assert stub.completed_streams == 0


async def test_many_cancelled_streams_are_all_closed(stub, target, config):
    stub.script(answer="ord " * 400, delay_per_token=0.02)
    first = asyncio.Event()

    async def consume():
        async for event in stream_chat(target, MESSAGES, config=config):
            if isinstance(event, TextDelta):
                first.set()

    tasks = [asyncio.create_task(consume()) for _ in range(10)]
    assert await _wait_for(lambda: stub.active_streams == 10, 5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert await _wait_for(lambda: stub.cancelled_streams == 10, 2)
    assert stub.active_streams == 0


# ---------------------------------------------------------------------------------------------
# Request shape: parameters, extra headers and body, organization


@pytest.mark.parametrize("streamed", [True, False])
async def test_reasoning_model_parameters_are_mapped_like_litellm(
    stub, config, make_target, no_litellm_chat, streamed
):
    target = make_target(stub, model="o3-mini")
    params = {"max_tokens": 50, "temperature": 0.3, "reasoning_effort": "low"}
    if streamed:
        await _collect(stream_chat(target, MESSAGES, params=params, config=config))
    else:
        await complete_chat(target, MESSAGES, params=params, config=config)
    sent = stub.requests[0].json
    assert sent["max_completion_tokens"] == 50 and sent["reasoning_effort"] == "low"
    assert "max_tokens" not in sent and "temperature" not in sent


async def test_plain_parameters_pass_through(stub, target, config):
    params = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 30, "stop": ["\n\n"], "seed": 7}
    await _collect(stream_chat(target, MESSAGES, params=params, config=config))
    sent = stub.requests[0].json
    assert {name: sent[name] for name in params} == params
    assert sent["messages"] == MESSAGES


@pytest.mark.parametrize("streamed", [True, False])
async def test_extra_headers_body_and_organization_reach_the_provider(stub, config, routing, streamed):
    target = routing.target(stub, "stub-chat", {"chat_template_kwargs": {"enable_thinking": False}})
    if streamed:
        await _collect(stream_chat(target, MESSAGES, config=config))
    else:
        await complete_chat(target, MESSAGES, config=config)
    (request,) = stub.requests
    assert routing.headers.items() <= request.headers.items()
    assert request.json["chat_template_kwargs"] == {"enable_thinking": False}


async def test_unknown_parameters_are_still_refused_before_any_request(stub, target, config):
    with pytest.raises(ValueError, match="client"):
        await _collect(stream_chat(target, MESSAGES, params={"client": object()}, config=config))
    assert stub.requests == []


# ---------------------------------------------------------------------------------------------
# Clients, outbound guard


async def test_clients_are_cached_per_endpoint_and_key(stub, target, config, make_target):
    allowed = gateway._allowed_networks(config)
    assert gateway._pinned_openai_client(target, allowed) is gateway._pinned_openai_client(target, allowed)
    other_key = ModelTarget(
        litellm_model="stub-chat",
        api_base=stub.url,
        api_key="sk-other-key-12345",
        provider_type="openai_compatible",
    )
    assert gateway._pinned_openai_client(other_key, allowed) is not gateway._pinned_openai_client(
        target, allowed
    )


async def test_openai_default_endpoint_uses_a_cached_client(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    target = ModelTarget(litellm_model="gpt-4o-mini", api_key="sk-default-endpoint-123")
    client = gateway._default_openai_client(target)
    assert client is gateway._default_openai_client(target)
    assert str(client.base_url) == "https://api.openai.com/v1/"


async def test_openai_default_endpoint_without_any_key_is_an_auth_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderAuthError):
        await complete_chat(ModelTarget(litellm_model="gpt-4o-mini"), MESSAGES)


async def test_endpoint_check_is_cached_but_new_connections_are_still_checked(stub, config, monkeypatch):
    lookups = []
    answer = [ipaddress.ip_address("127.0.0.1")]

    def resolve(host, port):
        lookups.append(host)
        return list(answer)

    monkeypatch.setattr(egress, "resolve_host", resolve)
    base = f"http://cached.tenant.example:{stub.port}/v1"

    def target_with(key):
        return ModelTarget(
            litellm_model="stub-chat", api_base=base, api_key=key, provider_type="openai_compatible"
        )

    first = target_with("sk-first-key-1234567")
    await complete_chat(first, MESSAGES, config=config)
    assert len(lookups) == 2  # the pre-check and the pinned connection
    await complete_chat(first, MESSAGES, config=config)
    assert len(lookups) == 2  # cached pre-check, reused connection: no DNS on the call path

    # The name now points inside the network. A new connection (another key has its own client)
    # is checked at connect time even though the pre-check is still cached.
    answer[:] = [ipaddress.ip_address("10.0.0.1")]
    with pytest.raises(ProviderEndpointBlocked) as blocked:
        await complete_chat(target_with("sk-second-key-123456"), MESSAGES, config=config)
    assert "10.0.0.1" in blocked.value.detail
    assert len(stub.requests) == 2


# ---------------------------------------------------------------------------------------------
# Azure OpenAI through AsyncAzureOpenAI


@pytest.fixture
def azure_stub(monkeypatch):
    """The stub behind Azure's URL shape: /openai/deployments/{deployment}/chat/completions (or
    /embeddings)."""
    seen = []
    real_create_app = stub_llm.create_app

    def create_app(state):
        app = real_create_app(state)

        async def azure_app(scope, receive, send):
            if scope["type"] == "http":
                match = re.fullmatch(
                    r"/openai/deployments/([^/]+)(/chat/completions|/embeddings)", scope["path"]
                )
                headers = {k.decode(): v.decode() for k, v in scope["headers"]}
                seen.append((scope["path"], scope["query_string"].decode(), headers))
                if match:
                    path = "/v1" + match.group(2)
                    scope = {**scope, "path": path, "raw_path": path.encode()}
            await app(scope, receive, send)

        return azure_app

    monkeypatch.setattr(stub_llm, "create_app", create_app)
    with StubLLM() as server:
        server.seen = seen
        yield server


def _azure_target(server, deployment: str, key: str) -> ModelTarget:
    return ModelTarget(
        litellm_model=deployment,
        api_base=f"http://127.0.0.1:{server.port}/",
        api_key=key,
        api_version="2024-10-21",
        provider_type="azure",
    )


async def test_azure_chat_goes_to_the_deployment_with_api_version(
    azure_stub, config, planted_key, no_litellm_chat
):
    azure_stub.script(answer="Hej från Azure.")
    target = _azure_target(azure_stub, "gpt4o-prod", planted_key)
    deltas, done = await _collect(stream_chat(target, MESSAGES, config=config))
    assert "".join(deltas) == "Hej från Azure." and done.served_by is target
    result = await complete_chat(target, MESSAGES, config=config)
    assert result.text == "Hej från Azure."
    for path, query, headers in azure_stub.seen:
        assert path == "/openai/deployments/gpt4o-prod/chat/completions"
        assert query == "api-version=2024-10-21"
        assert headers["api-key"] == planted_key
        assert "authorization" not in headers
    assert azure_stub.requests[0].json["model"] == "gpt4o-prod"


async def test_azure_embeddings_go_to_the_deployment_without_litellm(
    azure_stub, config, planted_key, monkeypatch
):
    async def refuse(*args, **kwargs):
        raise AssertionError("Azure embeddings must not go through LiteLLM")

    monkeypatch.setattr(litellm, "aembedding", refuse)
    target = _azure_target(azure_stub, "embed-prod", planted_key)
    texts = ["Bygglov för altan", "Parkeringstillstånd"]
    vectors = await gateway.embed(target, texts, config=config)
    assert vectors == [pytest.approx(stub_llm.deterministic_embedding(text, 384)) for text in texts]
    ((path, query, headers),) = azure_stub.seen
    assert path == "/openai/deployments/embed-prod/embeddings" and query == "api-version=2024-10-21"
    assert headers["api-key"] == planted_key
    assert azure_stub.requests[0].json == {"model": "embed-prod", "input": texts, "encoding_format": "float"}


async def test_azure_errors_are_typed(azure_stub, config, planted_key):
    azure_stub.script(error=401, echo_key_in_error=True)
    target = _azure_target(azure_stub, "gpt4o-prod", planted_key)
    with pytest.raises(ProviderAuthError) as refused:
        await complete_chat(target, MESSAGES, config=config)
    assert planted_key not in str(refused.value)


# ---------------------------------------------------------------------------------------------
# Usage estimate and cost


def test_usage_estimate_is_cheap_and_flagged():
    messages = [
        {"role": "system", "content": "x" * 40},
        {
            "role": "user",
            "content": [{"type": "text", "text": "y" * 8}, {"type": "image_url", "image_url": {}}],
        },
    ]
    usage = gateway._estimated_usage(messages, "z" * 21)
    assert usage.estimated
    assert usage.prompt_tokens == 3 + (4 + 10) + (4 + 2 + 85)
    assert usage.completion_tokens == 6


def test_cost_lookup_is_cached_per_model(monkeypatch):
    gateway._token_prices.cache_clear()
    calls = []
    real = litellm.cost_per_token

    def counting(**kwargs):
        calls.append(kwargs["model"])
        return real(**kwargs)

    monkeypatch.setattr(litellm, "cost_per_token", counting)
    target = ModelTarget(litellm_model="gpt-4o-mini")
    first = estimate_cost(target, Usage(1_000_000, 1_000_000))
    looked_up = len(calls)
    for _ in range(5):
        assert estimate_cost(target, Usage(1_000_000, 1_000_000)) == first
    assert len(calls) == looked_up
    assert first == pytest.approx(0.75)
    assert estimate_cost(target, Usage(2000, 1000)) == pytest.approx(2000 * 0.15e-6 + 1000 * 0.6e-6)


def test_tiered_prices_are_computed_exactly():
    gateway._token_prices.cache_clear()
    assert gateway._token_prices("gemini/gemini-2.5-pro") == gateway._EXACT
    assert gateway._token_prices("openai/no-such-model-anywhere") is None


# ---------------------------------------------------------------------------------------------
# The fast path's SSE decoding


async def _decoded(parts, *, error_after=None):
    async def body():
        for index, part in enumerate(parts):
            if index == error_after:
                raise httpx2.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            yield part

    response = httpx2.Response(200, request=_REQUEST, content=body())
    stream = gateway._JSONChunkStream(cast_to=object, response=response, client=None)
    chunks = [chunk async for chunk in stream]
    assert response.is_closed
    return chunks


SSE = (
    b": keep-alive comment\n\n"
    b'data: {"choices": [{"delta": {"content": "Hej"}}]}\n\n'
    b'event: message\nid: 7\ndata: {"choices": [{"delta": {"content": " du"}}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = [
    {"choices": [{"delta": {"content": "Hej"}}]},
    {"choices": [{"delta": {"content": " du"}}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
]


async def test_sse_events_are_decoded_whatever_the_read_boundaries():
    assert await _decoded([SSE[i : i + 1] for i in range(len(SSE))]) == EXPECTED
    crlf = SSE.replace(b"\n", b"\r\n")
    assert await _decoded([crlf[i : i + 7] for i in range(0, len(crlf), 7)]) == EXPECTED


async def test_text_deltas_that_arrive_together_are_passed_on_as_one():
    merged = [{"choices": [{"delta": {"content": "Hej du"}}]}, EXPECTED[2]]
    assert await _decoded([SSE]) == merged


async def test_only_plain_text_deltas_are_merged():
    role = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
    text = b'data: {"choices": [{"index": 0, "delta": {"content": "Ja"}, "finish_reason": null}]}\n\n'
    finish = b'data: {"choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": "stop"}]}\n\n'
    tool = b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}\n\n'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
    chunks = await _decoded([role + text + text + finish + tool + text + usage + b"data: [DONE]\n\n"])
    texts = [gateway._text_of(chunk) for chunk in chunks]
    assert texts == [("JaJa", None), (".", "stop"), ("", None), ("Ja", None), ("", None)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2}


async def test_sse_decoding_stops_at_done_and_ignores_what_follows():
    assert await _decoded([b'data: {"n": 1}\n\ndata: [DONE]\n\ndata: {"n": 2}\n\n']) == [{"n": 1}]


async def test_sse_event_without_final_blank_line_is_still_delivered():
    assert await _decoded([b'data: {"n": 1}\n\ndata: {"n": 2}']) == [{"n": 1}, {"n": 2}]


async def test_error_event_in_the_stream_is_an_sdk_error_and_maps_to_a_typed_error():
    parts = [
        b'data: {"choices": [{"delta": {"content": "Hej"}}]}\n\n',
        b'data: {"error": {"message": "too long", "code": "context_length_exceeded"}}\n\n',
    ]
    with pytest.raises(openai.APIError) as raised:
        await _decoded(parts)
    assert raised.value.code == "context_length_exceeded"
    assert isinstance(map_provider_error(raised.value, TARGET), ContextTooLong)


async def test_broken_body_is_a_connection_error_and_maps_to_unavailable():
    with pytest.raises(openai.APIConnectionError) as raised:
        await _decoded([b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n'], error_after=1)
    assert isinstance(map_provider_error(raised.value, TARGET), ProviderUnavailable)


async def test_pinned_transport_refuses_an_internal_ip_literal_without_connecting():
    # aiohttp never hands IP literals to the resolver, so the transport checks them itself; a
    # cached endpoint pre-check must not be the only guard.
    transport = gateway._PinnedAiohttpTransport(allowed=())
    try:
        request = httpx2.Request("POST", "http://10.0.0.1:9/v1/chat/completions", content=b"{}")
        with pytest.raises(httpx2.ConnectError) as refused:
            await transport.handle_async_request(request)
        assert isinstance(refused.value.__cause__, egress.EgressBlocked)
        assert "10.0.0.1" in str(refused.value)
    finally:
        await transport.aclose()
