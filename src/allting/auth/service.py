"""Sign-in, sessions and the authentication of every request."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from allting.ai.models import Budget
from allting.audit import service as audit
from allting.auth.models import AuthSession
from allting.deps import Ctx
from allting.platform import ratelimit
from allting.platform.db import DriverStatement, system_transaction, utcnow
from allting.platform.errors import Forbidden, Invalid, TooManyRequests, Unauthorized
from allting.platform.http import request_client_address
from allting.platform.logging import correlation_id as current_correlation_id
from allting.platform.security import (
    InvalidToken,
    digest,
    issue_token,
    new_opaque_token,
    read_token,
    verify_password_off_loop,
)
from allting.platform.settings import get_settings
from allting.platform.tenancy import set_tenant
from allting.tenants.models import Tenant
from allting.users.models import ApiKey, Role, User

LOGIN_FAILED = "Incorrect e-mail or password"
# Each key's use is audited at most this often, so busy integrations do not flood the log.
API_KEY_USE_AUDIT_INTERVAL = timedelta(hours=1)


@dataclass
class IssuedSession:
    user: User
    session: AuthSession
    access_token: str
    access_expires_at: datetime
    refresh_token: str | None = None


def _account_key(email: str) -> str:
    return f"throttle:login:account:{digest(email.strip().lower())}"


def _address_key(address: str | None) -> str:
    return f"throttle:login:address:{address or 'unknown'}"


async def _check_throttle(email: str, address: str | None) -> None:
    settings = get_settings()
    for key, limit in (
        (_account_key(email), settings.login_max_failures_per_account),
        (_address_key(address), settings.login_max_failures_per_address),
    ):
        if retry_after := await ratelimit.blocked_for(key, limit):
            raise TooManyRequests(
                "Too many failed sign-in attempts; try again later",
                retry_after=retry_after,
                code="login_throttled",
            )


async def _candidates(db: AsyncSession, email: str, tenant_slug: str | None) -> list[User]:
    query = (
        select(User)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(func.lower(User.email) == email.strip().lower(), User.deleted_at.is_(None))
    )
    if tenant_slug:
        query = query.where(Tenant.slug == tenant_slug)
    return list(await db.scalars(query))


def _access_lifetime() -> timedelta:
    return timedelta(minutes=get_settings().access_token_minutes)


async def _start_session(
    db: AsyncSession, user: User, *, kind: str, client_address: str | None, user_agent: str | None
) -> IssuedSession:
    settings = get_settings()
    refresh = new_opaque_token() if kind == "api" else None
    lifetime = (
        timedelta(days=settings.refresh_token_days)
        if kind == "api"
        else timedelta(hours=settings.web_session_hours)
    )
    session = AuthSession(
        tenant_id=user.tenant_id,
        user_id=user.id,
        kind=kind,
        refresh_hash=digest(refresh) if refresh else None,
        expires_at=utcnow() + lifetime,
        client_address=client_address,
        user_agent=(user_agent or "")[:300],
    )
    db.add(session)
    await db.flush()
    purpose = "access" if kind == "api" else "web"
    token, expires_at = issue_token(
        settings.jwt_secret,
        purpose=purpose,
        user_id=user.id,
        tenant_id=user.tenant_id,
        session_id=session.id,
        lifetime=_access_lifetime() if kind == "api" else lifetime,
    )
    return IssuedSession(
        user=user,
        session=session,
        access_token=token,
        access_expires_at=expires_at,
        refresh_token=f"{session.id}.{refresh}" if refresh else None,
    )


async def login(
    email: str,
    password: str,
    *,
    tenant_slug: str | None,
    client_address: str | None,
    user_agent: str | None,
    correlation_id: str | None,
    kind: str = "api",
) -> IssuedSession:
    """Check e-mail and password; unknown e-mail and wrong password look exactly alike."""
    await _check_throttle(email, client_address)
    failure: Unauthorized | None = None
    async with system_transaction() as db:
        candidates = await _candidates(db, email, tenant_slug)
        tenants = {
            t.id: t
            for t in await db.scalars(
                select(Tenant).where(Tenant.id.in_([user.tenant_id for user in candidates]))
            )
        }
        matched = None
        for user in candidates or [None]:
            if (
                await verify_password_off_loop(user.password_hash if user else None, password)
                and user is not None
            ):
                matched = user
                break
        usable = (
            matched is not None and matched.state == "active" and tenants[matched.tenant_id].state == "active"
        )
        if usable:
            await ratelimit.clear(_account_key(email))
            matched.last_login_at = utcnow()
            issued = await _start_session(
                db, matched, kind=kind, client_address=client_address, user_agent=user_agent
            )
            await audit.record_event(
                db,
                tenant_id=matched.tenant_id,
                actor_type="user",
                actor_id=matched.id,
                actor_label=matched.email,
                action="auth.login",
                target_type="session",
                target_id=issued.session.id,
                client_address=client_address,
                correlation_id=correlation_id,
                changes={"kind": kind},
            )
        else:
            window = get_settings().login_failure_window_seconds
            await ratelimit.hit(_account_key(email), window)
            await ratelimit.hit(_address_key(client_address), window)
            target = matched or (candidates[0] if len(candidates) == 1 else None)
            reason = (
                "wrong_credentials"
                if matched is None
                else (
                    "tenant_suspended"
                    if tenants[matched.tenant_id].state != "active"
                    else f"user_{matched.state}"
                )
            )
            await audit.record_event(
                db,
                tenant_id=target.tenant_id if target else None,
                actor_type="user",
                actor_id=target.id if target else None,
                actor_label=email[:320],
                action="auth.login",
                outcome="failure",
                changes={"reason": reason},
                client_address=client_address,
                correlation_id=correlation_id,
            )
            failure = (
                Unauthorized("This account is disabled; contact your administrator", code="account_disabled")
                if matched is not None and matched.state == "disabled"
                else Unauthorized(LOGIN_FAILED, code="login_failed")
            )
    if failure is not None:
        raise failure
    return issued


async def refresh(refresh_token: str) -> IssuedSession:
    """Exchange a refresh token for a new access token; the refresh token rotates."""
    session_part, _, secret = refresh_token.partition(".")
    try:
        session_id = uuid.UUID(session_part)
    except ValueError as exc:
        raise Unauthorized("Invalid refresh token", code="invalid_token") from exc
    async with system_transaction() as db:
        session = await db.scalar(select(AuthSession).where(AuthSession.id == session_id))
        if (
            session is None
            or session.revoked_at is not None
            or session.expires_at <= utcnow()
            or session.refresh_hash != digest(secret)
        ):
            raise Unauthorized("Invalid refresh token", code="invalid_token")
        user = await db.scalar(select(User).where(User.id == session.user_id))
        tenant = await db.get(Tenant, session.tenant_id)
        if user is None or user.state != "active" or user.deleted_at or tenant.state != "active":
            raise Unauthorized("Invalid refresh token", code="invalid_token")
        new_secret = new_opaque_token()
        session.refresh_hash = digest(new_secret)
        token, expires_at = issue_token(
            get_settings().jwt_secret,
            purpose="access",
            user_id=user.id,
            tenant_id=user.tenant_id,
            session_id=session.id,
            lifetime=_access_lifetime(),
        )
        return IssuedSession(
            user=user,
            session=session,
            access_token=token,
            access_expires_at=expires_at,
            refresh_token=f"{session.id}.{new_secret}",
        )


async def logout(db: AsyncSession, ctx: Ctx) -> None:
    """End the current session: its access tokens, refresh token and cookie stop working."""
    if ctx.session_id is None:
        return
    session = await db.get(AuthSession, ctx.session_id)
    if session is not None and session.revoked_at is None:
        session.revoked_at = utcnow()
        await audit.record(db, ctx, "auth.logout", target_type="session", target_id=session.id)


def _context_query(with_session: bool):
    query = (
        select(
            User.tenant_id,
            User.email,
            User.state,
            Role.key,
            Role.permissions,
            Tenant.state.label("tenant_state"),
            exists(select(Budget.id).where(Budget.tenant_id == User.tenant_id)).label("has_budgets"),
        )
        .join(Role, Role.id == User.role_id)
        .join(Tenant, Tenant.id == User.tenant_id)
        .where(User.id == bindparam("user_id"), User.deleted_at.is_(None))
    )
    if with_session:
        query = query.add_columns(AuthSession.revoked_at, AuthSession.expires_at).outerjoin(
            AuthSession, (AuthSession.id == bindparam("session_id")) & (AuthSession.user_id == User.id)
        )
    return query


# Compiled once and run on the driver: this runs on every authenticated request, and SQLAlchemy's
# work per execution costs more than the query. The user's row holds the tenant, and row-level
# security keeps the query inside the tenant the caller's token named.
_CONTEXT_QUERY = DriverStatement(_context_query(with_session=False))
_CONTEXT_QUERY_WITH_SESSION = DriverStatement(_context_query(with_session=True))


async def _context_for(
    db: AsyncSession,
    user_id: uuid.UUID,
    *,
    actor_type: str,
    session_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
) -> Ctx:
    """Who is calling, read in one query: the user, their role, their tenant and (for tokens) the session."""
    if session_id is not None:
        row = await _CONTEXT_QUERY_WITH_SESSION.fetchrow(db, user_id=user_id, session_id=session_id)
        if (
            row is None
            or row["expires_at"] is None
            or row["revoked_at"] is not None
            or row["expires_at"] <= utcnow()
        ):
            raise Unauthorized("The session has ended; sign in again", code="session_ended")
    else:
        row = await _CONTEXT_QUERY.fetchrow(db, user_id=user_id)
    if row is None or row["state"] != "active":
        raise Unauthorized("The account is not active", code="account_inactive")
    if row["tenant_state"] != "active":
        raise Forbidden("This organisation is suspended", code="tenant_suspended")
    return Ctx(
        tenant_id=row["tenant_id"],
        user_id=user_id,
        actor_type=actor_type,
        email=row["email"],
        role_key=row["key"],
        permissions=frozenset(row["permissions"]),
        session_id=session_id,
        api_key_id=api_key_id,
        tenant_has_budgets=row["has_budgets"],
    )


async def context_for(
    db: AsyncSession,
    user_id: uuid.UUID,
    *,
    session_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
) -> Ctx:
    """The Ctx of someone already authenticated, read again now (for a long-lived connection);
    Unauthorized or Forbidden when their session, account or organisation has ended meanwhile."""
    actor_type = "api_key" if api_key_id is not None else "user"
    return await _context_for(
        db, user_id, actor_type=actor_type, session_id=session_id, api_key_id=api_key_id
    )


async def authenticate_token(db: AsyncSession, token: str, *, purpose: str) -> Ctx:
    """A bearer or cookie token: valid signature, live session, active user and tenant."""
    try:
        claims = read_token(get_settings().jwt_secret, token, purpose=purpose)
    except InvalidToken as exc:
        raise Unauthorized("Invalid or expired token", code="invalid_token") from exc
    await set_tenant(db, claims.tenant_id)
    return await _context_for(db, claims.user_id, actor_type="user", session_id=claims.session_id)


async def authenticate_api_key(db: AsyncSession, secret: str) -> Ctx:
    """A personal API key, looked up by digest across tenants, then bound to its tenant."""
    async with system_transaction() as system_db:
        key = await system_db.scalar(select(ApiKey).where(ApiKey.key_hash == digest(secret)))
        if key is None or key.revoked_at is not None or (key.expires_at and key.expires_at <= utcnow()):
            raise Unauthorized("Invalid API key", code="invalid_api_key")
        if key.last_used_at is None or key.last_used_at < utcnow() - API_KEY_USE_AUDIT_INTERVAL:
            await audit.record_event(
                system_db,
                tenant_id=key.tenant_id,
                actor_type="api_key",
                actor_id=key.user_id,
                action="api_key.used",
                target_type="api_key",
                target_id=key.id,
                changes={"prefix": key.prefix},
                client_address=request_client_address.get(),
                correlation_id=current_correlation_id.get(),
            )
        key.last_used_at = utcnow()
    await set_tenant(db, key.tenant_id)
    return await _context_for(db, key.user_id, actor_type="api_key", api_key_id=key.id)


INVITATION_LIFETIME = timedelta(days=7)


def invitation_token(user: User) -> str:
    """A signed, single-purpose link token that lets an invited person set a password."""
    token, _ = issue_token(
        get_settings().jwt_secret,
        purpose="invite",
        user_id=user.id,
        tenant_id=user.tenant_id,
        session_id=user.id,
        lifetime=INVITATION_LIFETIME,
    )
    return token


async def read_invitation(db: AsyncSession, token: str) -> uuid.UUID:
    try:
        claims = read_token(get_settings().jwt_secret, token, purpose="invite")
    except InvalidToken as exc:
        raise Invalid(
            "The invitation link is invalid or has expired", field="token", code="invitation_invalid"
        ) from exc
    await set_tenant(db, claims.tenant_id)
    return claims.user_id
