import asyncio
import contextlib
import ipaddress
import logging
import time

import pytest

from allting.ai.errors import (
    ContextTooLong,
    ModelNotFound,
    ProviderAuthError,
    ProviderEndpointBlocked,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from allting.ai.gateway import ChatDone, GatewayConfig, ModelTarget, TextDelta, complete_chat, stream_chat
from allting.platform import egress

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


async def test_stream_yields_deltas_then_usage_and_serving_target(stub, target, config, planted_key):
    stub.script(answer="Hej kommunen, här är svaret.", delay_per_token=0.02)
    deltas, done = await _collect(stream_chat(target, MESSAGES, params={"temperature": 0.2}, config=config))
    assert "".join(deltas) == "Hej kommunen, här är svaret."
    assert len(deltas) == 5  # one event per provider chunk as it arrives: the stream is not buffered
    assert done.usage.prompt_tokens == 7 and done.usage.completion_tokens == 5
    assert not done.usage.estimated
    assert done.served_by is target and not done.fallback_used
    assert done.finish_reason == "stop"
    (request,) = stub.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {planted_key}"
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}
    assert request.json["model"] == "stub-chat"
    assert request.json["temperature"] == 0.2


async def test_non_streaming_completion(stub, target, config):
    stub.script(answer="Ett kort svar.")
    result = await complete_chat(target, MESSAGES, config=config)
    assert result.text == "Ett kort svar."
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (7, 3)
    assert result.served_by is target and result.served_by_index == 0
    (request,) = stub.requests
    assert not request.json.get("stream")


async def test_hosted_vllm_spelling_goes_through_the_same_path(stub, config, make_target):
    target = make_target(stub, model="hosted_vllm/stub-chat")
    result = await complete_chat(target, MESSAGES, config=config)
    assert result.text
    assert stub.requests[0].json["model"] == "stub-chat"


async def test_unknown_chat_parameters_are_refused(target, config):
    with pytest.raises(ValueError, match="api_base"):
        await complete_chat(target, MESSAGES, params={"api_base": "http://evil.example/v1"}, config=config)


async def test_planted_key_never_reaches_messages_or_logs(stub, target, config, caplog, planted_key):
    stub.script(error=401, echo_key_in_error=True)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ProviderAuthError) as refused:
        await complete_chat(target, MESSAGES, config=config)
    error = refused.value
    # The stub did echo it: without scrubbing it would be in the detail.
    assert "Incorrect API key provided" in error.detail
    for text in (str(error), error.message, error.detail, repr(error), repr(target)):
        assert planted_key not in text
    assert error.__cause__ is None and error.__context__ is None
    assert planted_key not in caplog.text
    assert all(planted_key not in str(record.__dict__) for record in caplog.records)
    assert len(stub.requests) == 1  # a refused key is not retried


async def test_auth_error_while_streaming_is_scrubbed_too(stub, target, config, caplog, planted_key):
    stub.script(error=401, echo_key_in_error=True)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ProviderAuthError) as refused:
        await _collect(stream_chat(target, MESSAGES, config=config))
    assert planted_key not in str(refused.value)
    assert planted_key not in caplog.text


async def test_rate_limit_reports_retry_after(stub, target, config):
    stub.script(error=429, retry_after=7)
    with pytest.raises(ProviderRateLimited) as limited:
        await complete_chat(target, MESSAGES, config=config)
    assert limited.value.retry_after == 7
    # 7 s is above the policy's cap of 1 s: no point waiting, so only one request was made.
    assert len(stub.requests) == 1


async def test_short_retry_after_is_honoured_and_retried(stub, target, config):
    stub.script(error=429, retry_after=0.3, error_times=1)
    started = time.monotonic()
    result = await complete_chat(target, MESSAGES, config=config)
    assert result.text
    assert time.monotonic() - started >= 0.3
    assert len(stub.requests) == 2


async def test_server_error_is_retried_then_unavailable(stub, target, config):
    stub.script(error=500)
    with pytest.raises(ProviderUnavailable):
        await _collect(stream_chat(target, MESSAGES, config=config))
    assert len(stub.requests) == config.retry.max_attempts


async def test_transient_server_error_recovers_before_first_token(stub, target, config):
    stub.script(error=503, error_times=2, answer="Till slut.")
    deltas, done = await _collect(stream_chat(target, MESSAGES, config=config))
    assert "".join(deltas) == "Till slut."
    assert len(stub.requests) == 3
    assert not done.fallback_used


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("insufficient_quota", ProviderQuotaError),
        ("model_not_found", ModelNotFound),
        ("context_length_exceeded", ContextTooLong),
    ],
)
async def test_provider_errors_are_typed(stub, target, config, error, expected):
    stub.script(error=error)
    with pytest.raises(expected) as raised:
        await complete_chat(target, MESSAGES, config=config)
    assert raised.value.code == expected.code
    assert raised.value.message == expected.default_message


async def test_disconnect_mid_stream_raises_after_partial_text(stub, target, config):
    stub.script(answer="one two three four five six seven eight", error="disconnect_mid_stream")
    received = []
    with pytest.raises(ProviderUnavailable) as interrupted:
        async for event in stream_chat(target, MESSAGES, config=config):
            received.append(event)
    assert interrupted.value.code == "stream_interrupted"
    text = "".join(event.text for event in received)
    assert text == "one two three four "
    # Once text has reached the caller, a retry would repeat it: exactly one request.
    assert len(stub.requests) == 1


async def test_fallback_serves_when_primary_is_down(stub, fallback_stub, config, make_target):
    stub.script(error=503)
    fallback_stub.script(answer="Reservmodellen svarar.")
    primary, backup = make_target(stub), make_target(fallback_stub, model="backup-chat")
    deltas, done = await _collect(stream_chat(primary, MESSAGES, fallbacks=[backup], config=config))
    assert "".join(deltas) == "Reservmodellen svarar."
    assert done.served_by is backup and done.served_by_index == 1 and done.fallback_used
    assert done.failed == ("provider_unavailable",)
    assert len(stub.requests) == config.retry.max_attempts
    assert fallback_stub.requests[0].json["model"] == "backup-chat"


async def test_fallback_on_rate_limit_for_complete_chat(stub, fallback_stub, config, make_target):
    stub.script(error=429, retry_after=30)
    primary, backup = make_target(stub), make_target(fallback_stub)
    result = await complete_chat(primary, MESSAGES, fallbacks=[backup], config=config)
    assert result.served_by is backup and result.failed == ("provider_rate_limited",)


async def test_no_fallback_on_a_bad_key(stub, fallback_stub, config, make_target):
    stub.script(error=401)
    with pytest.raises(ProviderAuthError):
        await complete_chat(
            make_target(stub), MESSAGES, fallbacks=[make_target(fallback_stub)], config=config
        )
    assert fallback_stub.requests == []


async def _wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def test_cancelling_the_consumer_task_reaches_the_provider(stub, target, config):
    stub.script(answer="ord " * 400, delay_per_token=0.05)
    first_text = asyncio.Event()

    async def consume():
        async for event in stream_chat(target, MESSAGES, config=config):
            if isinstance(event, TextDelta):
                first_text.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_text.wait(), 5)
    assert stub.active_streams == 1
    cancelled_at = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await _wait_for(lambda: stub.cancelled_streams == 1, 2), "stub never saw the disconnect"
    assert time.monotonic() - cancelled_at < 2
    assert stub.active_streams == 0 and stub.completed_streams == 0


async def test_stopping_iteration_early_reaches_the_provider(stub, target, config):
    stub.script(answer="ord " * 400, delay_per_token=0.05)
    async with contextlib.aclosing(stream_chat(target, MESSAGES, config=config)) as events:
        async for _ in events:
            break
    assert await _wait_for(lambda: stub.cancelled_streams == 1, 2)


async def test_loopback_endpoint_is_refused_unless_allowed(stub, target):
    with pytest.raises(ProviderEndpointBlocked) as blocked:
        await complete_chat(target, MESSAGES, config=GatewayConfig(allowed_networks=""))
    assert "127.0.0.1" in blocked.value.detail
    assert stub.requests == []


async def test_metadata_endpoint_is_refused_before_any_request(planted_key):
    target = ModelTarget(
        litellm_model="x",
        api_base="http://169.254.169.254/v1",
        api_key=planted_key,
        provider_type="openai_compatible",
    )
    with pytest.raises(ProviderEndpointBlocked):
        await complete_chat(target, MESSAGES, config=GatewayConfig(allowed_networks=""))


def test_model_target_never_shows_its_key(planted_key):
    target = ModelTarget(litellm_model="gpt-4o", api_key=planted_key)
    assert planted_key not in repr(target) and planted_key not in str(target)


def test_model_target_refuses_extra_that_could_redirect_the_call():
    with pytest.raises(ValueError, match="api_base"):
        ModelTarget(litellm_model="gpt-4o", extra={"api_base": "http://evil.example"})


async def test_tenant_endpoint_is_connected_through_the_checked_address(
    stub, config, monkeypatch, planted_key
):
    # The name exists nowhere in DNS: the call can only succeed through the guard's resolver, and
    # the provider still sees the name in the Host header (as TLS would in SNI).
    monkeypatch.setattr(egress, "resolve_host", lambda host, port: [ipaddress.ip_address("127.0.0.1")])
    target = ModelTarget(
        litellm_model="stub-chat",
        api_base=f"http://llm.tenant.example:{stub.port}/v1",
        api_key=planted_key,
        provider_type="openai_compatible",
    )
    result = await complete_chat(target, MESSAGES, config=config)
    assert result.text
    assert stub.requests[0].headers["host"] == f"llm.tenant.example:{stub.port}"


async def test_endpoint_rebinding_to_a_private_address_is_refused_at_connect(
    stub, config, monkeypatch, planted_key
):
    answers = iter([[ipaddress.ip_address("127.0.0.1")]] + [[ipaddress.ip_address("10.0.0.1")]] * 20)
    monkeypatch.setattr(egress, "resolve_host", lambda host, port: next(answers))
    target = ModelTarget(
        litellm_model="stub-chat",
        api_base=f"http://rebind.tenant.example:{stub.port}/v1",
        api_key=planted_key,
        provider_type="openai_compatible",
    )
    with pytest.raises(ProviderEndpointBlocked) as blocked:
        await complete_chat(target, MESSAGES, config=config)
    assert "10.0.0.1" in blocked.value.detail
    assert stub.requests == []
