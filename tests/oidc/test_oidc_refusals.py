"""Every refusal of the sign-in flow, each with its stable reason code."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import pytest

from allting.auth import oidc
from allting.testing.oidc_provider import follow_authorization

LOOPBACK = "127.0.0.1"


def assert_refused(error: oidc.OidcError, reason_code: str) -> None:
    assert error.reason_code == reason_code, f"{error.reason_code}: {error.message}"
    assert reason_code in oidc.REASON_CODES
    assert error.correlation_id


# -- state ----------------------------------------------------------------------------------


async def test_missing_state(flow):
    callback = await flow.authorize()
    for state in ("", secrets.token_urlsafe(32)):
        with pytest.raises(oidc.OidcError) as caught:
            await flow.complete({**callback, "state": state})
        assert caught.value.reason_code == "state_missing"
    # The genuine state is still usable: a wrong guess does not burn it.
    assert (await flow.complete(callback)).subject == "user-1"


async def test_reused_state(flow, idp):
    callback = await flow.authorize()
    await flow.complete(callback)

    with pytest.raises(oidc.OidcError) as caught:
        await flow.complete(callback)

    assert_refused(caught.value, "state_reused")
    assert len(idp.requests_to("token")) == 1  # the replay never reached the provider


async def test_concurrent_replay_signs_in_once(flow):
    callback = await flow.authorize()
    results = await asyncio.gather(*(flow.complete(callback) for _ in range(5)), return_exceptions=True)
    identities = [r for r in results if isinstance(r, oidc.VerifiedIdentity)]
    refusals = [r.reason_code for r in results if isinstance(r, oidc.OidcError)]
    assert len(identities) == 1
    assert refusals == ["state_reused"] * 4


async def test_expired_state(flow, idp):
    callback = await flow.authorize(state_ttl_seconds=0.2)
    await asyncio.sleep(0.35)

    with pytest.raises(oidc.OidcError) as caught:
        await flow.complete(callback)

    assert_refused(caught.value, "state_expired")
    assert not idp.requests_to("token")


async def test_foreign_tenant_state(flow, idp):
    callback = await flow.authorize()

    with pytest.raises(oidc.OidcError) as caught:
        await flow.complete(callback, tenant_id=uuid.uuid4())
    assert_refused(caught.value, "state_tenant_mismatch")
    assert not idp.requests_to("token")

    # The state was consumed by the refused attempt; it cannot be retried under the right tenant.
    with pytest.raises(oidc.OidcError) as caught:
        await flow.complete(callback)
    assert caught.value.reason_code == "state_reused"


# -- ID token claims ----------------------------------------------------------------------------


@pytest.mark.parametrize("switch", ["wrong_nonce", "omit_nonce"])
async def test_wrong_nonce(flow, idp, switch):
    idp.misbehave(**{switch: True})
    assert_refused(await flow.refused(), "nonce_mismatch")


async def test_wrong_audience(flow, idp):
    idp.misbehave(wrong_audience=True)
    assert_refused(await flow.refused(), "audience_mismatch")


async def test_several_audiences_need_our_azp(flow, idp):
    idp.misbehave(extra_audience="other-client")
    assert_refused(await flow.refused(), "audience_mismatch")

    idp.misbehave(extra_audience="other-client", azp="other-client")
    assert_refused(await flow.refused(), "audience_mismatch")

    idp.misbehave(extra_audience="other-client", azp=idp.client_id)
    assert (await flow.sign_in()).subject == "user-1"


async def test_wrong_issuer_in_id_token(flow, idp):
    idp.misbehave(wrong_token_issuer=True)
    assert_refused(await flow.refused(), "issuer_mismatch")


async def test_expired_token(flow, idp):
    idp.misbehave(expired_token=True)
    assert_refused(await flow.refused(), "token_expired")


async def test_leeway_is_capped_at_sixty_seconds(idp, flow_factory):
    flow = await flow_factory(idp, leeway_seconds=600)
    assert flow.config.leeway_seconds == 60
    idp.misbehave(exp_offset=-90)
    assert_refused(await flow.refused(), "token_expired")


async def test_token_issued_in_the_future(flow, idp):
    idp.misbehave(iat_offset=300)
    assert_refused(await flow.refused(), "token_not_yet_valid")


# -- signature, keys, algorithms --------------------------------------------------------------


async def test_alg_none(flow, idp):
    idp.misbehave(alg_none=True)
    assert_refused(await flow.refused(), "alg_not_allowed")


async def test_hs256_signed_with_the_client_secret(flow, idp):
    idp.misbehave(alg_hs256=True)
    assert_refused(await flow.refused(), "alg_not_allowed")


async def test_signed_with_a_different_key(flow, idp):
    idp.misbehave(foreign_key=True)
    assert_refused(await flow.refused(), "signature_invalid")


async def test_keys_named_by_token_headers_are_ignored(flow, idp):
    # Signed by the attacker's key, which the token offers through jku and an embedded jwk.
    idp.misbehave(foreign_key=True, jku_header=True)
    assert_refused(await flow.refused(), "signature_invalid")
    assert not idp.requests_to("attacker-jwks")


async def test_unknown_kid_refreshes_the_jwks_once(flow, idp):
    await flow.sign_in()
    assert len(idp.requests_to("jwks")) == 1

    idp.misbehave(unknown_kid=True)
    for _ in range(5):
        assert_refused(await flow.refused(), "unknown_kid")

    # One refresh for the first unknown kid; the next four are rate-limited.
    assert len(idp.requests_to("jwks")) == 2
    assert flow.jwks_cache.fetches == 2


async def test_unknown_kid_on_a_cold_cache_fetches_once(flow, idp):
    idp.misbehave(unknown_kid=True)
    assert_refused(await flow.refused(), "unknown_kid")
    assert len(idp.requests_to("jwks")) == 1


async def test_unknown_kid_refreshes_again_after_the_interval(flow, idp):
    now = [1000.0]
    flow.jwks_cache = oidc.JwksCache(min_refresh_seconds=60, clock=lambda: now[0])
    await flow.sign_in()
    idp.misbehave(unknown_kid=True)
    assert_refused(await flow.refused(), "unknown_kid")
    now[0] += 59
    assert_refused(await flow.refused(), "unknown_kid")
    assert len(idp.requests_to("jwks")) == 2
    now[0] += 2
    assert_refused(await flow.refused(), "unknown_kid")
    assert len(idp.requests_to("jwks")) == 3


async def test_algorithm_allowlist_can_be_narrowed(idp, flow_factory):
    flow = await flow_factory(idp, allowed_algorithms=("ES256",))
    assert_refused(await flow.refused(), "alg_not_allowed")  # the provider signs RS256


def test_algorithm_allowlist_cannot_be_widened(idp):
    for algorithms in (("RS256", "HS256"), ("none",), ()):
        with pytest.raises(oidc.OidcError) as caught:
            oidc.ProviderConfig(
                discovery_endpoint=idp.discovery_url,
                client_id="c",
                client_secret="s",
                allowed_algorithms=algorithms,
            )
        assert caught.value.reason_code == "config_invalid"


# -- code exchange and PKCE --------------------------------------------------------------------


async def test_code_with_the_wrong_pkce_verifier(flow, idp):
    """An attacker injects a code issued for one sign-in into another one (code injection): our side
    sends the second sign-in's verifier, the provider refuses it."""
    stolen = await flow.authorize()
    _url, victim_state = await flow.begin()

    with pytest.raises(oidc.OidcError) as caught:
        await flow.complete({**stolen, "state": victim_state})

    assert_refused(caught.value, "token_exchange_failed")
    assert "invalid_grant" in caught.value.message
    (token,) = idp.requests_to("token")
    assert token.form["code"] == stolen["code"]
    assert token.form["code_verifier"]


async def test_token_endpoint_errors(flow, idp, flow_factory):
    idp.misbehave(token_error="invalid_grant")
    assert_refused(await flow.refused(), "token_exchange_failed")

    idp.reset()
    wrong_secret = await flow_factory(idp, client_secret="not-the-secret")
    error = await wrong_secret.refused()
    assert_refused(error, "token_exchange_failed")
    assert "invalid_client" in error.message


async def test_provider_error_in_the_callback(flow):
    callback = await flow.authorize()
    with pytest.raises(oidc.OidcError) as caught:
        await flow.complete({"state": callback["state"], "iss": callback["iss"], "error": "access_denied"})
    assert_refused(caught.value, "provider_error")


# -- issuer and mix-up ----------------------------------------------------------------------------


async def test_wrong_issuer_in_metadata(idp):
    idp.misbehave(wrong_metadata_issuer=True)
    with pytest.raises(oidc.OidcError) as caught:
        await oidc.discover(idp.discovery_url, allowed_networks=LOOPBACK, cache=oidc.MetadataCache())
    assert caught.value.reason_code == "issuer_mismatch"


async def test_iss_parameter_mismatch(flow, idp):
    idp.misbehave(iss_param_mismatch=True)
    assert_refused(await flow.refused(), "issuer_mismatch")
    assert not idp.requests_to("token")


async def test_missing_iss_parameter_when_the_provider_promises_one(flow, idp):
    assert flow.metadata.authorization_response_iss_parameter_supported
    idp.misbehave(omit_iss_param=True)
    assert_refused(await flow.refused(), "issuer_mismatch")


async def test_callback_completed_at_another_provider(flow, hostile_flow, idp, hostile_idp):
    """Mix-up: a sign-in started at tenant A's provider must not complete against another one,
    even when the same tenant id is claimed."""
    callback = await flow.authorize()

    with pytest.raises(oidc.OidcError) as caught:
        await flow.complete(callback, config=hostile_flow.config, metadata=hostile_flow.metadata)

    assert_refused(caught.value, "issuer_mismatch")
    assert not hostile_idp.requests_to("token")
    assert not idp.requests_to("token")


async def test_iss_parameter_of_another_provider(flow, hostile_idp):
    callback = await flow.authorize()
    assert_refused(
        await _refusal(flow.complete({**callback, "iss": hostile_idp.issuer})),
        "issuer_mismatch",
    )


async def test_metadata_of_another_provider_is_not_accepted_for_a_config(flow, hostile_flow):
    with pytest.raises(oidc.OidcError) as caught:
        await oidc.begin_sign_in(
            flow.config,
            hostile_flow.metadata,
            redirect_uri=flow.redirect_uri,
            tenant_id=flow.tenant_id,
            store=flow.store,
        )
    assert caught.value.reason_code == "issuer_mismatch"


async def test_hostile_tenant_provider_cannot_sign_into_another_tenant(flow, hostile_flow, hostile_idp):
    """Tenant B's hostile provider asserts a tenant-A address; a state of tenant B cannot be
    completed as tenant A, and its identity stays bound to B's issuer."""
    hostile_idp.next_user(sub="victim", email="anna@kommun.example", email_verified=True)
    callback = await hostile_flow.authorize()

    with pytest.raises(oidc.OidcError) as caught:
        await flow.complete(callback)
    assert caught.value.reason_code == "state_tenant_mismatch"

    identity = await hostile_flow.sign_in()
    assert identity.tenant_id == hostile_flow.tenant_id != flow.tenant_id
    assert identity.issuer == hostile_idp.issuer != flow.metadata.issuer


async def _refusal(awaitable) -> oidc.OidcError:
    with pytest.raises(oidc.OidcError) as caught:
        await awaitable
    return caught.value


# -- outbound address guard -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/.well-known/openid-configuration",
        "http://169.254.169.254/.well-known/openid-configuration",
        "http://[::1]/.well-known/openid-configuration",
        "http://192.168.1.10/realm/.well-known/openid-configuration",
    ],
)
async def test_discovery_to_a_private_address_is_refused(url):
    with pytest.raises(oidc.OidcError) as caught:
        await oidc.discover(url, allowed_networks=LOOPBACK, cache=oidc.MetadataCache())
    assert caught.value.reason_code == "egress_blocked"


async def test_loopback_provider_refused_when_loopback_is_not_allowed(idp):
    with pytest.raises(oidc.OidcError) as caught:
        await oidc.discover(idp.discovery_url, allowed_networks=(), cache=oidc.MetadataCache())
    assert caught.value.reason_code == "egress_blocked"
    assert not idp.requests


@pytest.mark.parametrize(
    ("switch", "endpoint"),
    [("jwks_uri", "https://169.254.169.254/keys"), ("token_endpoint", "https://10.0.0.1/token")],
)
async def test_metadata_endpoints_pointing_inside_are_refused(idp, flow_factory, switch, endpoint):
    idp.misbehave(**{switch: endpoint})
    flow = await flow_factory(idp)
    assert_refused(await flow.refused(), "egress_blocked")


async def test_metadata_endpoints_over_plain_http_are_refused(idp):
    idp.misbehave(jwks_uri="http://203.0.113.5/keys")
    with pytest.raises(oidc.OidcError) as caught:
        await oidc.discover(idp.discovery_url, allowed_networks=LOOPBACK, cache=oidc.MetadataCache())
    assert caught.value.reason_code == "discovery_failed"


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example/realms/a",
        "https://idp.example/.well-known/openid-configuration?x=1",
        "ftp://idp.example/.well-known/openid-configuration",
    ],
)
def test_discovery_url_shape(url):
    with pytest.raises(oidc.OidcError) as caught:
        oidc.ProviderConfig(discovery_endpoint=url, client_id="c", client_secret="s")
    assert caught.value.reason_code == "config_invalid"


async def test_discovery_of_an_unreachable_provider(idp):
    with pytest.raises(oidc.OidcError) as caught:
        await oidc.discover(
            "http://127.0.0.1:9/.well-known/openid-configuration",
            allowed_networks=LOOPBACK,
            cache=oidc.MetadataCache(),
        )
    assert caught.value.reason_code == "discovery_failed"


async def test_follow_authorization_helper_reports_errors(flow, idp):
    url, _ = await flow.begin()
    callback = await follow_authorization(
        url.replace("code_challenge_method=S256", "code_challenge_method=plain")
    )
    assert callback["error"] == "invalid_request"
