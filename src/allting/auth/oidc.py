"""OpenID Connect relying party: the protocol core, free of database and routes.

One module serves both sign-in modes: the single-tenant IdP from OIDC_* settings and a provider per
tenant (federation). The callers (routes, user model) wire it in; this module only speaks the
protocol, to the bar of security.md §1.3:

* Discovery and JWKS are fetched through the outbound address guard (`platform.egress`). The
  metadata `issuer` must be the issuer the configured discovery URL names (ASVS 10.5.3).
* Authorization-code flow with PKCE S256, a nonce, and a random state whose record lives server
  side (Redis, `oidc:state:<sha256(state)>`), is usable once and expires after 10 minutes.
* The callback is bound to the provider that started it: the state records the issuer, the RFC 9207
  `iss` response parameter must match it, and so must the ID token's `iss` (mix-up defence,
  ASVS 10.2.2).
* ID tokens are checked for signature (key by `kid` from the provider's `jwks_uri` only, never from
  `jku`/`x5u`/`jwk` headers), algorithm (RS256/ES256/PS256 only), exact issuer, audience (and `azp`
  with several audiences), `exp`/`iat` with at most 60 s leeway, and the nonce.

Every refusal is an `OidcError` with a stable `reason_code` (see REASON_CODES). Tokens, codes,
secrets, nonces and verifiers are never logged; `debug_log` scrubs anything token-like as well.

    metadata = await discover(config.discovery_endpoint, allowed_networks=None)
    url, state = await begin_sign_in(config, metadata, redirect_uri=..., tenant_id=..., store=store)
    ... browser goes to `url`, comes back with ?code&state&iss ...
    identity = await complete_sign_in(config, metadata, state=state, code=code, iss_param=iss,
                                      store=store, http=OidcHttp(), tenant_id=tenant_id)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import re
import secrets
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import httpx
import jwt
import structlog

from allting.platform import egress
from allting.platform.logging import correlation_id as correlation_id_var
from allting.platform.logging import scrub_text

DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
ALLOWED_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "PS256")
MAX_LEEWAY_SECONDS = 60
DEFAULT_SCOPES: tuple[str, ...] = ("openid", "email", "profile")
STATE_TTL_SECONDS = 600
# A state record stays in Redis this long after it expires, so a late callback reads as "expired"
# rather than "missing"; it is refused either way.
STATE_EXPIRED_GRACE_SECONDS = 600
STATE_KEY_PREFIX = "oidc:state:"
STATE_USED_KEY_PREFIX = "oidc:state-used:"
METADATA_TTL_SECONDS = 3600.0
JWKS_TTL_SECONDS = 3600.0
# An unknown `kid` triggers at most one JWKS refetch per issuer in this interval.
JWKS_MIN_REFRESH_SECONDS = 60.0
MAX_JWKS_KEYS = 100
MAX_METADATA_BYTES = 256 * 1024
MAX_TOKEN_RESPONSE_BYTES = 256 * 1024
HTTP_TIMEOUT_SECONDS = 10.0
FETCH_MAX_REDIRECTS = 3
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})
_KEY_TYPES = {"RS256": ("RSA", None), "PS256": ("RSA", None), "ES256": ("EC", "P-256")}
_PROTECTED_AUTH_PARAMS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    }
)

REASON_CODES: dict[str, str] = {
    "state_missing": "The callback's state is unknown: never issued here, or long gone.",
    "state_reused": "The state was already used once; a replayed callback.",
    "state_expired": "The state was issued but its 10-minute lifetime is over.",
    "state_tenant_mismatch": "The state was issued for another tenant than the one completing it.",
    "issuer_mismatch": "An issuer differs from the configured one: metadata, RFC 9207 `iss` "
    "parameter (or its absence when the provider promises it), state record, or ID token `iss`.",
    "nonce_mismatch": "The ID token's nonce is missing or differs from the one bound to the state.",
    "audience_mismatch": "The ID token's `aud` lacks our client_id, or `azp` is missing/wrong.",
    "signature_invalid": "The ID token's signature does not verify with the provider's key.",
    "unknown_kid": "No key in the provider's JWKS matches the token's `kid`, even after a refresh.",
    "alg_not_allowed": "The token's algorithm is not RS256/ES256/PS256 (or not offered by the IdP).",
    "token_expired": "The ID token's `exp` lies in the past beyond the leeway.",
    "token_not_yet_valid": "The ID token's `iat`/`nbf` lies in the future beyond the leeway.",
    "token_invalid": "The ID token is malformed or lacks a required claim (`sub`, `exp`, `iat`...).",
    "token_exchange_failed": "The token endpoint refused the code (wrong PKCE verifier, reused code, "
    "bad client credentials) or answered without an ID token.",
    "provider_error": "The provider redirected back with an `error` instead of a code.",
    "discovery_failed": "The discovery document could not be fetched or is unusable.",
    "jwks_fetch_failed": "The provider's JWKS could not be fetched or parsed.",
    "egress_blocked": "The outbound address guard refused a discovery, JWKS or token URL.",
    "config_invalid": "The provider configuration is unusable (discovery URL shape or scheme).",
}


class OidcError(Exception):
    """A refused sign-in step. `message` is for operators and logs; it never holds secrets."""

    def __init__(self, reason_code: str, message: str, *, correlation_id: str | None = None) -> None:
        assert reason_code in REASON_CODES, reason_code
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message
        self.correlation_id = correlation_id


# --------------------------------------------------------------------------------------------
# Configuration and metadata


def _is_loopback_host(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def _require_secure(url: str, what: str, reason: str) -> None:
    """https everywhere; plain http only towards loopback (local trials and tests)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and _is_loopback_host(url)):
        return
    raise OidcError(reason, f"{what} must use https (plain http is accepted for loopback only)")


def issuer_from_discovery_url(discovery_endpoint: str) -> str:
    """The issuer a discovery URL names: the URL minus "/.well-known/openid-configuration"."""
    if not isinstance(discovery_endpoint, str) or not discovery_endpoint.endswith(DISCOVERY_SUFFIX):
        raise OidcError("config_invalid", f"the discovery endpoint must end in {DISCOVERY_SUFFIX}")
    parts = urlsplit(discovery_endpoint)
    if parts.query or parts.fragment:
        raise OidcError("config_invalid", "the discovery endpoint must not carry a query or fragment")
    if parts.scheme.lower() not in ("http", "https"):
        raise OidcError("config_invalid", "the discovery endpoint must be an https URL")
    issuer = discovery_endpoint[: -len(DISCOVERY_SUFFIX)]
    if not urlsplit(issuer).netloc:
        raise OidcError("config_invalid", "the discovery endpoint has no host")
    return issuer


def _issuer_matches_discovery(issuer: str, discovery_endpoint: str) -> bool:
    """OpenID Discovery §4: the document lives at issuer (trailing "/" removed) + the suffix."""
    return isinstance(issuer, str) and issuer.rstrip("/") + DISCOVERY_SUFFIX == discovery_endpoint


@dataclass(frozen=True)
class ProviderConfig:
    """One identity provider: the single-tenant one from settings, or a tenant's federation row.

    `issuer` is optional; when given it must be the exact `issuer` the provider publishes (use it
    to pin a trailing slash). `token_endpoint_auth_method` None picks client_secret_basic when the
    provider offers it, else client_secret_post.
    """

    discovery_endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    allowed_domains: tuple[str, ...] = ()
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    issuer: str | None = None
    provider: str = "generic"
    token_endpoint_auth_method: str | None = None
    allowed_algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    leeway_seconds: int = MAX_LEEWAY_SECONDS

    def __post_init__(self) -> None:
        issuer_from_discovery_url(self.discovery_endpoint)
        if self.issuer is not None and not _issuer_matches_discovery(self.issuer, self.discovery_endpoint):
            raise OidcError("config_invalid", "the configured issuer does not match the discovery endpoint")
        if not self.client_id:
            raise OidcError("config_invalid", "client_id is empty")
        if self.token_endpoint_auth_method not in (None, "client_secret_basic", "client_secret_post"):
            raise OidcError(
                "config_invalid", "token_endpoint_auth_method must be client_secret_basic or _post"
            )
        if not set(self.allowed_algorithms) <= set(ALLOWED_ALGORITHMS) or not self.allowed_algorithms:
            raise OidcError("config_invalid", f"allowed_algorithms must be a subset of {ALLOWED_ALGORITHMS}")
        object.__setattr__(self, "allowed_domains", tuple(d.strip().lower() for d in self.allowed_domains))
        object.__setattr__(self, "scopes", tuple(self.scopes))
        object.__setattr__(self, "leeway_seconds", max(0, min(int(self.leeway_seconds), MAX_LEEWAY_SECONDS)))

    @property
    def expected_issuer(self) -> str:
        """The issuer derived from the discovery URL (or the pinned `issuer`)."""
        return self.issuer or issuer_from_discovery_url(self.discovery_endpoint)

    def accepts_issuer(self, issuer: str) -> bool:
        if self.issuer is not None:
            return issuer == self.issuer
        return _issuer_matches_discovery(issuer, self.discovery_endpoint)


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of a provider's discovery document this client relies on."""

    issuer: str
    discovery_endpoint: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    code_challenge_methods_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_document(cls, document: Any, *, discovery_endpoint: str) -> ProviderMetadata:
        if not isinstance(document, dict):
            raise OidcError("discovery_failed", "the discovery document is not a JSON object")
        fields: dict[str, Any] = {}
        for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or not value:
                raise OidcError("discovery_failed", f"the discovery document lacks {name}")
            fields[name] = value
        for name in ("userinfo_endpoint", "end_session_endpoint"):
            value = document.get(name)
            fields[name] = value if isinstance(value, str) and value else None
        for name in (
            "id_token_signing_alg_values_supported",
            "token_endpoint_auth_methods_supported",
            "code_challenge_methods_supported",
        ):
            value = document.get(name) or ()
            fields[name] = tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()
        fields["authorization_response_iss_parameter_supported"] = (
            document.get("authorization_response_iss_parameter_supported") is True
        )
        metadata = cls(discovery_endpoint=discovery_endpoint, raw=dict(document), **fields)
        metadata._check_endpoints()
        return metadata

    def _check_endpoints(self) -> None:
        for name in (
            "authorization_endpoint",
            "token_endpoint",
            "jwks_uri",
            "userinfo_endpoint",
            "end_session_endpoint",
        ):
            url = getattr(self, name)
            if url is None:
                continue
            try:
                egress.check_url_form(url)
            except egress.EgressBlocked as exc:
                raise OidcError(
                    "discovery_failed", f"{name} is not an acceptable URL: {exc.reason}"
                ) from None
            _require_secure(url, name, "discovery_failed")
        if self.code_challenge_methods_supported and "S256" not in self.code_challenge_methods_supported:
            raise OidcError("discovery_failed", "the provider does not offer PKCE S256")


class MetadataCache:
    """In-process cache of validated discovery documents, keyed by discovery URL and guard setting."""

    def __init__(self, ttl_seconds: float = METADATA_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self._entries: dict[tuple[str, str], tuple[float, ProviderMetadata]] = {}

    def get(self, key: tuple[str, str]) -> ProviderMetadata | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, key: tuple[str, str], metadata: ProviderMetadata) -> None:
        self._entries[key] = (time.monotonic() + self.ttl_seconds, metadata)

    def clear(self) -> None:
        self._entries.clear()


# --------------------------------------------------------------------------------------------
# Outbound HTTP through the guard


@dataclass
class OidcHttp:
    """Outbound calls for discovery, JWKS, token and userinfo, all through the egress guard.

    `allowed_networks` None uses the operator's OUTBOUND_ALLOWED_NETWORKS; tests pass "127.0.0.1".
    Use it as `async with OidcHttp(...) as http:` to share one guarded client (building one costs
    ~0.1 s of TLS setup), or pass `client` from `egress.guarded_client(...)` yourself. Without
    either, `complete_sign_in` opens one client per call.
    """

    allowed_networks: str | Iterable[str] | None = None
    timeout: float = HTTP_TIMEOUT_SECONDS
    client: httpx.AsyncClient | None = None
    _owned: bool = field(default=False, init=False, repr=False)

    async def __aenter__(self) -> OidcHttp:
        if self.client is None:
            self.client = egress.guarded_client(allowed_networks=self.allowed_networks, timeout=self.timeout)
            self._owned = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owned and self.client is not None:
            await self.client.aclose()
            self.client = None
            self._owned = False

    async def get(
        self, url: str, *, headers: Mapping[str, str] | None = None, max_bytes: int = MAX_METADATA_BYTES
    ) -> egress.GuardedResponse:
        return await egress.guarded_request(
            "GET",
            url,
            allowed_networks=self.allowed_networks,
            headers=headers,
            max_redirects=FETCH_MAX_REDIRECTS,
            max_response_bytes=max_bytes,
            timeout=self.timeout,
            client=self.client,
        )

    async def post_form(
        self, url: str, form: Mapping[str, str], *, headers: Mapping[str, str] | None = None
    ) -> egress.GuardedResponse:
        # No redirects: a 307 would carry the code, verifier and maybe the secret to another host.
        all_headers = {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"}
        all_headers.update(headers or {})
        return await egress.guarded_request(
            "POST",
            url,
            allowed_networks=self.allowed_networks,
            headers=all_headers,
            content=urlencode(form).encode(),
            max_redirects=0,
            max_response_bytes=MAX_TOKEN_RESPONSE_BYTES,
            timeout=self.timeout,
            client=self.client,
        )


def _networks_key(allowed: str | Iterable[str] | None) -> str:
    if allowed is None:
        return "<configured>"
    if isinstance(allowed, str):
        return allowed
    return ",".join(sorted(str(item) for item in allowed))


def _json_body(response: egress.GuardedResponse, reason: str, what: str) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        raise OidcError(reason, f"{what} is not JSON") from None


# --------------------------------------------------------------------------------------------
# Discovery

_metadata_cache = MetadataCache()


async def discover(
    discovery_endpoint: str,
    *,
    allowed_networks: str | Iterable[str] | None = None,
    expected_issuer: str | None = None,
    force_refresh: bool = False,
    cache: MetadataCache | None = None,
    http: OidcHttp | None = None,
) -> ProviderMetadata:
    """Fetch (or reuse) a provider's discovery document through the egress guard and validate it.

    The document's `issuer` must be the issuer the discovery URL names (and `expected_issuer` when
    given, e.g. a pinned `ProviderConfig.issuer`), else `issuer_mismatch`. `force_refresh` skips the
    cache (the sysadmin "test configuration" action).
    """
    issuer_from_discovery_url(discovery_endpoint)
    http = http or OidcHttp(allowed_networks=allowed_networks)
    cache = _metadata_cache if cache is None else cache
    key = (discovery_endpoint, _networks_key(http.allowed_networks))
    if not force_refresh and (cached := cache.get(key)) is not None:
        return cached
    try:
        await egress.check_url_async(discovery_endpoint, allowed_networks=http.allowed_networks)
    except egress.EgressBlocked as exc:
        raise OidcError("egress_blocked", f"discovery endpoint refused: {exc.reason}") from None
    except egress.EgressError as exc:
        raise OidcError("discovery_failed", f"discovery endpoint unreachable: {exc.reason}") from None
    _require_secure(discovery_endpoint, "the discovery endpoint", "config_invalid")
    response = await _fetch(http, discovery_endpoint, "discovery_failed", "discovery document")
    document = _json_body(response, "discovery_failed", "the discovery document")
    metadata = ProviderMetadata.from_document(document, discovery_endpoint=discovery_endpoint)
    if not _issuer_matches_discovery(metadata.issuer, discovery_endpoint) or (
        expected_issuer is not None and metadata.issuer != expected_issuer
    ):
        configured = _shown(expected_issuer or issuer_from_discovery_url(discovery_endpoint))
        raise OidcError(
            "issuer_mismatch",
            f"the discovery document names issuer {_shown(metadata.issuer)}, but the configuration "
            f"expects {configured}",
        )
    cache.put(key, metadata)
    return metadata


async def _fetch(http: OidcHttp, url: str, reason: str, what: str) -> egress.GuardedResponse:
    try:
        response = await http.get(url, headers={"accept": "application/json"})
    except egress.EgressBlocked as exc:
        raise OidcError("egress_blocked", f"{what} URL refused: {exc.reason}") from None
    except egress.EgressError as exc:
        raise OidcError(reason, f"{what} could not be fetched: {exc.reason}") from None
    except httpx.HTTPError as exc:
        raise OidcError(reason, f"{what} could not be fetched: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise OidcError(reason, f"{what} answered HTTP {response.status_code}")
    return response


def clear_caches() -> None:
    """Forget cached discovery documents and JWKS (tests; after a sysadmin changes a provider)."""
    _metadata_cache.clear()
    _jwks_cache.clear()


# --------------------------------------------------------------------------------------------
# JWKS


@dataclass
class _JwksEntry:
    keys: list[dict[str, Any]]
    fetched_at: float
    last_forced_at: float | None = None


class JwksCache:
    """Signing keys per (issuer, jwks_uri), fetched from the provider's published `jwks_uri` only.

    An unknown `kid` refreshes the set at most once per `min_refresh_seconds` per issuer, so a
    stream of forged tokens cannot turn into a stream of fetches.
    """

    def __init__(
        self,
        ttl_seconds: float = JWKS_TTL_SECONDS,
        min_refresh_seconds: float = JWKS_MIN_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self._clock = clock
        self._entries: dict[tuple[str, str], _JwksEntry] = {}
        self._locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
        self.fetches = 0

    def clear(self) -> None:
        self._entries.clear()

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        per_loop = self._locks.setdefault(asyncio.get_running_loop(), {})
        return per_loop.setdefault(key, asyncio.Lock())

    async def _load(self, metadata: ProviderMetadata, http: OidcHttp) -> _JwksEntry:
        response = await _fetch(http, metadata.jwks_uri, "jwks_fetch_failed", "JWKS")
        document = _json_body(response, "jwks_fetch_failed", "the JWKS")
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise OidcError("jwks_fetch_failed", "the JWKS has no keys list")
        self.fetches += 1
        return _JwksEntry(
            keys=[k for k in keys[:MAX_JWKS_KEYS] if isinstance(k, dict)], fetched_at=self._clock()
        )

    async def signing_key(
        self,
        metadata: ProviderMetadata,
        kid: str | None,
        alg: str,
        http: OidcHttp,
        log: _DebugLog | None = None,
    ) -> Any:
        """The verification key for (kid, alg): cached, refreshed once on an unknown kid."""
        key = (metadata.issuer, metadata.jwks_uri)
        async with self._lock(key):
            entry = self._entries.get(key)
            fresh = False
            if entry is None or self._clock() - entry.fetched_at >= self.ttl_seconds:
                previous = entry
                entry = await self._load(metadata, http)
                if previous is not None:
                    entry.last_forced_at = previous.last_forced_at
                self._entries[key] = entry
                fresh = True
                if log:
                    log("jwks_fetched", keys=len(entry.keys))
            found = _select_key(entry.keys, kid, alg)
            if found is not None:
                return found
            now = self._clock()
            throttled = (
                entry.last_forced_at is not None and now - entry.last_forced_at < self.min_refresh_seconds
            )
            if fresh or throttled:
                if log:
                    log("jwks_refresh_skipped", kid=kid, reason="just fetched" if fresh else "rate limited")
                raise OidcError(
                    "unknown_kid", f"no signing key with kid {_shown(kid)} in the provider's JWKS"
                )
            refreshed = await self._load(metadata, http)
            refreshed.last_forced_at = now
            self._entries[key] = refreshed
            if log:
                log("jwks_refreshed", kid=kid, keys=len(refreshed.keys))
            found = _select_key(refreshed.keys, kid, alg)
            if found is None:
                raise OidcError(
                    "unknown_kid", f"no signing key with kid {_shown(kid)} in the provider's JWKS"
                )
            return found


_jwks_cache = JwksCache()


def _select_key(keys: list[dict[str, Any]], kid: str | None, alg: str) -> Any | None:
    """The key for (kid, alg), or None when no key has that kid. A kid whose key cannot verify
    `alg` (wrong type, curve, `alg` or `use`) is a signature failure, not a refresh trigger."""
    if kid is None:
        candidates = [k for k in keys if k.get("use") in (None, "sig")]
        if len(candidates) != 1:
            return None
    else:
        candidates = [k for k in keys if k.get("kid") == kid]
        if not candidates:
            return None
    kty, crv = _KEY_TYPES[alg]
    for jwk in candidates:
        if jwk.get("kty") != kty or (crv and jwk.get("crv") != crv):
            continue
        if jwk.get("alg") not in (None, alg) or jwk.get("use") not in (None, "sig"):
            continue
        try:
            return jwt.PyJWK(jwk, algorithm=alg).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
    raise OidcError("signature_invalid", f"the key with kid {_shown(kid)} cannot verify {alg}")


# --------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class StateRecord:
    """What the server remembers between the redirect to the provider and the callback."""

    tenant_id: str
    issuer: str
    client_id: str
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_uri: str
    created_at: float
    expires_at: float
    correlation_id: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"v": 1, **{name: getattr(self, name) for name in self.__dataclass_fields__}},
            default=dict,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> StateRecord:
        try:
            data = json.loads(raw)
            return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        except (ValueError, TypeError, KeyError):
            raise OidcError("state_missing", "the stored sign-in state is unreadable") from None


@dataclass(frozen=True)
class TakenState:
    """The result of consuming a state: the record, or none (and whether it had been used before)."""

    record: StateRecord | None
    used_before: bool = False


class StateStore(Protocol):
    async def put(self, key: str, record: StateRecord, *, ttl_seconds: float) -> None:
        """Store `record` under `key` for `ttl_seconds` (keep it a while longer, see take)."""

    async def take(self, key: str) -> TakenState:
        """Atomically read and delete; remember the key as used so a replay is told apart."""


def state_key(state: str) -> str:
    """Redis key of a state: its SHA-256, so stored keys are no usable state values."""
    return STATE_KEY_PREFIX + hashlib.sha256(state.encode()).hexdigest()


_TAKE_SCRIPT = """
local value = redis.call('GETDEL', KEYS[1])
if value then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
  return {1, value}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {2}
end
return {0}
"""


class RedisStateStore:
    """State records in Redis: `oidc:state:<sha256>` JSON, taken with GETDEL in one Lua step that
    also leaves an `oidc:state-used:<sha256>` marker (so a replay reads as reused, not missing)."""

    def __init__(
        self,
        redis: Any = None,
        *,
        used_marker_seconds: float = STATE_TTL_SECONDS + STATE_EXPIRED_GRACE_SECONDS,
    ) -> None:
        self._redis = redis
        self.used_marker_seconds = used_marker_seconds

    @property
    def redis(self) -> Any:
        if self._redis is None:
            from allting.platform.redis import get_redis

            return get_redis()
        return self._redis

    async def put(self, key: str, record: StateRecord, *, ttl_seconds: float) -> None:
        keep = ttl_seconds + STATE_EXPIRED_GRACE_SECONDS
        await self.redis.set(key, record.to_json(), px=max(1, int(keep * 1000)), nx=True)

    async def take(self, key: str) -> TakenState:
        used_key = STATE_USED_KEY_PREFIX + key.removeprefix(STATE_KEY_PREFIX)
        result = await self.redis.eval(_TAKE_SCRIPT, 2, key, used_key, int(self.used_marker_seconds * 1000))
        status = int(result[0])
        if status == 1:
            return TakenState(StateRecord.from_json(result[1]))
        return TakenState(None, used_before=status == 2)


def _normalise_tenant(tenant_id: uuid.UUID | str) -> str:
    try:
        return str(uuid.UUID(str(tenant_id)))
    except ValueError:
        raise OidcError("config_invalid", "tenant_id is not a UUID") from None


async def take_state(store: StateStore, state: str, *, correlation_id: str | None = None) -> StateRecord:
    """Consume a callback's state once. For a callback shared by all tenants: take the state, load
    the tenant's provider from `record.tenant_id`, then pass the record to `complete_sign_in`."""
    cid = correlation_id or correlation_id_var.get() or uuid.uuid4().hex
    if not isinstance(state, str) or not state or len(state) > 512:
        raise OidcError("state_missing", "the callback carries no usable state", correlation_id=cid)
    taken = await store.take(state_key(state))
    if taken.record is None:
        if taken.used_before:
            raise OidcError("state_reused", "this sign-in state was already used", correlation_id=cid)
        raise OidcError("state_missing", "this sign-in state is unknown", correlation_id=cid)
    record = taken.record
    if time.time() > record.expires_at:
        raise OidcError(
            "state_expired", "this sign-in took too long; start again", correlation_id=record.correlation_id
        )
    return record


# --------------------------------------------------------------------------------------------
# Debug logging

DebugSwitch = bool | Callable[[], bool] | Callable[[], Awaitable[bool]]

_SENSITIVE_KEY = re.compile(
    r"(token|secret|password|code|verifier|nonce|state|assertion|authorization|cookie|credential|"
    r"session|challenge|key)",
    re.I,
)
_SAFE_KEYS = frozenset(
    {
        "reason_code",
        "status_code",
        "correlation_id",
        "keys",
        "kid",
        "has_code",
        "has_iss",
        "auth_method",
        "token_endpoint",
        "authorization_endpoint",
        "userinfo_endpoint",
        "end_session_endpoint",
    }
)
_SENSITIVE_QUERY = re.compile(
    r"([?&#](?:code|state|nonce|code_challenge|code_verifier|id_token|access_token|refresh_token|"
    r"client_secret|id_token_hint|session_state|login_hint)=)[^&#\s]*",
    re.I,
)
_LONG_OPAQUE = re.compile(r"[A-Za-z0-9_\-]{40,}")


def scrub_debug_value(value: Any) -> Any:
    """Redact anything token-like: JWTs, bearer values, sensitive query parameters, long opaque runs."""
    if isinstance(value, str):
        text = scrub_text(value)
        text = _SENSITIVE_QUERY.sub(r"\1[redacted]", text)
        return _LONG_OPAQUE.sub("[redacted]", text)[:500]
    if isinstance(value, Mapping):
        return {
            str(k): ("[redacted]" if _is_sensitive_key(str(k)) else scrub_debug_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub_debug_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub_debug_value(str(value))


def _is_sensitive_key(key: str) -> bool:
    return key not in _SAFE_KEYS and bool(_SENSITIVE_KEY.search(key))


def debug_log(step: str, *, debug_enabled: bool, correlation_id: str | None = None, **fields: Any) -> None:
    """Log one sign-in step when the OIDC debug switch is on; every field is scrubbed first."""
    if not debug_enabled:
        return
    clean = {
        key: "[redacted]" if _is_sensitive_key(key) else scrub_debug_value(value)
        for key, value in fields.items()
    }
    cid = correlation_id or correlation_id_var.get()
    structlog.get_logger("allting.auth.oidc").info("oidc_debug", step=step, correlation_id=cid, **clean)


class _DebugLog:
    def __init__(self, enabled: bool, correlation_id: str | None) -> None:
        self.enabled = enabled
        self.correlation_id = correlation_id

    def __call__(self, step: str, **fields: Any) -> None:
        debug_log(step, debug_enabled=self.enabled, correlation_id=self.correlation_id, **fields)


async def _resolve_switch(debug: DebugSwitch) -> bool:
    if callable(debug):
        value = debug()
        if inspect.isawaitable(value):
            value = await value
        return bool(value)
    return bool(debug)


def _shown(value: Any, limit: int = 120) -> str:
    """A provider-supplied value for an error message: repr'd, scrubbed and cut short."""
    text = repr(value)
    return scrub_debug_value(text if len(text) <= limit else text[:limit] + "…")


# --------------------------------------------------------------------------------------------
# Sign-in


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_challenge(code_verifier: str) -> str:
    """S256: BASE64URL(SHA256(ASCII(code_verifier))) without padding (RFC 7636 §4.2)."""
    return _b64url(hashlib.sha256(code_verifier.encode("ascii")).digest())


def _check_pairing(config: ProviderConfig, metadata: ProviderMetadata, cid: str | None) -> None:
    """The metadata must belong to this configuration; a swapped pair is a mix-up."""
    if metadata.discovery_endpoint != config.discovery_endpoint or not config.accepts_issuer(metadata.issuer):
        raise OidcError(
            "issuer_mismatch",
            "the provider metadata does not belong to this configuration",
            correlation_id=cid,
        )


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


async def begin_sign_in(
    config: ProviderConfig,
    metadata: ProviderMetadata,
    *,
    redirect_uri: str,
    tenant_id: uuid.UUID | str,
    store: StateStore,
    correlation_id: str | None = None,
    state_ttl_seconds: float = STATE_TTL_SECONDS,
    extra_params: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    debug: DebugSwitch = False,
) -> tuple[str, str]:
    """Start a sign-in: store the state record and return (authorization_url, state).

    `extra_params` adds authorization parameters such as `login_hint` or `prompt` (the protocol
    ones cannot be overridden); `extra` is kept in the state record for the route (e.g. the page to
    return to).
    """
    cid = correlation_id or correlation_id_var.get() or uuid.uuid4().hex
    log = _DebugLog(await _resolve_switch(debug), cid)
    _check_pairing(config, metadata, cid)
    tenant = _normalise_tenant(tenant_id)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    code_verifier = secrets.token_urlsafe(48)
    now = time.time()
    record = StateRecord(
        tenant_id=tenant,
        issuer=metadata.issuer,
        client_id=config.client_id,
        nonce=nonce,
        code_verifier=code_verifier,
        redirect_uri=redirect_uri,
        created_at=now,
        expires_at=now + state_ttl_seconds,
        correlation_id=cid,
        extra=dict(extra or {}),
    )
    await store.put(state_key(state), record, ttl_seconds=state_ttl_seconds)
    scopes = list(config.scopes)
    if "openid" not in scopes:
        scopes.insert(0, "openid")
    params = {k: v for k, v in (extra_params or {}).items() if k not in _PROTECTED_AUTH_PARAMS}
    params.update(
        response_type="code",
        client_id=config.client_id,
        redirect_uri=redirect_uri,
        scope=" ".join(scopes),
        state=state,
        nonce=nonce,
        code_challenge=pkce_challenge(code_verifier),
        code_challenge_method="S256",
    )
    url = _with_query(metadata.authorization_endpoint, params)
    log(
        "begin",
        tenant_id=tenant,
        issuer=metadata.issuer,
        client_id=config.client_id,
        redirect_uri=redirect_uri,
        scopes=scopes,
        authorization_endpoint=metadata.authorization_endpoint,
    )
    return url, state


@dataclass(frozen=True)
class VerifiedIdentity:
    """A signed-in identity. Bind users by (tenant_id, issuer, subject), never by e-mail alone."""

    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None
    tenant_id: uuid.UUID
    id_token_claims: Mapping[str, Any] = field(repr=False)
    correlation_id: str = ""
    id_token: str = field(default="", repr=False)  # for the provider's logout (`id_token_hint`)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def email_domain(self) -> str | None:
        if not self.email or "@" not in self.email:
            return None
        return self.email.rsplit("@", 1)[1].strip().lower()

    def linkable_email(self, allowed_domains: Iterable[str]) -> str | None:
        """The e-mail to link an existing account by: only when verified and its domain is allowed
        (exact match, no subdomains), else None."""
        domains = {d.strip().lower() for d in allowed_domains}
        if self.email_verified and self.email_domain and self.email_domain in domains:
            return self.email.strip().lower()
        return None


def _basic_auth(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: form-encode both parts before base64.
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _auth_method(config: ProviderConfig, metadata: ProviderMetadata) -> str:
    if config.token_endpoint_auth_method:
        return config.token_endpoint_auth_method
    supported = metadata.token_endpoint_auth_methods_supported
    if not supported or "client_secret_basic" in supported:
        return "client_secret_basic"
    return "client_secret_post"


_SAFE_ERROR = re.compile(r"[^a-z0-9_.\-]")


async def _exchange_code(
    config: ProviderConfig,
    metadata: ProviderMetadata,
    record: StateRecord,
    code: str,
    http: OidcHttp,
    log: _DebugLog,
) -> dict[str, Any]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": record.redirect_uri,
        "code_verifier": record.code_verifier,
        "client_id": config.client_id,
    }
    headers: dict[str, str] = {}
    method = _auth_method(config, metadata)
    if method == "client_secret_basic":
        headers["authorization"] = _basic_auth(config.client_id, config.client_secret)
    else:
        form["client_secret"] = config.client_secret
    log("token_request", token_endpoint=metadata.token_endpoint, auth_method=method)
    cid = record.correlation_id
    try:
        response = await http.post_form(metadata.token_endpoint, form, headers=headers)
    except egress.EgressBlocked as exc:
        raise OidcError(
            "egress_blocked", f"token endpoint refused: {exc.reason}", correlation_id=cid
        ) from None
    except (egress.EgressError, httpx.HTTPError) as exc:
        detail = exc.reason if isinstance(exc, egress.EgressError) else type(exc).__name__
        raise OidcError(
            "token_exchange_failed", f"token endpoint unreachable: {detail}", correlation_id=cid
        ) from None
    body: Any = None
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        shown = _SAFE_ERROR.sub("", str(error).lower())[:60] if error else "no error code"
        log("token_response", status_code=response.status_code, error=shown)
        raise OidcError(
            "token_exchange_failed",
            f"token endpoint answered HTTP {response.status_code} ({shown})",
            correlation_id=cid,
        )
    if not isinstance(body.get("id_token"), str):
        raise OidcError("token_exchange_failed", "token response carries no id_token", correlation_id=cid)
    log("token_response", status_code=response.status_code, fields=sorted(body))
    return body


_JWT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "signature_invalid"),
    (jwt.ExpiredSignatureError, "token_expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid"),
    (jwt.InvalidAudienceError, "audience_mismatch"),
    (jwt.InvalidIssuerError, "issuer_mismatch"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
)


def _allowed_algorithms(config: ProviderConfig, metadata: ProviderMetadata) -> list[str]:
    allowed = [alg for alg in config.allowed_algorithms if alg in ALLOWED_ALGORITHMS]
    offered = metadata.id_token_signing_alg_values_supported
    return [alg for alg in allowed if alg in offered] if offered else allowed


async def validate_id_token(
    config: ProviderConfig,
    metadata: ProviderMetadata,
    id_token: str,
    *,
    nonce: str,
    http: OidcHttp,
    jwks_cache: JwksCache | None = None,
    correlation_id: str | None = None,
    log: _DebugLog | None = None,
) -> dict[str, Any]:
    """Check an ID token per OIDC Core §3.1.3.7 and return its claims, or raise OidcError."""
    cid = correlation_id
    log = log or _DebugLog(False, cid)
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise OidcError(
            "token_invalid", "the ID token is not a well-formed JWT", correlation_id=cid
        ) from None
    alg = header.get("alg")
    allowed = _allowed_algorithms(config, metadata)
    if not isinstance(alg, str) or alg not in allowed:
        raise OidcError(
            "alg_not_allowed", f"ID token algorithm {_shown(alg)} is not in {allowed}", correlation_id=cid
        )
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise OidcError("token_invalid", "the ID token's kid is not a string", correlation_id=cid)
    log(
        "id_token_header",
        alg=alg,
        kid=kid,
        ignored_headers=sorted(set(header) & {"jku", "x5u", "jwk", "x5c"}),
    )
    cache = _jwks_cache if jwks_cache is None else jwks_cache
    try:
        key = await cache.signing_key(metadata, kid, alg, http, log)
    except OidcError as exc:
        exc.correlation_id = exc.correlation_id or cid
        raise
    try:
        claims = jwt.decode(
            id_token,
            key,
            algorithms=[alg],
            audience=config.client_id,
            issuer=metadata.issuer,
            leeway=min(config.leeway_seconds, MAX_LEEWAY_SECONDS),
            options={"require": ["iss", "sub", "aud", "exp", "iat"], "verify_signature": True},
        )
    except jwt.PyJWTError as exc:
        for error_type, reason in _JWT_ERRORS:
            if isinstance(exc, error_type):
                raise OidcError(reason, f"ID token refused: {exc}", correlation_id=cid) from None
        raise OidcError(
            "token_invalid", f"ID token refused: {type(exc).__name__}", correlation_id=cid
        ) from None
    if claims.get("iss") != metadata.issuer:  # PyJWT compares too; keep the rule explicit here
        raise OidcError("issuer_mismatch", "ID token issuer differs", correlation_id=cid)
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (len(audiences) > 1 and azp is None) or (azp is not None and azp != config.client_id):
        raise OidcError(
            "audience_mismatch", "ID token azp is missing or not our client_id", correlation_id=cid
        )
    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
        raise OidcError("nonce_mismatch", "ID token nonce does not match this sign-in", correlation_id=cid)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise OidcError("token_invalid", "ID token sub is missing or too long", correlation_id=cid)
    log("id_token_valid", alg=alg, kid=kid, claim_names=sorted(claims))
    return claims


def _email_verified(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


async def _userinfo(
    metadata: ProviderMetadata, access_token: str, subject: str, http: OidcHttp, log: _DebugLog
) -> dict[str, Any] | None:
    """Userinfo claims when their `sub` is the ID token's (OIDC Core §5.3.2), else None."""
    if not metadata.userinfo_endpoint:
        return None
    try:
        response = await http.get(
            metadata.userinfo_endpoint,
            headers={"authorization": f"Bearer {access_token}", "accept": "application/json"},
        )
        body = response.json() if response.status_code == 200 else None
    except (egress.EgressError, httpx.HTTPError, ValueError, UnicodeDecodeError) as exc:
        log("userinfo_failed", error=type(exc).__name__)
        return None
    if not isinstance(body, dict) or body.get("sub") != subject:
        log("userinfo_ignored", status_code=response.status_code, reason="missing or different sub")
        return None
    log("userinfo", claim_names=sorted(body))
    return body


def _warn(exc: OidcError, tenant: str | None, issuer: str | None) -> None:
    structlog.get_logger("allting.auth.oidc").warning(
        "oidc_sign_in_refused",
        reason_code=exc.reason_code,
        detail=scrub_debug_value(exc.message),
        tenant_id=tenant,
        issuer=issuer,
        correlation_id=exc.correlation_id,
    )


async def complete_sign_in(
    config: ProviderConfig,
    metadata: ProviderMetadata,
    *,
    state: str | StateRecord,
    code: str | None,
    iss_param: str | None,
    store: StateStore | None,
    http: OidcHttp,
    tenant_id: uuid.UUID | str,
    error: str | None = None,
    jwks_cache: JwksCache | None = None,
    correlation_id: str | None = None,
    debug: DebugSwitch = False,
) -> VerifiedIdentity:
    """Finish a sign-in from the callback's `state`, `code` and RFC 9207 `iss`; raise OidcError.

    `tenant_id` is the tenant whose provider (`config`, `metadata`) handles this callback; the
    state must have been issued for it. `state` may be the raw value (consumed here from `store`)
    or a record already taken with `take_state`. `error` is the callback's `error` parameter.
    """
    # Every refusal carries a correlation id; before the state is read, it is this request's.
    cid = correlation_id or correlation_id_var.get() or uuid.uuid4().hex
    enabled = await _resolve_switch(debug)
    if http.client is None:
        async with OidcHttp(allowed_networks=http.allowed_networks, timeout=http.timeout) as scoped:
            return await _complete(
                config,
                metadata,
                state,
                code,
                iss_param,
                store,
                scoped,
                tenant_id,
                error,
                jwks_cache,
                cid,
                enabled,
            )
    return await _complete(
        config, metadata, state, code, iss_param, store, http, tenant_id, error, jwks_cache, cid, enabled
    )


async def _complete(
    config: ProviderConfig,
    metadata: ProviderMetadata,
    state: str | StateRecord,
    code: str | None,
    iss_param: str | None,
    store: StateStore | None,
    http: OidcHttp,
    tenant_id: uuid.UUID | str,
    error: str | None,
    jwks_cache: JwksCache | None,
    cid: str,
    enabled: bool,
) -> VerifiedIdentity:
    expected_tenant: str | None = None
    try:
        expected_tenant = _normalise_tenant(tenant_id)
        if isinstance(state, StateRecord):
            record = state
            if time.time() > record.expires_at:
                raise OidcError("state_expired", "this sign-in took too long; start again")
        else:
            if store is None:
                raise OidcError("state_missing", "no state store to read the state from")
            _DebugLog(enabled, cid)(
                "callback", has_code=bool(code), has_iss=iss_param is not None, error=error
            )
            record = await take_state(store, state, correlation_id=cid)
        cid = record.correlation_id
        log = _DebugLog(enabled, cid)
        log(
            "state_taken",
            tenant_id=record.tenant_id,
            issuer=record.issuer,
            age_seconds=round(time.time() - record.created_at, 1),
        )
        if record.tenant_id != expected_tenant:
            raise OidcError("state_tenant_mismatch", "this sign-in was started for another organisation")
        _check_pairing(config, metadata, cid)
        if record.issuer != metadata.issuer or record.client_id != config.client_id:
            raise OidcError("issuer_mismatch", "this sign-in was started at another identity provider")
        if iss_param is not None and iss_param != metadata.issuer:
            raise OidcError("issuer_mismatch", f"the callback's iss {_shown(iss_param)} is not this provider")
        if iss_param is None and metadata.authorization_response_iss_parameter_supported:
            raise OidcError("issuer_mismatch", "the provider promises an iss parameter but sent none")
        if error is not None:
            shown = _SAFE_ERROR.sub("", str(error).lower())[:60]
            raise OidcError("provider_error", f"the identity provider reported {shown!r}")
        if not code:
            raise OidcError("token_exchange_failed", "the callback carries no code")
        tokens = await _exchange_code(config, metadata, record, code, http, log)
        claims = await validate_id_token(
            config,
            metadata,
            tokens["id_token"],
            nonce=record.nonce,
            http=http,
            jwks_cache=jwks_cache,
            correlation_id=cid,
            log=log,
        )
        email, verified, name = claims.get("email"), claims.get("email_verified"), claims.get("name")
        access_token = tokens.get("access_token")
        if email is None and isinstance(access_token, str):
            userinfo = await _userinfo(metadata, access_token, claims["sub"], http, log)
            if userinfo:
                email, verified = userinfo.get("email"), userinfo.get("email_verified")
                name = name or userinfo.get("name")
        identity = VerifiedIdentity(
            issuer=metadata.issuer,
            subject=claims["sub"],
            email=email.strip() if isinstance(email, str) and email.strip() else None,
            email_verified=_email_verified(verified) and isinstance(email, str),
            name=name if isinstance(name, str) else None,
            tenant_id=uuid.UUID(record.tenant_id),
            id_token_claims=claims,
            correlation_id=cid,
            id_token=tokens["id_token"],
            extra=dict(record.extra),
        )
        log(
            "signed_in",
            issuer=identity.issuer,
            email_domain=identity.email_domain,
            email_verified=identity.email_verified,
        )
        return identity
    except OidcError as exc:
        exc.correlation_id = exc.correlation_id or cid
        _warn(exc, expected_tenant, metadata.issuer)
        debug_log(
            "refused",
            debug_enabled=enabled,
            correlation_id=exc.correlation_id,
            reason_code=exc.reason_code,
            detail=exc.message,
        )
        raise


def logout_url(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    id_token_hint: str | None = None,
    post_logout_redirect_uri: str | None = None,
    state: str | None = None,
) -> str | None:
    """The provider's RP-initiated logout URL, or None when it offers no end_session_endpoint."""
    if not metadata.end_session_endpoint:
        return None
    params = {"client_id": client_id}
    if id_token_hint:
        params["id_token_hint"] = id_token_hint
    if post_logout_redirect_uri:
        params["post_logout_redirect_uri"] = post_logout_redirect_uri
    if state:
        params["state"] = state
    return _with_query(metadata.end_session_endpoint, params)
