from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response

from allting.auth import service
from allting.auth.schemas import RefreshRequest, TokenResponse
from allting.deps import CurrentCtx, client_address, correlation_id
from allting.platform.db import DbSession, utcnow

router = APIRouter(tags=["auth"])


def _token_response(issued: service.IssuedSession) -> TokenResponse:
    return TokenResponse(
        access_token=issued.access_token,
        refresh_token=issued.refresh_token,
        expires_in=int((issued.access_expires_at - utcnow()).total_seconds()),
    )


@router.post("/users/login/token/", response_model=TokenResponse)
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
    tenant: Annotated[str | None, Form(max_length=63)] = None,
) -> TokenResponse:
    """Sign in with e-mail (`username`) and password; `tenant` (slug) picks among same-named accounts."""
    issued = await service.login(
        username,
        password,
        tenant_slug=tenant,
        client_address=client_address(request),
        user_agent=request.headers.get("user-agent"),
        correlation_id=correlation_id(request),
    )
    return _token_response(issued)


@router.post("/auth/refresh", response_model=TokenResponse)
async def refresh(data: RefreshRequest) -> TokenResponse:
    return _token_response(await service.refresh(data.refresh_token))


@router.post("/auth/logout", status_code=204)
async def logout(db: DbSession, ctx: CurrentCtx) -> Response:
    await service.logout(db, ctx)
    return Response(status_code=204)
