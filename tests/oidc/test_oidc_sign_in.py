"""Successful sign-ins against the test provider over real HTTP, and what our side sends."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, urlsplit

import pytest

from allting.auth import oidc
from allting.testing.oidc_provider import OidcProvider, follow_authorization, s256

LOOPBACK = "127.0.0.1"


async def test_normal_sign_in(flow, idp):
    idp.next_user(sub="anna-42", email="Anna@Kommun.example", email_verified=True, name="Anna A")

    identity = await flow.sign_in()

    assert identity.issuer == idp.issuer
    assert identity.subject == "anna-42"
    assert identity.email == "Anna@Kommun.example"
    assert identity.email_verified is True
    assert identity.name == "Anna A"
    assert identity.tenant_id == flow.tenant_id
    assert identity.id_token_claims["aud"] == idp.client_id
    assert identity.correlation_id
    assert identity.linkable_email(flow.config.allowed_domains) == "anna@kommun.example"
    # Nothing secret in the repr that a careless log line would print.
    assert identity.id_token not in repr(identity)


async def test_authorization_request_carries_pkce_nonce_and_state(flow, idp):
    url, state = await flow.begin()
    query = dict(parse_qsl(urlsplit(url).query))

    assert url.startswith(idp.issuer + "/authorize?")
    assert query["response_type"] == "code"
    assert query["client_id"] == idp.client_id
    assert query["redirect_uri"] == flow.redirect_uri
    assert query["scope"].split() == ["openid", "email", "profile"]
    assert query["state"] == state and len(state) >= 43
    assert len(query["nonce"]) >= 43 and query["nonce"] != state
    assert query["code_challenge_method"] == "S256"
    # The state record is stored under the SHA-256 of the state, never the value itself.
    redis = flow.store.redis
    assert await redis.exists(oidc.state_key(state)) == 1
    assert not await redis.keys(f"*{state}*")
    ttl = await redis.pttl(oidc.state_key(state))
    assert ttl > (oidc.STATE_TTL_SECONDS + oidc.STATE_EXPIRED_GRACE_SECONDS - 5) * 1000


async def test_our_side_sends_the_pkce_verifier_even_when_the_provider_does_not_check(flow, idp):
    idp.misbehave(skip_pkce_check=True)

    await flow.sign_in()

    (authorize,) = idp.requests_to("authorize")
    (token,) = idp.requests_to("token")
    verifier = token.form["code_verifier"]
    assert 43 <= len(verifier) <= 128
    assert s256(verifier) == authorize.query["code_challenge"]
    assert token.form["redirect_uri"] == flow.redirect_uri
    assert token.form["grant_type"] == "authorization_code"
    # client_secret_basic by default: the secret travels in the header, not the form.
    assert "client_secret" not in token.form
    assert token.headers["authorization"].startswith("Basic ")


async def test_client_secret_post(idp, flow_factory):
    flow = await flow_factory(idp, token_endpoint_auth_method="client_secret_post")

    await flow.sign_in()

    (token,) = idp.requests_to("token")
    assert token.form["client_secret"] == idp.client_secret
    assert "authorization" not in token.headers


@pytest.mark.parametrize("alg", ["ES256", "PS256"])
async def test_other_allowed_algorithms(alg, flow_factory):
    with OidcProvider(alg=alg) as provider:
        flow = await flow_factory(provider)
        identity = await flow.sign_in()
    assert identity.subject == "user-1"


async def test_issuer_under_a_path_with_query_in_authorization_endpoint(flow):
    # The issuer of the session provider lives under /realms/kommun-a; the exact value round-trips.
    identity = await flow.sign_in(begin={"extra_params": {"login_hint": "anna@kommun.example", "state": "x"}})
    assert identity.issuer.endswith("/realms/kommun-a")
    (authorize,) = flow.provider.requests_to("authorize")
    assert authorize.query["login_hint"] == "anna@kommun.example"
    assert authorize.query["state"] != "x"  # protocol parameters cannot be overridden


async def test_email_from_userinfo_when_the_id_token_has_none(flow, idp):
    idp.next_user(sub="u-7", email="bo@kommun.example", email_verified=True)
    idp.misbehave(omit_email_in_id_token=True)

    identity = await flow.sign_in()

    assert "email" not in identity.id_token_claims
    assert identity.email == "bo@kommun.example"
    assert identity.email_verified is True
    assert len(idp.requests_to("userinfo")) == 1


async def test_userinfo_for_another_subject_is_ignored(flow, idp):
    idp.next_user(sub="u-7", email="bo@kommun.example", email_verified=True)
    idp.misbehave(omit_email_in_id_token=True, userinfo_sub="someone-else")

    identity = await flow.sign_in()

    assert identity.email is None
    assert identity.email_verified is False
    assert identity.linkable_email(["kommun.example"]) is None


async def test_unverified_or_foreign_domain_email_is_not_linkable(flow, idp):
    idp.next_user(sub="u-8", email="eve@kommun.example", email_verified=False)
    unverified = await flow.sign_in()
    assert unverified.email == "eve@kommun.example"
    assert unverified.linkable_email(["kommun.example"]) is None

    idp.next_user(sub="u-9", email="eve@evil.example", email_verified=True)
    foreign = await flow.sign_in()
    assert foreign.linkable_email(["kommun.example"]) is None
    assert foreign.linkable_email(["sub.evil.example"]) is None


async def test_leeway_accepts_a_token_expired_seconds_ago(flow, idp):
    idp.misbehave(exp_offset=-30)
    identity = await flow.sign_in()
    assert identity.subject == "user-1"


async def test_key_rotation_is_picked_up_with_one_refresh(flow, idp):
    await flow.sign_in()
    assert len(idp.requests_to("jwks")) == 1

    new_kid = idp.rotate_key()
    identity = await flow.sign_in()

    assert len(idp.requests_to("jwks")) == 2
    assert identity.subject == "user-1"
    await flow.sign_in()
    assert len(idp.requests_to("jwks")) == 2  # the new key is cached now
    assert new_kid


async def test_shared_callback_takes_the_state_first(flow):
    callback = await flow.authorize()
    record = await oidc.take_state(flow.store, callback["state"])
    assert record.tenant_id == str(flow.tenant_id)

    identity = await flow.complete(callback, state=record, tenant_id=uuid.UUID(record.tenant_id))

    assert identity.tenant_id == flow.tenant_id


async def test_extra_round_trips_through_the_state(flow):
    url, _ = await flow.begin(extra={"next": "/assistants"})
    identity = await flow.complete(await follow_authorization(url))
    assert identity.extra == {"next": "/assistants"}


async def test_discovery_is_cached_and_can_be_forced(idp):
    cache = oidc.MetadataCache()
    first = await oidc.discover(idp.discovery_url, allowed_networks=LOOPBACK, cache=cache)
    again = await oidc.discover(idp.discovery_url, allowed_networks=LOOPBACK, cache=cache)
    assert first is again
    assert len(idp.requests_to(".well-known/openid-configuration")) == 1

    await oidc.discover(idp.discovery_url, allowed_networks=LOOPBACK, cache=cache, force_refresh=True)
    assert len(idp.requests_to(".well-known/openid-configuration")) == 2


async def test_logout_url(flow, idp):
    identity = await flow.sign_in()
    url = oidc.logout_url(
        flow.metadata,
        client_id=idp.client_id,
        id_token_hint=identity.id_token,
        post_logout_redirect_uri="https://allting.example/signed-out",
        state="s1",
    )
    assert url and url.startswith(idp.issuer + "/logout?")
    callback = await follow_authorization(url)
    assert callback == {"state": "s1"}
    no_logout = oidc.ProviderMetadata(**{**flow.metadata.__dict__, "end_session_endpoint": None})
    assert oidc.logout_url(no_logout, client_id=idp.client_id) is None
