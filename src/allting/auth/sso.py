"""Single sign-on use cases: which provider serves a tenant, starting and finishing a sign-in,
binding identities to users, the per-tenant federation settings and the OIDC debug switch.

The protocol itself lives in `allting.auth.oidc`; this module wires it to tenants, users,
sessions, audit and Redis. Two modes (settings):

* single-tenant (default): one provider from OIDC_DISCOVERY_ENDPOINT / OIDC_CLIENT_ID /
  OIDC_CLIENT_SECRET, signing people into one tenant (OIDC_TENANT slug, else the first tenant);
  callback `/api/v1/auth/oidc/callback`.
* federation (FEDERATION_PER_TENANT_ENABLED=true): each tenant's own provider from its
  `tenant_federations` row; callback `/api/v1/auth/oidc/callback/<tenant id>`, a distinct redirect
  URI per provider, on top of the state-bound issuer and RFC 9207 `iss` checks (mix-up defence).

A sign-in is bound to the browser that started it: the start sets a short-lived HttpOnly cookie
whose digest is kept in the state record, and the callback refuses a state without it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from allting.audit import service as audit
from allting.auth import oidc
from allting.auth import service as auth_service
from allting.auth.models import TenantFederation, UserIdentity
from allting.platform import crypto, egress, ratelimit
from allting.platform.db import system_transaction, utcnow
from allting.platform.errors import AppError, Invalid, NotFound, TooManyRequests
from allting.platform.logging import correlation_id as current_correlation_id
from allting.platform.settings import get_settings
from allting.tenants.models import Tenant
from allting.users.models import Role, User
from allting.users.permissions import DEFAULT_ROLE_KEY, OWNER_ROLE_KEY

log = structlog.get_logger(__name__)

PROVIDER_TYPES = ("entra_id", "mobilityguard", "auth0", "okta", "generic")
PROVIDER_LABELS = {
    "entra_id": "Microsoft Entra ID",
    "mobilityguard": "MobilityGuard",
    "auth0": "Auth0",
    "okta": "Okta",
    "generic": "Single sign-on",
}
SECRET_PURPOSE = "oidc_client_secret"
SINGLE_PROVIDER_ID = "default"
CALLBACK_PATH = "/api/v1/auth/oidc/callback"
START_PATH = "/api/v1/auth/oidc/start"
BINDING_COOKIE = "allting_oidc"
BINDING_COOKIE_PATH = "/api/v1/auth/oidc"
DEBUG_KEY = "observability:oidc_debug"
DEBUG_MAX_MINUTES = 1440
# Starting a sign-in stores a state record in Redis; bound the rate per client address.
START_LIMIT_PER_ADDRESS = 60
START_LIMIT_WINDOW_SECONDS = 600
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")

# Refusals that are not protocol failures (the protocol's own codes are oidc.REASON_CODES).
SSO_REASON_CODES: dict[str, str] = {
    "browser_mismatch": "The callback reached another browser than the one that started the sign-in.",
    "redirect_mismatch": "The callback arrived at another redirect URI than the sign-in was started for.",
    "sso_not_configured": "Single sign-on is not configured for this organisation.",
    "tenant_unavailable": "The organisation is suspended or gone.",
    "account_disabled": "The account is disabled or deleted; the provider's word does not matter.",
    "account_not_found": "No account is bound to this identity and just-in-time creation is off.",
    "email_not_linkable": "The e-mail is unverified or its domain is not allowed for this organisation.",
    "identity_conflict": "The account is already bound to another identity at this provider.",
}


class SsoError(AppError):
    """A refused sign-in, carrying the reason code and the correlation id for support."""

    status_code = 401
    code = "sso_failed"

    def __init__(self, reason_code: str, message: str, *, correlation_id: str | None) -> None:
        super().__init__(
            message, code="sso_failed", details={"reason_code": reason_code, "correlation_id": correlation_id}
        )
        self.reason_code = reason_code
        self.correlation_id = correlation_id


# --------------------------------------------------------------------------------------------
# Which provider serves which tenant


@dataclass(frozen=True)
class TenantProvider:
    """The provider serving one tenant, with the tenant-side binding rules."""

    tenant_id: uuid.UUID
    tenant_slug: str
    tenant_name: str
    config: oidc.ProviderConfig
    jit_provisioning: bool
    default_role_id: uuid.UUID | None
    default_role_key: str | None
    federated: bool

    @property
    def label(self) -> str:
        if not self.federated:
            return get_settings().oidc_provider_label
        return PROVIDER_LABELS.get(self.config.provider, "Single sign-on")

    @property
    def provider_id(self) -> str:
        return self.tenant_slug if self.federated else SINGLE_PROVIDER_ID

    @property
    def redirect_uri(self) -> str:
        return redirect_uri_for(self.tenant_id if self.federated else None)


def federation_mode() -> bool:
    return get_settings().federation_per_tenant_enabled


def public_base() -> str:
    return get_settings().public_url.rstrip("/")


def redirect_uri_for(tenant_id: uuid.UUID | None) -> str:
    """The redirect URI to register at the provider: one per tenant in federation mode."""
    if tenant_id is None:
        return public_base() + CALLBACK_PATH
    return f"{public_base()}{CALLBACK_PATH}/{tenant_id}"


def single_tenant_configured() -> bool:
    settings = get_settings()
    return bool(settings.oidc_discovery_endpoint and settings.oidc_client_id and settings.oidc_client_secret)


async def _single_tenant(db: AsyncSession) -> Tenant | None:
    slug = get_settings().oidc_tenant
    query = select(Tenant)
    query = query.where(Tenant.slug == slug) if slug else query.order_by(Tenant.created_at).limit(1)
    return await db.scalar(query)


async def provider_for_tenant(db: AsyncSession, tenant: Tenant) -> TenantProvider | None:
    """The provider that signs people into `tenant` in the current mode, or None."""
    settings = get_settings()
    if not federation_mode():
        if not single_tenant_configured():
            return None
        chosen = await _single_tenant(db)
        if chosen is None or chosen.id != tenant.id:
            return None
        config = oidc.ProviderConfig(
            discovery_endpoint=settings.oidc_discovery_endpoint,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            allowed_domains=tuple(settings.oidc_allowed_domain_list),
        )
        return TenantProvider(
            tenant_id=tenant.id,
            tenant_slug=tenant.slug,
            tenant_name=tenant.display_name or tenant.name,
            config=config,
            jit_provisioning=settings.oidc_jit_provisioning,
            default_role_id=None,
            default_role_key=settings.oidc_default_role or DEFAULT_ROLE_KEY,
            federated=False,
        )
    row = await db.scalar(select(TenantFederation).where(TenantFederation.tenant_id == tenant.id))
    if row is None:
        return None
    secret = crypto.decrypt_secret(row.encrypted_client_secret, tenant_id=tenant.id, purpose=SECRET_PURPOSE)
    config = oidc.ProviderConfig(
        discovery_endpoint=row.discovery_endpoint,
        client_id=row.client_id,
        client_secret=secret,
        allowed_domains=tuple(row.allowed_domains or ()),
        issuer=row.issuer,
        provider=row.provider,
    )
    return TenantProvider(
        tenant_id=tenant.id,
        tenant_slug=tenant.slug,
        tenant_name=tenant.display_name or tenant.name,
        config=config,
        jit_provisioning=row.jit_provisioning,
        default_role_id=row.default_role_id,
        default_role_key=None if row.default_role_id else DEFAULT_ROLE_KEY,
        federated=True,
    )


async def _tenant_by_slug(db: AsyncSession, slug: str | None) -> Tenant | None:
    if not slug:
        return None
    return await db.scalar(select(Tenant).where(Tenant.slug == slug[:63]))


async def resolve_start_provider(db: AsyncSession, tenant_slug: str | None) -> TenantProvider:
    """The provider a sign-in starts at: the configured tenant (single) or the named one (federation).

    Unknown tenants, suspended tenants and tenants without a provider all answer alike."""
    if federation_mode():
        tenant = await _tenant_by_slug(db, tenant_slug)
    else:
        tenant = await _single_tenant(db) if single_tenant_configured() else None
    provider = None
    if tenant is not None and tenant.state == "active":
        try:
            provider = await provider_for_tenant(db, tenant)
        except (crypto.SecretError, oidc.OidcError) as exc:
            log.warning("sso_provider_unusable", tenant_id=str(tenant.id), error=str(exc))
            provider = None
    if provider is None:
        raise NotFound("Single sign-on is not available for this organisation", code="sso_not_configured")
    return provider


async def list_providers(tenant_slug: str | None) -> dict[str, Any]:
    """The sign-in buttons to show: in single-tenant mode the one provider; in federation mode the
    named tenant's provider (the login page finds the tenant by slug or e-mail domain)."""
    async with system_transaction() as db:
        providers: list[dict[str, Any]] = []
        if not federation_mode() or tenant_slug:
            try:
                provider = await resolve_start_provider(db, tenant_slug)
            except NotFound:
                provider = None
            if provider is not None:
                providers.append(_button(provider))
        return {
            "mode": "federation" if federation_mode() else "single_tenant",
            "providers": providers,
            "discover_by_email": federation_mode(),
            "tenant_list": federation_mode() and get_settings().oidc_public_tenant_list,
        }


def _button(provider: TenantProvider) -> dict[str, Any]:
    start = START_PATH + (f"?tenant={provider.tenant_slug}" if provider.federated else "")
    return {
        "id": provider.provider_id,
        "label": provider.label,
        "tenant": provider.tenant_slug if provider.federated else None,
        "start_url": start,
    }


async def public_tenants() -> list[dict[str, Any]]:
    """Tenants with a provider, for a sign-in page that lists them; only when the operator allows."""
    if not (federation_mode() and get_settings().oidc_public_tenant_list):
        raise NotFound("The organisation list is not public", code="tenant_list_disabled")
    async with system_transaction() as db:
        rows = await db.execute(
            select(Tenant.slug, Tenant.name, Tenant.display_name)
            .join(TenantFederation, TenantFederation.tenant_id == Tenant.id)
            .where(Tenant.state == "active")
            .order_by(Tenant.name)
        )
        return [{"slug": r.slug, "name": r.display_name or r.name} for r in rows]


async def discover_by_email(email: str) -> dict[str, Any]:
    """The tenant whose provider serves this e-mail domain (federation mode), for the login page."""
    domain = email.strip().lower().rpartition("@")[2]
    if not federation_mode() or not _DOMAIN.match(domain):
        raise NotFound("No single sign-on for this e-mail address", code="sso_not_found")
    async with system_transaction() as db:
        rows = list(
            await db.execute(
                select(Tenant, TenantFederation)
                .join(TenantFederation, TenantFederation.tenant_id == Tenant.id)
                .where(Tenant.state == "active", TenantFederation.allowed_domains.contains([domain]))
            )
        )
    if len(rows) != 1:
        # None, or ambiguous (two tenants claim the domain): the person picks by slug instead.
        raise NotFound("No single sign-on for this e-mail address", code="sso_not_found")
    tenant, row = rows[0]
    return {
        "tenant": tenant.slug,
        "name": tenant.display_name or tenant.name,
        "label": PROVIDER_LABELS.get(row.provider, "Single sign-on"),
        "start_url": f"{START_PATH}?tenant={tenant.slug}",
    }


# --------------------------------------------------------------------------------------------
# Debug switch


async def debug_state() -> dict[str, Any]:
    from allting.platform.redis import get_redis

    raw = await get_redis().get(DEBUG_KEY)
    data: dict[str, Any] = {}
    if raw:
        try:
            data = json.loads(raw)
        except ValueError:
            data = {}
    return {
        "enabled": bool(data),
        "enabled_at": data.get("enabled_at"),
        "enabled_by": data.get("enabled_by"),
        "expires_at": data.get("expires_at"),
        "reason": data.get("reason"),
        "backend": "redis",
    }


async def debug_enabled() -> bool:
    """Read per call by the OIDC core: the key's TTL switches debugging off on time."""
    from allting.platform.redis import get_redis

    try:
        return bool(await get_redis().exists(DEBUG_KEY))
    except Exception:  # Redis trouble must not break sign-in
        return False


async def set_debug(
    *,
    enabled: bool,
    duration_minutes: int,
    reason: str | None,
    actor: str,
    client_address: str | None,
    correlation_id: str | None,
) -> dict[str, Any]:
    from allting.platform.redis import get_redis

    redis = get_redis()
    before = await debug_state()
    if enabled:
        now = utcnow()
        record = {
            "enabled_at": now.isoformat(),
            "enabled_by": actor,
            "expires_at": (now + timedelta(minutes=duration_minutes)).isoformat(),
            "reason": reason,
        }
        await redis.set(DEBUG_KEY, json.dumps(record), ex=duration_minutes * 60)
    else:
        await redis.delete(DEBUG_KEY)
    async with system_transaction() as db:
        await audit.record_event(
            db,
            tenant_id=None,
            actor_type="sysadmin",
            actor_label=actor,
            action="observability.oidc_debug_enabled" if enabled else "observability.oidc_debug_disabled",
            target_type="setting",
            target_id="oidc_debug",
            changes={
                "reason": reason,
                "duration_minutes": duration_minutes if enabled else None,
                "was_enabled": before["enabled"],
            },
            client_address=client_address,
            correlation_id=correlation_id,
        )
    log.info(
        "oidc_debug_switched",
        enabled=enabled,
        duration_minutes=duration_minutes if enabled else None,
        reason=reason,
    )
    return await debug_state()


# --------------------------------------------------------------------------------------------
# Sign-in


def safe_next(value: str | None) -> str:
    """Only same-origin relative paths: "/x", never "//host", "/\\host" or a scheme."""
    if (
        not value
        or len(value) > 2000
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value)
    ):
        return "/"
    return value


def _binding_digest(binding: str) -> str:
    return hashlib.sha256(b"allting-oidc-binding|" + binding.encode()).hexdigest()


@dataclass(frozen=True)
class StartedSignIn:
    authorization_url: str
    binding: str
    expires_in: int
    correlation_id: str


async def start_sign_in(
    tenant_slug: str | None,
    *,
    next_path: str | None,
    client_address: str | None,
    login_hint: str | None = None,
) -> StartedSignIn:
    key = f"throttle:oidc-start:{client_address or 'unknown'}"
    if retry_after := await ratelimit.blocked_for(key, START_LIMIT_PER_ADDRESS):
        raise TooManyRequests("Too many sign-in attempts; try again later", retry_after=retry_after)
    await ratelimit.hit(key, START_LIMIT_WINDOW_SECONDS)
    async with system_transaction() as db:
        provider = await resolve_start_provider(db, tenant_slug)
    cid = current_correlation_id.get() or uuid.uuid4().hex
    try:
        metadata = await oidc.discover(
            provider.config.discovery_endpoint, expected_issuer=provider.config.issuer
        )
        binding = secrets.token_urlsafe(32)
        extra_params = {"login_hint": login_hint[:320]} if login_hint else None
        url, _state = await oidc.begin_sign_in(
            provider.config,
            metadata,
            redirect_uri=provider.redirect_uri,
            tenant_id=provider.tenant_id,
            store=oidc.RedisStateStore(),
            correlation_id=cid,
            extra={"next": safe_next(next_path), "binding": _binding_digest(binding)},
            extra_params=extra_params,
            debug=debug_enabled,
        )
    except oidc.OidcError as exc:
        await _audit_failure(provider.tenant_id, exc.reason_code, exc.correlation_id or cid, client_address)
        raise SsoError(
            exc.reason_code, _public_message(exc.reason_code), correlation_id=exc.correlation_id or cid
        ) from None
    return StartedSignIn(url, binding, oidc.STATE_TTL_SECONDS, cid)


@dataclass(frozen=True)
class CompletedSignIn:
    issued: auth_service.IssuedSession
    next_path: str
    correlation_id: str


def _public_message(reason_code: str) -> str:
    if reason_code == "account_disabled":
        return "This account is disabled. Contact your administrator."
    if reason_code in ("account_not_found", "email_not_linkable", "identity_conflict"):
        return "There is no account for you in this organisation. Contact your administrator."
    if reason_code in ("sso_not_configured", "tenant_unavailable"):
        return "Single sign-on is not available for this organisation."
    if reason_code in ("state_expired",):
        return "The sign-in took too long. Please start again."
    return "The sign-in could not be completed. Please start again."


async def _audit_failure(
    tenant_id: uuid.UUID | None,
    reason_code: str,
    cid: str | None,
    client_address: str | None,
    *,
    issuer: str | None = None,
    user: User | None = None,
    subject: str | None = None,
) -> None:
    async with system_transaction() as db:
        await audit.record_event(
            db,
            tenant_id=tenant_id,
            actor_type="user",
            actor_id=user.id if user else None,
            actor_label=(user.email if user else None),
            action="auth.sso_login",
            outcome="failure",
            changes={"reason_code": reason_code, "issuer": issuer, "subject": subject},
            client_address=client_address,
            correlation_id=cid,
        )


async def complete_sign_in(
    *,
    callback_tenant_id: uuid.UUID | None,
    state: str | None,
    code: str | None,
    iss: str | None,
    error: str | None,
    binding: str | None,
    kind: str,
    client_address: str | None,
    user_agent: str | None,
) -> CompletedSignIn:
    """Finish a sign-in from the callback; refusals raise SsoError (audited, no session created)."""
    cid = current_correlation_id.get() or uuid.uuid4().hex
    tenant_id: uuid.UUID | None = callback_tenant_id
    issuer: str | None = None
    debug_on = await debug_enabled()
    try:
        record = await oidc.take_state(oidc.RedisStateStore(), state or "", correlation_id=cid)
        cid = record.correlation_id
        tenant_id = uuid.UUID(record.tenant_id)
        oidc.debug_log("callback_received", debug_enabled=debug_on, correlation_id=cid, kind=kind)
        expected = record.extra.get("binding")
        if not binding or not expected or not hmac.compare_digest(_binding_digest(binding), expected):
            raise SsoError("browser_mismatch", _public_message("browser_mismatch"), correlation_id=cid)
        if record.redirect_uri != redirect_uri_for(callback_tenant_id):
            raise SsoError("redirect_mismatch", _public_message("redirect_mismatch"), correlation_id=cid)
        async with system_transaction() as db:
            tenant = await db.get(Tenant, tenant_id)
            provider = None
            if tenant is not None and tenant.state == "active":
                provider = await provider_for_tenant(db, tenant)
        if tenant is None or tenant.state != "active":
            raise SsoError("tenant_unavailable", _public_message("tenant_unavailable"), correlation_id=cid)
        if provider is None:
            raise SsoError("sso_not_configured", _public_message("sso_not_configured"), correlation_id=cid)
        issuer = provider.config.expected_issuer
        metadata = await oidc.discover(
            provider.config.discovery_endpoint, expected_issuer=provider.config.issuer
        )
        identity = await oidc.complete_sign_in(
            provider.config,
            metadata,
            state=record,
            code=code,
            iss_param=iss,
            error=error,
            store=None,
            http=oidc.OidcHttp(),
            # The tenant this callback URL belongs to (federation) must be the state's tenant.
            tenant_id=callback_tenant_id or tenant_id,
            correlation_id=cid,
            debug=debug_on,
        )
        issuer = identity.issuer
        issued = await _bind_and_start_session(
            provider,
            identity,
            kind=kind,
            client_address=client_address,
            user_agent=user_agent,
            debug=debug_on,
        )
    except oidc.OidcError as exc:
        cid = exc.correlation_id or cid
        await _audit_failure(tenant_id, exc.reason_code, cid, client_address, issuer=issuer)
        raise SsoError(exc.reason_code, _public_message(exc.reason_code), correlation_id=cid) from None
    except crypto.SecretError:
        await _audit_failure(tenant_id, "config_invalid", cid, client_address, issuer=issuer)
        raise SsoError("config_invalid", _public_message("config_invalid"), correlation_id=cid) from None
    except SsoError as exc:
        if not getattr(exc, "audited", False):
            await _audit_failure(
                tenant_id, exc.reason_code, exc.correlation_id, client_address, issuer=issuer
            )
        oidc.debug_log(
            "refused", debug_enabled=debug_on, correlation_id=exc.correlation_id, reason_code=exc.reason_code
        )
        raise
    return CompletedSignIn(issued, record.extra.get("next") or "/", cid)


async def _role_for_new_user(db: AsyncSession, provider: TenantProvider) -> Role | None:
    if provider.default_role_id is not None:
        role = await db.scalar(
            select(Role).where(Role.id == provider.default_role_id, Role.tenant_id == provider.tenant_id)
        )
        if role is not None:
            return role
    key = provider.default_role_key or DEFAULT_ROLE_KEY
    if key == OWNER_ROLE_KEY:  # never hand out ownership to whoever the provider asserts
        key = DEFAULT_ROLE_KEY
    return await db.scalar(select(Role).where(Role.key == key, Role.tenant_id == provider.tenant_id))


@dataclass
class _Binding:
    """Whom an identity signs in as and how it was found, or why it may not sign in."""

    user: User | None = None
    identity: UserIdentity | None = None
    method: str = "identity"
    failure: SsoError | None = None
    failure_user: User | None = None


# Tries at finding or binding the person: the first can collide with a concurrent first sign-in,
# the next sees what that one committed. More are only for a burst of sign-ins at once.
BIND_ATTEMPTS = 3


async def _find_or_bind_user(
    db: AsyncSession, provider: TenantProvider, identity: oidc.VerifiedIdentity, *, client_address: str | None
) -> _Binding:
    """The user this identity belongs to: bound before, linked by e-mail or created just in time.
    New rows are flushed here, so a unique constraint a concurrent sign-in won raises here."""
    cid = identity.correlation_id
    tenant_id = provider.tenant_id
    user: User | None = None
    bound = await db.scalar(
        select(UserIdentity).where(
            UserIdentity.tenant_id == tenant_id,
            UserIdentity.issuer == identity.issuer,
            UserIdentity.subject == identity.subject,
        )
    )
    if bound is not None:
        user = await db.scalar(select(User).where(User.id == bound.user_id, User.tenant_id == tenant_id))
        if user is None or user.deleted_at is not None or user.state != "active":
            return _Binding(
                failure=SsoError("account_disabled", _public_message("account_disabled"), correlation_id=cid),
                failure_user=user,
            )
        return _Binding(user=user, identity=bound)
    email = identity.linkable_email(provider.config.allowed_domains)
    if email is not None:
        user = await db.scalar(
            select(User).where(
                User.tenant_id == tenant_id,
                func.lower(User.email) == email,
                User.deleted_at.is_(None),
            )
        )
    if user is not None:
        if user.state != "active":
            return _Binding(
                failure=SsoError("account_disabled", _public_message("account_disabled"), correlation_id=cid),
                failure_user=user,
            )
        if await db.scalar(
            select(UserIdentity.id).where(
                UserIdentity.tenant_id == tenant_id,
                UserIdentity.user_id == user.id,
                UserIdentity.issuer == identity.issuer,
            )
        ):
            # The account already has another subject at this provider: a changed or
            # recycled e-mail must not take it over.
            return _Binding(
                failure=SsoError(
                    "identity_conflict", _public_message("identity_conflict"), correlation_id=cid
                ),
                failure_user=user,
            )
        method = "linked_by_email"
    elif email is None:
        reason = "email_not_linkable" if provider.jit_provisioning or identity.email else "account_not_found"
        return _Binding(failure=SsoError(reason, _public_message(reason), correlation_id=cid))
    elif not provider.jit_provisioning:
        return _Binding(
            failure=SsoError("account_not_found", _public_message("account_not_found"), correlation_id=cid)
        )
    else:
        role = await _role_for_new_user(db, provider)
        if role is None:
            return _Binding(
                failure=SsoError(
                    "account_not_found", _public_message("account_not_found"), correlation_id=cid
                )
            )
        method = "created"
        user = User(
            tenant_id=tenant_id,
            email=email,
            name=(identity.name or "")[:200] or None,
            role_id=role.id,
            state="active",
            preferences={},
            password_hash=None,
        )
        db.add(user)
        await db.flush()
        await audit.record_event(
            db,
            tenant_id=tenant_id,
            actor_type="system",
            actor_label="sso",
            action="user.created",
            target_type="user",
            target_id=user.id,
            changes={"email": user.email, "role": role.name, "via": "sso_jit", "issuer": identity.issuer},
            client_address=client_address,
            correlation_id=cid,
        )
    bound = UserIdentity(
        tenant_id=tenant_id,
        user_id=user.id,
        issuer=identity.issuer,
        subject=identity.subject,
        email=identity.email,
    )
    db.add(bound)
    await db.flush()
    return _Binding(user=user, identity=bound, method=method)


async def _bind_and_start_session(
    provider: TenantProvider,
    identity: oidc.VerifiedIdentity,
    *,
    kind: str,
    client_address: str | None,
    user_agent: str | None,
    debug: bool,
) -> auth_service.IssuedSession:
    cid = identity.correlation_id
    tenant_id = provider.tenant_id
    async with system_transaction() as db:
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                async with db.begin_nested():
                    binding = await _find_or_bind_user(db, provider, identity, client_address=client_address)
                break
            except IntegrityError:
                # A concurrent first sign-in of the same person (two tabs, a double click) created
                # the user or bound the identity first and committed. The savepoint undid this
                # attempt's rows; the next attempt finds theirs, so both sign in as one user.
                if attempt == BIND_ATTEMPTS:
                    raise
                log.info("sso.bind_retried_after_concurrent_sign_in", correlation_id=cid, attempt=attempt)
        user, bound, method = binding.user, binding.identity, binding.method
        failure, failure_user = binding.failure, binding.failure_user
        if failure is None:
            assert user is not None and bound is not None
            now = utcnow()
            user.last_login_at = now
            bound.last_login_at = now
            bound.email = identity.email
            await db.flush()
            issued = await auth_service._start_session(
                db, user, kind=kind, client_address=client_address, user_agent=user_agent
            )
            await audit.record_event(
                db,
                tenant_id=tenant_id,
                actor_type="user",
                actor_id=user.id,
                actor_label=user.email,
                action="auth.sso_login",
                target_type="session",
                target_id=issued.session.id,
                changes={"kind": kind, "issuer": identity.issuer, "method": method},
                client_address=client_address,
                correlation_id=cid,
            )
            oidc.debug_log(
                "session_started", debug_enabled=debug, correlation_id=cid, method=method, kind=kind
            )
            return issued
    await _audit_failure(
        tenant_id,
        failure.reason_code,
        cid,
        client_address,
        issuer=identity.issuer,
        user=failure_user,
        subject=identity.subject,
    )
    failure.audited = True  # type: ignore[attr-defined]
    raise failure


# --------------------------------------------------------------------------------------------
# Sign-out


async def provider_logout_url(tenant_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    """The provider's end-session URL when this user signs in through it and it offers one."""
    async with system_transaction() as db:
        tenant = await db.get(Tenant, tenant_id)
        if tenant is None:
            return None
        try:
            provider = await provider_for_tenant(db, tenant)
        except (crypto.SecretError, oidc.OidcError):
            return None
        if provider is None:
            return None
        has_identity = await db.scalar(
            select(UserIdentity.id).where(
                UserIdentity.tenant_id == tenant_id,
                UserIdentity.user_id == user_id,
                UserIdentity.issuer == provider.config.expected_issuer,
            )
        )
    if not has_identity:
        return None
    try:
        metadata = await oidc.discover(
            provider.config.discovery_endpoint, expected_issuer=provider.config.issuer
        )
    except oidc.OidcError:
        return None
    return oidc.logout_url(
        metadata, client_id=provider.config.client_id, post_logout_redirect_uri=public_base() + "/login"
    )


# --------------------------------------------------------------------------------------------
# Federation settings (sysadmin)


def normalise_domains(domains: list[str]) -> list[str]:
    cleaned: list[str] = []
    for raw in domains:
        domain = raw.strip().lower().lstrip("@").rstrip(".")
        if not _DOMAIN.match(domain):
            raise Invalid(f"'{raw[:100]}' is not a domain name", field="allowed_domains")
        if domain not in cleaned:
            cleaned.append(domain)
    return cleaned


async def _check_discovery_address(discovery_endpoint: str) -> str:
    """The issuer the URL names; refuse URLs the outbound guard would refuse (private addresses)."""
    try:
        issuer = oidc.issuer_from_discovery_url(discovery_endpoint)
        oidc.ProviderConfig(discovery_endpoint=discovery_endpoint, client_id="x", client_secret="x")
    except oidc.OidcError as exc:
        raise Invalid(exc.message, field="discovery_endpoint", code="config_invalid") from None
    try:
        egress.check_url_form(discovery_endpoint)
        await egress.check_url_async(discovery_endpoint)
    except egress.EgressBlocked as exc:
        raise Invalid(
            f"The discovery endpoint is not an allowed destination: {exc.reason}",
            field="discovery_endpoint",
            code="egress_blocked",
        ) from None
    except egress.EgressError:
        pass  # does not resolve now: stored, and the test action says so
    return issuer


async def _resolve_role(db: AsyncSession, tenant_id: uuid.UUID, value: str | None) -> Role | None:
    if value is None:
        return None
    query = select(Role).where(Role.tenant_id == tenant_id)
    try:
        query = query.where(Role.id == uuid.UUID(str(value)))
    except ValueError:
        query = query.where(Role.key == value)
    role = await db.scalar(query)
    if role is None:
        raise Invalid("No such role in this organisation", field="default_role")
    if role.key == OWNER_ROLE_KEY:
        raise Invalid("New accounts cannot be made owners", field="default_role")
    return role


async def federation_read(db: AsyncSession, tenant: Tenant, row: TenantFederation) -> dict[str, Any]:
    role = await db.get(Role, row.default_role_id) if row.default_role_id else None
    try:
        crypto.decrypt_secret(row.encrypted_client_secret, tenant_id=tenant.id, purpose=SECRET_PURPOSE)
        status = "encrypted"
    except crypto.SecretError:
        status = "unreadable"
    return {
        "tenant_id": tenant.id,
        "provider": row.provider,
        "discovery_endpoint": row.discovery_endpoint,
        "client_id": row.client_id,
        "masked_secret": row.secret_hint,
        "issuer": row.issuer,
        "allowed_domains": list(row.allowed_domains or []),
        "jit_provisioning": row.jit_provisioning,
        "default_role": ({"id": role.id, "key": role.key, "name": role.name} if role else None),
        "redirect_uri": redirect_uri_for(tenant.id),
        "configured_at": row.configured_at,
        "encryption_status": status,
        "federation_enabled": federation_mode(),
    }


async def _tenant(db: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    tenant = await db.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("Tenant not found")
    return tenant


async def get_federation(db: AsyncSession, tenant_id: uuid.UUID) -> dict[str, Any]:
    tenant = await _tenant(db, tenant_id)
    row = await db.scalar(select(TenantFederation).where(TenantFederation.tenant_id == tenant.id))
    if row is None:
        raise NotFound("No identity provider is configured for this tenant", code="federation_not_configured")
    return await federation_read(db, tenant, row)


async def put_federation(
    db: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    provider: str,
    discovery_endpoint: str,
    client_id: str,
    client_secret: str | None,
    allowed_domains: list[str],
    jit_provisioning: bool | None,
    default_role: str | None,
    client_address: str | None,
    correlation_id: str | None,
) -> dict[str, Any]:
    tenant = await _tenant(db, tenant_id)
    if provider not in PROVIDER_TYPES:
        raise Invalid(f"provider must be one of {', '.join(PROVIDER_TYPES)}", field="provider")
    domains = normalise_domains(allowed_domains)
    issuer = await _check_discovery_address(discovery_endpoint)
    role = await _resolve_role(db, tenant.id, default_role)
    row = await db.scalar(select(TenantFederation).where(TenantFederation.tenant_id == tenant.id))
    created = row is None
    if created and not client_secret:
        raise Invalid("client_secret is required", field="client_secret")
    if row is None:
        row = TenantFederation(tenant_id=tenant.id, jit_provisioning=False)
        db.add(row)
    changes: dict[str, Any] = {
        "provider": provider,
        "discovery_endpoint": discovery_endpoint,
        "client_id": client_id,
        "allowed_domains": domains,
        "client_secret_changed": bool(client_secret),
    }
    row.provider = provider
    row.discovery_endpoint = discovery_endpoint
    row.issuer = issuer
    row.client_id = client_id
    row.allowed_domains = domains
    if client_secret:
        row.encrypted_client_secret = crypto.encrypt_secret(
            client_secret, tenant_id=tenant.id, purpose=SECRET_PURPOSE
        )
        row.secret_hint = crypto.mask_secret(client_secret)
    if jit_provisioning is not None:
        row.jit_provisioning = jit_provisioning
        changes["jit_provisioning"] = jit_provisioning
    if default_role is not None or created:
        row.default_role_id = role.id if role else None
        changes["default_role"] = role.name if role else None
    row.configured_at = utcnow()
    await db.flush()
    await audit.record_event(
        db,
        tenant_id=tenant.id,
        actor_type="sysadmin",
        actor_label="sysadmin",
        action="tenant.federation_created" if created else "tenant.federation_updated",
        target_type="tenant",
        target_id=tenant.id,
        changes=changes,
        client_address=client_address,
        correlation_id=correlation_id,
    )
    oidc.clear_caches()
    return await federation_read(db, tenant, row)


async def delete_federation(
    db: AsyncSession, tenant_id: uuid.UUID, *, client_address: str | None, correlation_id: str | None
) -> None:
    tenant = await _tenant(db, tenant_id)
    row = await db.scalar(select(TenantFederation).where(TenantFederation.tenant_id == tenant.id))
    if row is None:
        raise NotFound("No identity provider is configured for this tenant", code="federation_not_configured")
    await db.delete(row)
    await audit.record_event(
        db,
        tenant_id=tenant.id,
        actor_type="sysadmin",
        actor_label="sysadmin",
        action="tenant.federation_deleted",
        target_type="tenant",
        target_id=tenant.id,
        changes={"provider": row.provider, "issuer": row.issuer},
        client_address=client_address,
        correlation_id=correlation_id,
    )
    oidc.clear_caches()


async def check_federation(
    db: AsyncSession, tenant_id: uuid.UUID, *, client_address: str | None, correlation_id: str | None
) -> dict[str, Any]:
    """Run discovery (fresh) and fetch the JWKS through the outbound guard; report what happened."""
    tenant = await _tenant(db, tenant_id)
    row = await db.scalar(select(TenantFederation).where(TenantFederation.tenant_id == tenant.id))
    if row is None:
        raise NotFound("No identity provider is configured for this tenant", code="federation_not_configured")
    result: dict[str, Any] = {"ok": False, "issuer": row.issuer, "redirect_uri": redirect_uri_for(tenant.id)}
    try:
        crypto.decrypt_secret(row.encrypted_client_secret, tenant_id=tenant.id, purpose=SECRET_PURPOSE)
    except crypto.SecretError as exc:
        result.update(reason_code="secret_unreadable", message=str(exc))
        return result
    try:
        async with oidc.OidcHttp() as http:
            metadata = await oidc.discover(
                row.discovery_endpoint, expected_issuer=row.issuer, force_refresh=True, http=http
            )
            response = await http.get(metadata.jwks_uri, headers={"accept": "application/json"})
            keys = response.json().get("keys") if response.status_code == 200 else None
            if not isinstance(keys, list):
                raise oidc.OidcError("jwks_fetch_failed", f"the JWKS answered HTTP {response.status_code}")
    except oidc.OidcError as exc:
        result.update(reason_code=exc.reason_code, message=exc.message)
    except egress.EgressBlocked as exc:
        result.update(reason_code="egress_blocked", message=exc.reason)
    except (egress.EgressError, ValueError) as exc:
        result.update(reason_code="jwks_fetch_failed", message=str(exc)[:300])
    else:
        result.update(
            ok=True,
            issuer=metadata.issuer,
            authorization_endpoint=metadata.authorization_endpoint,
            token_endpoint=metadata.token_endpoint,
            jwks_uri=metadata.jwks_uri,
            end_session_endpoint=metadata.end_session_endpoint,
            iss_parameter_supported=metadata.authorization_response_iss_parameter_supported,
            signing_keys=len(keys),
        )
    await audit.record_event(
        db,
        tenant_id=tenant.id,
        actor_type="sysadmin",
        actor_label="sysadmin",
        action="tenant.federation_tested",
        target_type="tenant",
        target_id=tenant.id,
        changes={"ok": result["ok"], "reason_code": result.get("reason_code")},
        outcome="success" if result["ok"] else "failure",
        client_address=client_address,
        correlation_id=correlation_id,
    )
    return result
