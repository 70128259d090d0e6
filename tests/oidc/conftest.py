"""Fixtures for the OIDC protocol tests: test providers on loopback, a Redis state store, a flow helper."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from allting.auth import oidc
from allting.testing.oidc_provider import OidcProvider, follow_authorization

# The providers listen on loopback, which the outbound guard refuses unless listed.
LOOPBACK = "127.0.0.1"
REDIRECT_URI = "https://allting.example/auth/callback"


@pytest.fixture(scope="session")
def idp():
    with OidcProvider(path="/realms/kommun-a") as provider:
        yield provider


@pytest.fixture(scope="session")
def hostile_idp():
    with OidcProvider(path="/realms/hostile") as provider:
        yield provider


@pytest.fixture(autouse=True)
def _fresh_providers(request):
    for name in ("idp", "hostile_idp"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()
    oidc.clear_caches()


@pytest.fixture
def store(runtime):
    return oidc.RedisStateStore()


@pytest.fixture
async def http():
    async with oidc.OidcHttp(allowed_networks=LOOPBACK) as shared:
        yield shared


def make_config(provider: OidcProvider, **overrides: Any) -> oidc.ProviderConfig:
    fields = {
        "discovery_endpoint": provider.discovery_url,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "allowed_domains": ("kommun.example",),
    }
    fields.update(overrides)
    return oidc.ProviderConfig(**fields)


@dataclass
class Flow:
    """One relying party bound to one provider and tenant; `sign_in` runs begin → browser → complete."""

    provider: OidcProvider
    config: oidc.ProviderConfig
    metadata: oidc.ProviderMetadata
    store: oidc.RedisStateStore
    http: oidc.OidcHttp
    tenant_id: uuid.UUID
    jwks_cache: oidc.JwksCache = field(default_factory=oidc.JwksCache)
    redirect_uri: str = REDIRECT_URI

    async def begin(self, **kwargs: Any) -> tuple[str, str]:
        kwargs.setdefault("tenant_id", self.tenant_id)
        return await oidc.begin_sign_in(
            self.config, self.metadata, redirect_uri=self.redirect_uri, store=self.store, **kwargs
        )

    async def complete(self, callback: dict[str, str], **overrides: Any) -> oidc.VerifiedIdentity:
        kwargs: dict[str, Any] = {
            "state": callback.get("state", ""),
            "code": callback.get("code"),
            "iss_param": callback.get("iss"),
            "error": callback.get("error"),
            "store": self.store,
            "http": self.http,
            "tenant_id": self.tenant_id,
            "jwks_cache": self.jwks_cache,
        }
        kwargs.update(overrides)
        config = kwargs.pop("config", self.config)
        metadata = kwargs.pop("metadata", self.metadata)
        return await oidc.complete_sign_in(config, metadata, **kwargs)

    async def authorize(self, **begin_kwargs: Any) -> dict[str, str]:
        url, _state = await self.begin(**begin_kwargs)
        return await follow_authorization(url)

    async def sign_in(self, *, begin: dict[str, Any] | None = None, **complete: Any) -> oidc.VerifiedIdentity:
        callback = await self.authorize(**(begin or {}))
        return await self.complete(callback, **complete)

    async def refused(self, *, begin: dict[str, Any] | None = None, **complete: Any) -> oidc.OidcError:
        with pytest.raises(oidc.OidcError) as caught:
            await self.sign_in(begin=begin, **complete)
        return caught.value


async def make_flow(provider: OidcProvider, store, http, **config_overrides: Any) -> Flow:
    config = make_config(provider, **config_overrides)
    metadata = await oidc.discover(config.discovery_endpoint, http=http, cache=oidc.MetadataCache())
    return Flow(provider, config, metadata, store, http, uuid.uuid4())


@pytest.fixture
def flow_factory(store, http):
    """`await flow_factory(provider, **config_overrides)`: a Flow against any provider."""

    async def factory(provider: OidcProvider, **config_overrides: Any) -> Flow:
        return await make_flow(provider, store, http, **config_overrides)

    return factory


@pytest.fixture
async def flow(idp, store, http) -> Flow:
    return await make_flow(idp, store, http)


@pytest.fixture
async def hostile_flow(hostile_idp, store, http) -> Flow:
    return await make_flow(hostile_idp, store, http)


@pytest.fixture
def oidc_logs(caplog):
    """Route structlog through stdlib logging so caplog sees the rendered lines. No scrubbing
    processor is installed: whatever the OIDC code emits is captured as it is."""
    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    caplog.set_level(logging.DEBUG)
    yield caplog
    structlog.configure(**previous)
