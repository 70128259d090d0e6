"""Who is calling: authentication at the edge, resolved once per request into a Ctx."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from allting.platform.db import DbSession
from allting.platform.errors import Forbidden, Unauthorized

WEB_SESSION_COOKIE = "allting_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Ctx:
    """The acting principal of one request or task."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID | None
    actor_type: str
    email: str | None = None
    role_key: str | None = None
    permissions: frozenset[str] = field(default_factory=frozenset)
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    assistant_id: uuid.UUID | None = None
    client_address: str | None = None
    correlation_id: str | None = None
    # Read with the caller's identity so a question need not look budgets up when the tenant has
    # none (the usual case); None when unknown, which means "look them up".
    tenant_has_budgets: bool | None = None

    def has(self, permission: str) -> bool:
        return permission in self.permissions

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Forbidden(
                f"This needs the '{permission}' permission",
                code="permission_denied",
                details={"permission": permission},
            )


def client_address(request: Request) -> str | None:
    return getattr(request.state, "client_address", None)


def correlation_id(request: Request) -> str | None:
    return getattr(request.state, "correlation_id", None)


def _check_csrf_header(request: Request) -> None:
    """A browser's cookie alone never authorises a change: the page must also send its CSRF token."""
    import hmac

    from allting.web.rendering import CSRF_COOKIE, CSRF_HEADER, csrf_token

    sent = request.headers.get(CSRF_HEADER)
    if not request.cookies.get(CSRF_COOKIE) or not sent or not hmac.compare_digest(sent, csrf_token(request)):
        raise Forbidden("The page's security token is missing or stale; reload the page", code="csrf_failed")


async def get_ctx(request: Request, db: DbSession) -> Ctx:
    from allting.auth import service as auth_service

    authorization = request.headers.get("authorization", "")
    api_key = request.headers.get("x-api-key")
    cookie = request.cookies.get(WEB_SESSION_COOKIE)
    if authorization.lower().startswith("bearer "):
        ctx = await auth_service.authenticate_token(db, authorization[7:].strip(), purpose="access")
    elif api_key:
        if api_key.startswith("ina_"):
            raise Unauthorized(
                "Assistant keys work only on /api/v1/assistants/{id}/sessions/",
                code="assistant_key_not_allowed",
            )
        ctx = await auth_service.authenticate_api_key(db, api_key)
    elif cookie:
        if request.method not in SAFE_METHODS:
            _check_csrf_header(request)
        ctx = await auth_service.authenticate_token(db, cookie, purpose="web")
    else:
        raise Unauthorized()
    ctx.client_address = client_address(request)
    ctx.correlation_id = correlation_id(request)
    request.state.ctx = ctx
    return ctx


CurrentCtx = Annotated[Ctx, Depends(get_ctx)]
