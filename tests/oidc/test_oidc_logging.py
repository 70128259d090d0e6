"""The debug switch logs each step with the correlation id, and no log line carries a secret."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest

from allting.auth import oidc
from allting.testing.oidc_provider import follow_authorization


def _secrets_seen(flow, idp, callbacks: list[dict[str, str]]) -> list[str]:
    """Every secret value of the flows so far: codes, states, nonces, verifiers, challenges, tokens."""
    values = [idp.client_secret, *idp.issued_tokens, *idp.issued_codes]
    for callback in callbacks:
        values += [callback.get("state"), callback.get("code")]
    for request in idp.requests_to("authorize"):
        values += [
            request.query.get("state"),
            request.query.get("nonce"),
            request.query.get("code_challenge"),
        ]
    for request in idp.requests_to("token"):
        values += [request.form.get("code"), request.form.get("code_verifier")]
        values.append(request.headers.get("authorization", "").removeprefix("Basic "))
    return [value for value in values if value]


async def _browser(url: str) -> dict[str, str]:
    """The user's browser visiting the provider is not our server: its httpx request logging (which
    naturally shows the authorization URL and the redirect back) is kept out of the captured logs.
    Our own outbound calls (token, JWKS, userinfo) stay captured at DEBUG."""
    with contextlib.ExitStack() as stack:
        for name in ("httpx", "httpcore"):
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.CRITICAL)
        return await follow_authorization(url)


def _debug_lines(caplog) -> list[dict]:
    lines = []
    for record in caplog.records:
        message = record.getMessage()
        if '"oidc_debug"' in message:
            lines.append(json.loads(message))
    return lines


async def test_no_secret_in_logs_with_debug_on(flow, idp, oidc_logs):
    callbacks = []
    url, _ = await flow.begin(debug=True, correlation_id="corr-signin-1")
    callbacks.append(await _browser(url))
    identity = await flow.complete(callbacks[-1], debug=True)
    # A refused sign-in logs too (its warning and the debug step).
    idp.misbehave(wrong_nonce=True)
    url, _ = await flow.begin(debug=True, correlation_id="corr-signin-2")
    callbacks.append(await _browser(url))
    with pytest.raises(oidc.OidcError):
        await flow.complete(callbacks[-1], debug=True)
    # ... and so does a replay of the first state.
    with pytest.raises(oidc.OidcError):
        await flow.complete(callbacks[0], debug=True)

    secrets_seen = [*_secrets_seen(flow, idp, callbacks), identity.id_token]
    assert len(secrets_seen) >= 12
    text = oidc_logs.text + "\n".join(record.getMessage() for record in oidc_logs.records)
    leaked = [value[:12] for value in secrets_seen if value in text]
    assert not leaked, f"secrets in logs (first characters shown): {leaked}"

    steps = _debug_lines(oidc_logs)
    by_correlation = {}
    for line in steps:
        by_correlation.setdefault(line["correlation_id"], []).append(line["step"])
    assert by_correlation["corr-signin-1"][:2] == ["begin", "state_taken"]
    assert "token_request" in by_correlation["corr-signin-1"]
    assert by_correlation["corr-signin-1"][-1] == "signed_in"
    assert by_correlation["corr-signin-2"][-1] == "refused"
    refused = next(
        line for line in steps if line["step"] == "refused" and line["correlation_id"] == "corr-signin-2"
    )
    assert refused["reason_code"] == "nonce_mismatch"
    warnings = [
        record.getMessage() for record in oidc_logs.records if "oidc_sign_in_refused" in record.getMessage()
    ]
    assert any("corr-signin-2" in line and "nonce_mismatch" in line for line in warnings)


async def test_debug_off_logs_no_steps(flow, idp, oidc_logs):
    await flow.sign_in(begin={"debug": False}, debug=False)
    assert not _debug_lines(oidc_logs)

    idp.misbehave(wrong_audience=True)
    error = await flow.refused()
    assert not _debug_lines(oidc_logs)
    # Refusals are logged (ASVS 16.3.1) whatever the switch says, with the correlation id.
    warnings = [
        record.getMessage() for record in oidc_logs.records if "oidc_sign_in_refused" in record.getMessage()
    ]
    assert len(warnings) == 1 and error.correlation_id in warnings[0] and "audience_mismatch" in warnings[0]


async def test_debug_switch_can_be_a_callable(flow, oidc_logs):
    calls = []

    async def switch() -> bool:
        calls.append(1)
        return True

    await flow.sign_in(begin={"debug": lambda: True}, debug=switch)
    assert calls == [1]  # read once per step function, not per line
    assert {line["step"] for line in _debug_lines(oidc_logs)} >= {"begin", "signed_in"}


def test_debug_log_scrubs_token_like_values(oidc_logs):
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbm5hIiwibm9uY2UiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    opaque = "Zq8Xv3Lm0Pt7Rw2Ny5Kb" * 3
    oidc.debug_log(
        "probe",
        debug_enabled=True,
        correlation_id="corr-probe",
        callback_url="https://allting.example/cb?code=short-code&state=s1&iss=https://idp.example",
        note=f"got {jwt_like} and Bearer abcdefgh12345678 and {opaque}",
        id_token="anything",
        client_secret="anything",
        nested={"refresh_token": "x", "values": [opaque]},
        issuer="https://login.microsoftonline.com/0b8c2a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e/v2.0",
    )
    oidc.debug_log("silent", debug_enabled=False, note=opaque)

    (line,) = _debug_lines(oidc_logs)
    assert line["correlation_id"] == "corr-probe"
    text = json.dumps(line)
    for secret in (jwt_like, opaque, "short-code", "abcdefgh12345678", "anything", '"x"'):
        assert secret not in text
    assert "iss=https://idp.example" in line["callback_url"]
    assert line["issuer"] == "https://login.microsoftonline.com/0b8c2a3e-1f2d-4c5b-9a8e-7d6c5b4a3f2e/v2.0"


async def test_errors_and_reprs_carry_no_secrets(flow, idp):
    idp.misbehave(token_error="invalid_grant")
    error = await flow.refused()
    assert idp.client_secret not in str(error)
    for code in idp.issued_codes:
        assert code not in str(error)
    assert idp.client_secret not in repr(flow.config)
    record = oidc.StateRecord(
        tenant_id="t",
        issuer="i",
        client_id="c",
        nonce="NONCE-VALUE",
        code_verifier="VERIFIER-VALUE",
        redirect_uri="r",
        created_at=0,
        expires_at=1,
        correlation_id="c",
    )
    assert "NONCE-VALUE" not in repr(record) and "VERIFIER-VALUE" not in repr(record)
