import litellm
import pytest

from allting.ai.errors import (
    ProviderAuthError,
    ProviderEndpointBlocked,
    ProviderError,
    ProviderUnavailable,
)
from allting.ai.gateway import (
    GatewayConfig,
    ModelTarget,
    PriceOverride,
    Usage,
    embed,
    estimate_cost,
    transcribe,
)
from allting.testing.stub_llm import deterministic_embedding

TEXTS = [f"Paragraph {n} of the municipal guideline." for n in range(5)]


async def test_embeddings_are_batched_and_in_input_order(stub, config, make_target):
    target = make_target(stub, model="stub-embed")
    vectors = await embed(target, TEXTS, batch_size=2, config=config)
    for vector, text in zip(vectors, TEXTS, strict=True):
        assert vector == pytest.approx(deterministic_embedding(text, 384))
    batches = sorted(request.json["input"] for request in stub.requests)  # sent side by side
    assert batches == [TEXTS[0:2], TEXTS[2:4], TEXTS[4:5]]


async def test_a_provider_gets_a_few_batches_at_once_and_the_vectors_stay_in_order(stub, config, make_target):
    from allting.ai.gateway import EMBED_BATCHES_AT_ONCE

    stub.script(embedding_delay=0.2)
    texts = [f"Passage {n} of the building permit guide." for n in range(10)]
    vectors = await embed(make_target(stub, model="stub-embed"), texts, batch_size=1, config=config)
    assert vectors == [pytest.approx(deterministic_embedding(text, 384)) for text in texts]
    assert stub.most_embeddings_at_once == EMBED_BATCHES_AT_ONCE


async def test_when_one_batch_fails_the_others_stop_and_the_error_is_the_callers(stub, config, make_target):
    stub.script(error=401)
    with pytest.raises(ProviderAuthError):
        await embed(make_target(stub, model="stub-embed"), TEXTS, batch_size=1, config=config)


async def test_embedding_dimensions_follow_the_provider(stub, config, make_target):
    stub.script(embedding_dimensions=1024)
    vectors = await embed(make_target(stub, model="stub-embed"), ["one"], config=config)
    assert len(vectors[0]) == 1024


async def test_embedding_batch_is_retried_on_server_error(stub, config, make_target):
    stub.script(error=500, error_times=1)
    vectors = await embed(make_target(stub, model="stub-embed"), TEXTS[:3], batch_size=3, config=config)
    assert len(vectors) == 3
    assert len(stub.requests) == 2


async def test_embedding_errors_are_typed_and_scrubbed(stub, config, make_target, planted_key):
    stub.script(error=401, echo_key_in_error=True)
    with pytest.raises(ProviderAuthError) as refused:
        await embed(make_target(stub, model="stub-embed"), ["x"], config=config)
    assert planted_key not in str(refused.value)


async def test_openai_protocol_embeddings_are_sent_as_the_protocol_says_without_litellm(
    stub, config, routing, monkeypatch
):
    async def refuse(*args, **kwargs):
        raise AssertionError("embeddings from an OpenAI-protocol endpoint must not go through LiteLLM")

    monkeypatch.setattr(litellm, "aembedding", refuse)
    target = routing.target(stub, "stub-embed", {"truncate_prompt_tokens": 256})
    vectors = await embed(target, TEXTS[:2], config=config)
    assert vectors == [pytest.approx(deterministic_embedding(text, 384)) for text in TEXTS[:2]]
    (request,) = stub.requests
    assert request.path == "/v1/embeddings"
    assert request.json == {
        "model": "stub-embed",
        "input": TEXTS[:2],
        "encoding_format": "float",
        "truncate_prompt_tokens": 256,
    }
    assert routing.headers.items() <= request.headers.items()


async def test_an_answer_without_one_embedding_per_text_is_refused(stub, config, make_target):
    stub.script(embeddings_missing=1)
    with pytest.raises(ProviderError) as refused:
        await embed(make_target(stub, model="stub-embed"), TEXTS[:3], config=config)
    assert refused.value.code == "bad_response"
    assert len(stub.requests) == 1  # the same request would get the same answer: no retry


async def test_an_answer_larger_than_the_texts_embeddings_can_be_is_not_read_whole(
    stub, config, make_target, monkeypatch
):
    from allting.ai import gateway

    assert len(await embed(make_target(stub, model="stub-embed"), TEXTS[:2], config=config)) == 2
    # The stub's 384 numbers a text take about 8 kB.
    monkeypatch.setattr(gateway, "_embeddings_body_limit", lambda texts: texts * 1_000)
    with pytest.raises(ProviderError) as refused:
        await embed(make_target(stub, model="stub-embed"), TEXTS[:2], config=config)
    assert refused.value.code == "bad_response"


async def test_embedding_endpoint_the_outbound_guard_refuses_is_never_called(stub, make_target):
    with pytest.raises(ProviderEndpointBlocked) as blocked:
        await embed(make_target(stub, model="stub-embed"), ["x"], config=GatewayConfig(allowed_networks=""))
    assert "127.0.0.1" in blocked.value.detail
    assert stub.requests == []


async def test_embedding_endpoint_that_does_not_answer_is_unavailable(config, make_target, planted_key):
    class Closed:
        url = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there

    with pytest.raises(ProviderUnavailable) as failed:
        await embed(make_target(Closed, model="stub-embed"), ["x"], config=config)
    assert planted_key not in str(failed.value)


async def test_transcription_returns_the_text_and_sends_the_file(stub, config, make_target, planted_key):
    stub.script(transcript="Mötet öppnades klockan nio.")
    target = make_target(stub, model="stub-whisper")
    text = await transcribe(
        target, b"RIFF\x00\x00\x00\x00WAVEfmt ", "meeting.wav", language="sv", config=config
    )
    assert text == "Mötet öppnades klockan nio."
    (request,) = stub.requests
    assert request.path == "/v1/audio/transcriptions"
    assert request.form["file"] == {"filename": "meeting.wav", "size": 16}
    assert request.form["language"] == "sv"
    assert request.headers["authorization"] == f"Bearer {planted_key}"


async def test_transcription_unavailable_after_retries(stub, config, make_target):
    stub.script(error=502)
    with pytest.raises(ProviderUnavailable):
        await transcribe(make_target(stub, model="stub-whisper"), b"abc", "a.mp3", config=config)
    assert len(stub.requests) == config.retry.max_attempts


def test_cost_from_the_bundled_price_table():
    cost = estimate_cost(ModelTarget(litellm_model="gpt-4o-mini"), Usage(1_000_000, 1_000_000))
    # Bundled table prices gpt-4o-mini at 0.15 USD input and 0.60 USD output per million tokens.
    assert cost == pytest.approx(0.75)


def test_cost_override_wins_and_unknown_models_have_no_cost():
    self_hosted = ModelTarget(
        litellm_model="llama-3-70b", api_base="http://10.0.0.5/v1", provider_type="openai_compatible"
    )
    assert estimate_cost(self_hosted, Usage(100, 50)) is None
    override = PriceOverride(input_cost_per_token=0.000001, output_cost_per_token=0.000002)
    assert estimate_cost(self_hosted, Usage(100, 50), price_override=override) == pytest.approx(0.0002)
