"""Single sign-on routes: the public sign-in flow under /api/v1/auth/… and the sysadmin settings."""

from __future__ import annotations

import html
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from allting.auth import service as auth_service
from allting.auth import sso
from allting.deps import WEB_SESSION_COOKIE, CurrentCtx, client_address, correlation_id
from allting.platform.db import DbSession, utcnow
from allting.platform.settings import get_settings
from allting.sysadmin.api import SystemDb, require_sysadmin

router = APIRouter(tags=["auth"])
sysadmin_router = APIRouter(prefix="/sysadmin", tags=["sysadmin"], dependencies=[Depends(require_sysadmin)])

NO_STORE = {"Cache-Control": "no-store"}


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or get_settings().public_url.startswith("https://")


def _wants_json(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "json"
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


# --------------------------------------------------------------------------------------------
# Public: which buttons, which tenant


@router.get("/auth/oidc/providers")
async def oidc_providers(tenant: Annotated[str | None, Query(max_length=63)] = None) -> dict[str, Any]:
    """The single sign-on buttons for the login page: `[{id, label, tenant, start_url}]`.

    Single-tenant mode lists the one provider; federation mode lists the provider of the tenant
    named by `tenant` (slug), or none: the page then asks for the e-mail (`/auth/oidc/discover`)."""
    return await sso.list_providers(tenant)


@router.get("/auth/tenants")
async def sso_tenants() -> dict[str, Any]:
    """Organisations with single sign-on, only when OIDC_PUBLIC_TENANT_LIST=true (else 404)."""
    return {"tenants": await sso.public_tenants()}


@router.get("/auth/oidc/discover")
async def oidc_discover(email: Annotated[str, Query(max_length=320)]) -> dict[str, Any]:
    """The organisation whose identity provider serves this e-mail domain (federation mode)."""
    return await sso.discover_by_email(email)


# --------------------------------------------------------------------------------------------
# Sign-in


class StartResponse(BaseModel):
    authorization_url: str
    expires_in: int
    correlation_id: str


@router.get(
    "/auth/oidc/start",
    response_model=None,
    responses={
        302: {"description": "Redirect to the identity provider"},
        200: {"model": StartResponse, "description": "With format=json: the URL to open"},
    },
)
async def oidc_start(
    request: Request,
    tenant: Annotated[str | None, Query(max_length=63)] = None,
    next: Annotated[str | None, Query(max_length=2000)] = None,
    login_hint: Annotated[str | None, Query(max_length=320)] = None,
    format: Annotated[Literal["redirect", "json"] | None, Query()] = None,
):
    """Start a sign-in: 302 to the identity provider (or `format=json`: the URL to open).

    Sets a short-lived HttpOnly cookie that binds the sign-in to this browser; the callback
    refuses a state that arrives without it."""
    try:
        started = await sso.start_sign_in(
            tenant, next_path=next, client_address=client_address(request), login_hint=login_hint
        )
    except sso.SsoError as exc:
        return _failure(request, exc, json=_wants_json(request, format))
    if _wants_json(request, format):
        response: Response = JSONResponse(
            StartResponse(
                authorization_url=started.authorization_url,
                expires_in=started.expires_in,
                correlation_id=started.correlation_id,
            ).model_dump(),
            headers=NO_STORE,
        )
    else:
        response = RedirectResponse(started.authorization_url, status_code=302, headers=NO_STORE)
    response.set_cookie(
        sso.BINDING_COOKIE,
        started.binding,
        max_age=started.expires_in,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path=sso.BINDING_COOKIE_PATH,
    )
    return response


async def _callback(request: Request, tenant_id: uuid.UUID | None, format: str | None) -> Response:
    params = request.query_params
    as_json = _wants_json(request, format)
    try:
        done = await sso.complete_sign_in(
            callback_tenant_id=tenant_id,
            state=params.get("state"),
            code=params.get("code"),
            iss=params.get("iss"),
            error=params.get("error"),
            binding=request.cookies.get(sso.BINDING_COOKIE),
            kind="api" if as_json else "web",
            client_address=client_address(request),
            user_agent=request.headers.get("user-agent"),
        )
    except sso.SsoError as exc:
        response = _failure(request, exc, json=as_json)
        response.delete_cookie(sso.BINDING_COOKIE, path=sso.BINDING_COOKIE_PATH)
        return response
    issued = done.issued
    expires_in = int((issued.access_expires_at - utcnow()).total_seconds())
    if as_json:
        response = JSONResponse(
            {
                "access_token": issued.access_token,
                "token_type": "bearer",
                "expires_in": expires_in,
                "refresh_token": issued.refresh_token,
            },
            headers=NO_STORE,
        )
    else:
        response = RedirectResponse(sso.safe_next(done.next_path), status_code=303, headers=NO_STORE)
        response.set_cookie(
            WEB_SESSION_COOKIE,
            issued.access_token,
            max_age=max(expires_in, 60),
            httponly=True,
            samesite="lax",
            secure=_secure(request),
            path="/",
        )
    response.delete_cookie(sso.BINDING_COOKIE, path=sso.BINDING_COOKIE_PATH)
    return response


@router.get("/auth/oidc/callback", include_in_schema=True)
async def oidc_callback(
    request: Request, format: Annotated[Literal["redirect", "json"] | None, Query()] = None
) -> Response:
    """The redirect URI of the single-tenant provider (`?code&state&iss`, or `?error`)."""
    return await _callback(request, None, format)


@router.get("/auth/oidc/callback/{tenant_id}")
async def oidc_tenant_callback(
    request: Request,
    tenant_id: uuid.UUID,
    format: Annotated[Literal["redirect", "json"] | None, Query()] = None,
) -> Response:
    """The redirect URI of one tenant's provider (federation mode): a distinct URI per provider."""
    return await _callback(request, tenant_id, format)


_FAILURE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in failed</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main>
<h1>Sign-in failed</h1>
<p>{message}</p>
<p>If you contact support, give them this reference: <code id="correlation-id">{cid}</code>
(reason: <code id="reason-code">{reason}</code>).</p>
<p><a href="/login">Back to sign-in</a></p>
</main></body></html>
"""


def _failure(request: Request, exc: sso.SsoError, *, json: bool) -> Response:
    status = 404 if exc.reason_code == "sso_not_configured" else 401
    if json:
        return JSONResponse(
            {
                "code": "sso_failed",
                "message": exc.message,
                "details": {"reason_code": exc.reason_code},
                "correlation_id": exc.correlation_id,
            },
            status_code=status,
            headers=NO_STORE,
        )
    body = _FAILURE_PAGE.format(
        message=html.escape(exc.message),
        cid=html.escape(exc.correlation_id or ""),
        reason=html.escape(exc.reason_code),
    )
    return HTMLResponse(body, status_code=status, headers=NO_STORE)


# --------------------------------------------------------------------------------------------
# Sign-out


@router.post("/auth/oidc/logout")
async def oidc_logout(request: Request, db: DbSession, ctx: CurrentCtx) -> JSONResponse:
    """End the Allting session; `logout_url` is the provider's end-session URL when it has one."""
    url = None
    if ctx.user_id is not None:
        url = await sso.provider_logout_url(ctx.tenant_id, ctx.user_id)
    await auth_service.logout(db, ctx)
    response = JSONResponse({"logged_out": True, "logout_url": url}, headers=NO_STORE)
    response.delete_cookie(WEB_SESSION_COOKIE, path="/")
    return response


# --------------------------------------------------------------------------------------------
# Sysadmin: per-tenant federation


class FederationSet(BaseModel):
    provider: Literal["entra_id", "mobilityguard", "auth0", "okta", "generic"]
    discovery_endpoint: str = Field(max_length=1000)
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: str | None = Field(default=None, min_length=1, max_length=2000)
    allowed_domains: list[str] = Field(default_factory=list, max_length=100)
    jit_provisioning: bool | None = None
    default_role: str | None = Field(default=None, max_length=100)


class RoleRef(BaseModel):
    id: uuid.UUID
    key: str | None
    name: str


class FederationRead(BaseModel):
    tenant_id: uuid.UUID
    provider: str
    discovery_endpoint: str
    client_id: str
    masked_secret: str
    issuer: str
    allowed_domains: list[str]
    jit_provisioning: bool
    default_role: RoleRef | None
    redirect_uri: str
    configured_at: Any
    encryption_status: str
    federation_enabled: bool


def _request_info(request: Request) -> dict[str, Any]:
    return {"client_address": client_address(request), "correlation_id": correlation_id(request)}


@sysadmin_router.get("/tenants/{tenant_id}/federation", response_model=FederationRead)
async def get_federation(tenant_id: uuid.UUID, db: SystemDb):
    return await sso.get_federation(db, tenant_id)


@sysadmin_router.put("/tenants/{tenant_id}/federation", response_model=FederationRead)
async def put_federation(tenant_id: uuid.UUID, data: FederationSet, request: Request, db: SystemDb):
    """Configure the tenant's identity provider; the client secret is stored encrypted, bound to
    the tenant, and never returned. Omit `client_secret` on a later PUT to keep the stored one."""
    return await sso.put_federation(db, tenant_id, **data.model_dump(), **_request_info(request))


@sysadmin_router.delete("/tenants/{tenant_id}/federation", status_code=204)
async def delete_federation(tenant_id: uuid.UUID, request: Request, db: SystemDb) -> Response:
    await sso.delete_federation(db, tenant_id, **_request_info(request))
    return Response(status_code=204)


@sysadmin_router.post("/tenants/{tenant_id}/federation/test")
async def test_federation(tenant_id: uuid.UUID, request: Request, db: SystemDb) -> dict[str, Any]:
    """Fetch discovery (no cache) and the JWKS through the outbound guard and report."""
    return await sso.check_federation(db, tenant_id, **_request_info(request))


# --------------------------------------------------------------------------------------------
# Sysadmin: OIDC debug switch


class DebugSet(BaseModel):
    enabled: bool
    duration_minutes: int = Field(default=30, ge=1, le=sso.DEBUG_MAX_MINUTES)
    reason: str | None = Field(default=None, max_length=500)


class DebugRead(BaseModel):
    enabled: bool
    enabled_at: str | None
    enabled_by: str | None
    expires_at: str | None
    reason: str | None
    backend: str


@sysadmin_router.get("/observability/oidc-debug/", response_model=DebugRead)
async def get_oidc_debug():
    return await sso.debug_state()


@sysadmin_router.post("/observability/oidc-debug/", response_model=DebugRead)
async def set_oidc_debug(data: DebugSet, request: Request):
    """Log each sign-in step with its correlation id for `duration_minutes`, then stop by itself."""
    return await sso.set_debug(
        enabled=data.enabled,
        duration_minutes=data.duration_minutes,
        reason=data.reason,
        actor="sysadmin",
        **_request_info(request),
    )
