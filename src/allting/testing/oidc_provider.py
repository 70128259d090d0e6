"""An OpenID provider for tests and local trials, able to misbehave on purpose.

It speaks the real protocol over HTTP (discovery, JWKS, authorize, token, userinfo, logout), so the
relying party under test runs its genuine code path over loopback. The authorize endpoint signs in
whichever user the test chose and redirects straight back with `code`, `state` and `iss`.

    with OidcProvider() as idp:
        idp.next_user(sub="u-1", email="anna@kommun.example", email_verified=True, name="Anna")
        idp.misbehave(wrong_nonce=True)      # see `Misbehaviour`
        ...  # point a client at idp.discovery_url with idp.client_id / idp.client_secret
        idp.requests                          # everything it received

or from a shell: python -m allting.testing.oidc_provider --port 8200
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import hashlib
import hmac
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from allting.testing.background_server import BackgroundServer

CODE_LIFETIME_SECONDS = 60
TOKEN_LIFETIME_SECONDS = 300


@dataclass
class TestUser:
    """The person the provider asserts at the next /authorize."""

    __test__ = False  # not a pytest test class

    sub: str = "user-1"
    email: str | None = "user-1@example.org"
    email_verified: bool | None = True
    name: str | None = "Test User"
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class Misbehaviour:
    """Switches that make the provider break the protocol in one specific way each."""

    wrong_metadata_issuer: bool = False  # discovery names another issuer than its own URL
    wrong_token_issuer: bool = False  # ID token `iss` is another issuer
    wrong_audience: bool = False  # ID token `aud` is another client
    extra_audience: str | None = None  # `aud` is [client_id, extra_audience]
    azp: str | None = None  # put this `azp` in the ID token
    wrong_nonce: bool = False
    omit_nonce: bool = False
    expired_token: bool = False  # exp two minutes ago (beyond any allowed leeway)
    exp_offset: int | None = None  # exp = now + exp_offset (overrides the above)
    iat_offset: int = 0  # iat = now + iat_offset
    unknown_kid: bool = False  # sign with the real key but a kid the JWKS does not list
    omit_kid: bool = False
    alg_none: bool = False  # unsigned token with alg "none"
    alg_hs256: bool = False  # HS256 with the client secret as key (algorithm confusion)
    foreign_key: bool = False  # sign with a key that is not in the JWKS, under the real kid
    jku_header: bool = False  # add jku/jwk headers pointing at /attacker-jwks (with foreign_key)
    skip_pkce_check: bool = False  # accept any (or no) code_verifier at /token
    iss_param_mismatch: bool = False  # the authorization response's `iss` names another issuer
    omit_iss_param: bool = False
    omit_email_in_id_token: bool = False  # email only via /userinfo
    userinfo_sub: str | None = None  # /userinfo answers with this sub
    token_error: str | None = None  # /token answers 400 with this error code
    jwks_uri: str | None = None  # publish this jwks_uri in discovery instead of our own
    token_endpoint: str | None = None  # publish this token_endpoint instead of our own


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    scope: str
    user: TestUser
    issued_at: float


@dataclass
class _SigningKey:
    kid: str
    alg: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk


def _new_key(alg: str) -> _SigningKey:
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _SigningKey(kid=secrets.token_hex(8), alg=alg, private=private)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def s256(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class ProviderState:
    """Shared between the HTTP handlers (server thread) and the test's control calls."""

    def __init__(
        self, *, client_id: str, client_secret: str, alg: str, redirect_uris: list[str] | None
    ) -> None:
        self._lock = threading.Lock()
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = redirect_uris
        self.issuer = ""
        self.alg = alg
        self.keys: list[_SigningKey] = [_new_key(alg)]
        self.attacker_key = _new_key(alg)
        self.user = TestUser()
        self.misbehaviour = Misbehaviour()
        self.requests: list[RecordedRequest] = []
        self.grants: dict[str, _Grant] = {}
        self.used_codes: set[str] = set()
        self.access_tokens: dict[str, TestUser] = {}
        self.issued_tokens: list[str] = []
        self.issued_codes: list[str] = []
        self.signed_out = 0

    @property
    def current_key(self) -> _SigningKey:
        return self.keys[-1]

    def record(self, request: Request, form: dict[str, str] | None = None) -> None:
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.url.path,
                    query=dict(request.query_params),
                    form=form or {},
                    headers={k.lower(): v for k, v in request.headers.items()},
                )
            )

    def reset(self) -> None:
        with self._lock:
            self.user = TestUser()
            self.misbehaviour = Misbehaviour()
            self.requests.clear()
            self.grants.clear()
            self.used_codes.clear()
            self.access_tokens.clear()
            self.issued_tokens.clear()
            self.issued_codes.clear()
            self.signed_out = 0


def _error_redirect(redirect_uri: str, state: str | None, issuer: str, error: str) -> Response:
    params = {"error": error, "iss": issuer}
    if state is not None:
        params["state"] = state
    return RedirectResponse(_with_query(redirect_uri, params), status_code=302)


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def create_app(state: ProviderState, prefix: str = "") -> Starlette:
    def metadata() -> dict[str, Any]:
        m = state.misbehaviour
        base = state.issuer
        return {
            "issuer": base + "/evil" if m.wrong_metadata_issuer else base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": m.token_endpoint or f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": m.jwks_uri or f"{base}/jwks",
            "end_session_endpoint": f"{base}/logout",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "PS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "email", "profile"],
            "grant_types_supported": ["authorization_code"],
            "authorization_response_iss_parameter_supported": True,
        }

    async def discovery(request: Request) -> Response:
        state.record(request)
        return JSONResponse(metadata())

    async def jwks(request: Request) -> Response:
        state.record(request)
        return JSONResponse({"keys": [key.public_jwk() for key in state.keys]})

    async def attacker_jwks(request: Request) -> Response:
        state.record(request)
        return JSONResponse({"keys": [state.attacker_key.public_jwk()]})

    async def authorize(request: Request) -> Response:
        state.record(request)
        q = request.query_params
        m = state.misbehaviour
        redirect_uri = q.get("redirect_uri")
        if q.get("client_id") != state.client_id or not redirect_uri:
            return PlainTextResponse("unknown client or missing redirect_uri", status_code=400)
        if state.redirect_uris is not None and redirect_uri not in state.redirect_uris:
            return PlainTextResponse("redirect_uri not registered", status_code=400)
        if q.get("response_type") != "code" or "openid" not in q.get("scope", "").split():
            return _error_redirect(redirect_uri, q.get("state"), state.issuer, "invalid_request")
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if not m.skip_pkce_check and (not challenge or method != "S256"):
            return _error_redirect(redirect_uri, q.get("state"), state.issuer, "invalid_request")
        code = secrets.token_urlsafe(32)
        with state._lock:
            state.grants[code] = _Grant(
                client_id=state.client_id,
                redirect_uri=redirect_uri,
                code_challenge=challenge,
                code_challenge_method=method,
                nonce=q.get("nonce"),
                scope=q.get("scope", ""),
                user=dataclasses.replace(state.user, claims=dict(state.user.claims)),
                issued_at=time.time(),
            )
            state.issued_codes.append(code)
        params = {"code": code}
        if q.get("state") is not None:
            params["state"] = q["state"]
        if not m.omit_iss_param:
            params["iss"] = state.issuer + "/other" if m.iss_param_mismatch else state.issuer
        return RedirectResponse(_with_query(redirect_uri, params), status_code=302)

    def client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(header[6:]).decode()
            except (ValueError, UnicodeDecodeError):
                return None, None
            client_id, _, secret = raw.partition(":")
            return unquote_plus(client_id), unquote_plus(secret)
        return form.get("client_id"), form.get("client_secret")

    def token_error(error: str, status: int = 400) -> Response:
        return JSONResponse({"error": error}, status_code=status, headers={"cache-control": "no-store"})

    async def token(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        state.record(request, form)
        m = state.misbehaviour
        client_id, secret = client_credentials(request, form)
        if client_id != state.client_id or not secret or not hmac.compare_digest(secret, state.client_secret):
            return token_error("invalid_client", 401)
        if m.token_error:
            return token_error(m.token_error)
        if form.get("grant_type") != "authorization_code":
            return token_error("unsupported_grant_type")
        code = form.get("code", "")
        with state._lock:
            grant = state.grants.pop(code, None)
            reused = code in state.used_codes
            state.used_codes.add(code)
        if grant is None or reused:
            return token_error("invalid_grant")
        if (
            time.time() - grant.issued_at > CODE_LIFETIME_SECONDS
            or form.get("redirect_uri") != grant.redirect_uri
        ):
            return token_error("invalid_grant")
        if not m.skip_pkce_check:
            verifier = form.get("code_verifier") or ""
            if not grant.code_challenge or not hmac.compare_digest(s256(verifier), grant.code_challenge):
                return token_error("invalid_grant")
        access_token = secrets.token_urlsafe(32)
        id_token = build_id_token(state, grant)
        with state._lock:
            state.access_tokens[access_token] = grant.user
            state.issued_tokens.extend([access_token, id_token])
        return JSONResponse(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_SECONDS,
                "id_token": id_token,
                "scope": grant.scope,
            },
            headers={"cache-control": "no-store"},
        )

    async def userinfo(request: Request) -> Response:
        state.record(request)
        header = request.headers.get("authorization", "")
        user = state.access_tokens.get(header[7:]) if header.lower().startswith("bearer ") else None
        if user is None:
            return JSONResponse(
                {"error": "invalid_token"},
                status_code=401,
                headers={"www-authenticate": 'Bearer error="invalid_token"'},
            )
        claims = {"sub": state.misbehaviour.userinfo_sub or user.sub, **_profile(user)}
        return JSONResponse(claims)

    async def logout(request: Request) -> Response:
        state.record(request)
        with state._lock:
            state.signed_out += 1
        target = request.query_params.get("post_logout_redirect_uri")
        if target:
            params = {"state": request.query_params["state"]} if "state" in request.query_params else {}
            return RedirectResponse(_with_query(target, params), status_code=302)
        return PlainTextResponse("You are signed out.")

    return Starlette(
        routes=[
            Route(f"{prefix}/.well-known/openid-configuration", discovery),
            Route(f"{prefix}/jwks", jwks),
            Route(f"{prefix}/attacker-jwks", attacker_jwks),
            Route(f"{prefix}/authorize", authorize),
            Route(f"{prefix}/token", token, methods=["POST"]),
            Route(f"{prefix}/userinfo", userinfo, methods=["GET", "POST"]),
            Route(f"{prefix}/logout", logout, methods=["GET", "POST"]),
        ]
    )


def _profile(user: TestUser) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    if user.email is not None:
        claims["email"] = user.email
    if user.email_verified is not None:
        claims["email_verified"] = user.email_verified
    if user.name is not None:
        claims["name"] = user.name
    claims.update(user.claims)
    return claims


def build_id_token(state: ProviderState, grant: _Grant) -> str:
    """The ID token for `grant`, bent by whatever misbehaviour is switched on."""
    m = state.misbehaviour
    now = int(time.time())
    exp_offset = (
        m.exp_offset if m.exp_offset is not None else (-120 if m.expired_token else TOKEN_LIFETIME_SECONDS)
    )
    audience: str | list[str] = "someone-else" if m.wrong_audience else state.client_id
    if m.extra_audience:
        audience = [audience, m.extra_audience]
    claims: dict[str, Any] = {
        "iss": state.issuer + "/evil" if m.wrong_token_issuer else state.issuer,
        "sub": grant.user.sub,
        "aud": audience,
        "iat": now + m.iat_offset,
        "exp": now + exp_offset,
        "auth_time": now,
    }
    if m.azp:
        claims["azp"] = m.azp
    if not m.omit_nonce:
        claims["nonce"] = secrets.token_urlsafe(16) if m.wrong_nonce else grant.nonce
    profile = _profile(grant.user)
    if m.omit_email_in_id_token:
        profile.pop("email", None)
        profile.pop("email_verified", None)
    claims.update(profile)
    key = state.current_key
    headers: dict[str, Any] = {"kid": "unknown-" + secrets.token_hex(4) if m.unknown_kid else key.kid}
    if m.omit_kid:
        headers.pop("kid")
    if m.alg_none:
        header = {"alg": "none", "typ": "JWT", **headers}
        return ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims)) + "."
    if m.alg_hs256:
        return jwt.encode(claims, state.client_secret, algorithm="HS256", headers=headers)
    signing = key
    if m.foreign_key:
        signing = state.attacker_key
    if m.jku_header:
        headers["jku"] = f"{state.issuer}/attacker-jwks"
        headers["jwk"] = state.attacker_key.public_jwk()
    return jwt.encode(claims, signing.private, algorithm=signing.alg, headers=headers)


class OidcProvider(BackgroundServer):
    """The test provider served by uvicorn on 127.0.0.1 in a background thread (free port by default).

    `path` puts the issuer under a path (like Keycloak realms or Entra tenants), e.g. "/realms/a".
    """

    label = "test OpenID provider"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "",
        client_id: str = "allting-test-client",
        client_secret: str | None = None,
        alg: str = "RS256",
        redirect_uris: list[str] | None = None,
    ) -> None:
        if alg not in ("RS256", "PS256", "ES256"):
            raise ValueError("alg must be RS256, PS256 or ES256")
        self.state = ProviderState(
            client_id=client_id,
            client_secret=client_secret or secrets.token_urlsafe(24),
            alg=alg,
            redirect_uris=redirect_uris,
        )
        super().__init__(host=host, port=port)
        self.path = path.rstrip("/")
        self.state.issuer = f"http://{self.host}:{self.port}{self.path}"
        self._serve(create_app(self.state, self.path))

    # -- what clients need -------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self.state.issuer

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def client_id(self) -> str:
        return self.state.client_id

    @property
    def client_secret(self) -> str:
        return self.state.client_secret

    # -- what tests read back ----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        """Recorded requests to one endpoint: "jwks", "token", "authorize", ..."""
        path = f"{self.path}/{endpoint.lstrip('/')}"
        return [r for r in self.state.requests if r.path == path]

    @property
    def issued_tokens(self) -> list[str]:
        """Every access and ID token handed out (to prove none of them ends up in logs)."""
        return self.state.issued_tokens

    @property
    def issued_codes(self) -> list[str]:
        return self.state.issued_codes

    # -- control -----------------------------------------------------------------------------

    def next_user(
        self,
        sub: str = "user-1",
        email: str | None = "user-1@example.org",
        email_verified: bool | None = True,
        name: str | None = "Test User",
        **claims: Any,
    ) -> TestUser:
        """Choose who the provider signs in from now on (None leaves a claim out)."""
        user = TestUser(sub=sub, email=email, email_verified=email_verified, name=name, claims=claims)
        self.state.user = user
        return user

    def misbehave(self, **switches: Any) -> Misbehaviour:
        """Replace the misbehaviour switches; those not given are off. See `Misbehaviour`."""
        misbehaviour = Misbehaviour(**switches)
        self.state.misbehaviour = misbehaviour
        return misbehaviour

    def rotate_key(self, *, keep_old: bool = True) -> str:
        """Sign with a new key from now on; returns its kid. The old key stays published unless told."""
        key = _new_key(self.state.alg)
        with self.state._lock:
            self.state.keys = [*self.state.keys, key] if keep_old else [key]
        return key.kid

    def reset(self) -> None:
        """Default user, no misbehaviour, no recorded requests or outstanding codes."""
        self.state.reset()

    # -- lifecycle ---------------------------------------------------------------------------


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~0.1 s; a test suite follows many authorizations.
    return ssl.create_default_context()


async def follow_authorization(authorization_url: str) -> dict[str, str]:
    """Play the browser: open the authorization URL and return the callback's query parameters."""
    async with httpx.AsyncClient(
        follow_redirects=False, trust_env=False, timeout=10, verify=_tls_context()
    ) as client:
        response = await client.get(authorization_url)
    location = response.headers.get("location")
    if response.status_code not in (302, 303) or not location:
        raise RuntimeError(f"authorization did not redirect back (HTTP {response.status_code})")
    return dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenID provider for tests and local trials")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--path", default="")
    parser.add_argument("--client-id", default="allting-test-client")
    parser.add_argument("--client-secret", default=None)
    parser.add_argument("--alg", default="RS256", choices=["RS256", "PS256", "ES256"])
    parser.add_argument("--sub", default="user-1")
    parser.add_argument("--email", default="user-1@example.org")
    parser.add_argument("--name", default="Test User")
    args = parser.parse_args(argv)
    provider = OidcProvider(
        host=args.host,
        port=args.port,
        path=args.path,
        client_id=args.client_id,
        client_secret=args.client_secret,
        alg=args.alg,
    )
    provider.next_user(sub=args.sub, email=args.email, name=args.name)
    print(f"issuer:        {provider.issuer}")
    print(f"discovery:     {provider.discovery_url}")
    print(f"client_id:     {provider.client_id}")
    print(f"client_secret: {provider.client_secret}")
    provider.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        provider.stop()


if __name__ == "__main__":
    main()
