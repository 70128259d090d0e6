"""Installation-wide administration over `X-API-Key: <SYSADMIN_API_KEY>`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from allting.deps import Ctx, client_address, correlation_id
from allting.platform.db import system_transaction
from allting.platform.errors import Unauthorized
from allting.platform.security import constant_time_equals
from allting.platform.settings import get_settings
from allting.sysadmin import service
from allting.sysadmin.schemas import (
    SysadminUserCreate,
    SysadminUserCreated,
    SysadminUserList,
    SysadminUserUpdate,
)
from allting.tenants import service as tenants_service
from allting.tenants.schemas import TenantCreate, TenantList, TenantRead, TenantUpdate
from allting.users import service as users_service
from allting.users.schemas import UserCreate, UserRead, UserUpdate


async def require_sysadmin(request: Request) -> None:
    if not constant_time_equals(request.headers.get("x-api-key"), get_settings().sysadmin_api_key):
        raise Unauthorized("A valid sysadmin API key is required", code="sysadmin_required")


async def get_system_db() -> AsyncIterator[AsyncSession]:
    async with system_transaction() as db:
        yield db


SystemDb = Annotated[AsyncSession, Depends(get_system_db, scope="function")]
router = APIRouter(prefix="/sysadmin", tags=["sysadmin"], dependencies=[Depends(require_sysadmin)])


def _request_info(request: Request) -> dict:
    return {"client_address": client_address(request), "correlation_id": correlation_id(request)}


def _ctx(request: Request, tenant_id: uuid.UUID) -> Ctx:
    return service.sysadmin_ctx(tenant_id, **_request_info(request))


@router.get("/tenants/", response_model=TenantList)
async def list_tenants(db: SystemDb) -> TenantList:
    tenants = await tenants_service.list_tenants(db)
    return TenantList(items=tenants, count=len(tenants))


@router.post("/tenants/", response_model=TenantRead, status_code=201)
async def create_tenant(data: TenantCreate, request: Request, db: SystemDb):
    return await service.create_tenant(db, data, **_request_info(request))


@router.get("/tenants/{tenant_id}/", response_model=TenantRead)
async def get_tenant(tenant_id: uuid.UUID, db: SystemDb):
    return await tenants_service.get_tenant(db, tenant_id)


@router.patch("/tenants/{tenant_id}/", response_model=TenantRead)
@router.post("/tenants/{tenant_id}/", response_model=TenantRead)
async def update_tenant(tenant_id: uuid.UUID, data: TenantUpdate, request: Request, db: SystemDb):
    """Update a tenant; `state: suspended` suspends it (its people are signed out on their next request)."""
    return await service.update_tenant(db, tenant_id, data, **_request_info(request))


@router.delete("/tenants/{tenant_id}/", status_code=204)
async def delete_tenant(tenant_id: uuid.UUID, request: Request, db: SystemDb) -> Response:
    await service.delete_tenant(db, tenant_id, **_request_info(request))
    return Response(status_code=204)


@router.get("/users/", response_model=SysadminUserList)
async def list_users(db: SystemDb, tenant_id: uuid.UUID | None = None) -> SysadminUserList:
    users = await service.list_users(db, tenant_id)
    return SysadminUserList(items=users, count=len(users))


@router.post("/users/", response_model=SysadminUserCreated, status_code=201)
async def create_user(data: SysadminUserCreate, request: Request, db: SystemDb) -> SysadminUserCreated:
    await service.enter_tenant(db, data.tenant_id)
    role_ids = [ref.id for ref in data.roles + data.predefined_roles]
    user, password = await users_service.create_user(
        db,
        _ctx(request, data.tenant_id),
        UserCreate(
            email=data.email,
            name=data.username,
            password=data.password,
            role=data.role,
            role_id=role_ids[0] if role_ids else None,
        ),
    )
    return SysadminUserCreated.model_validate(user, from_attributes=True).model_copy(
        update={"password": password}
    )


@router.get("/users/{user_id}/", response_model=UserRead)
async def get_user(user_id: uuid.UUID, request: Request, db: SystemDb):
    tenant_id = await service.enter_user_tenant(db, user_id)
    return await users_service.get_user(db, _ctx(request, tenant_id), user_id)


@router.patch("/users/{user_id}/", response_model=UserRead)
@router.post("/users/{user_id}/", response_model=UserRead)
async def update_user(user_id: uuid.UUID, data: SysadminUserUpdate, request: Request, db: SystemDb):
    tenant_id = await service.enter_user_tenant(db, user_id)
    return await users_service.update_user(
        db,
        _ctx(request, tenant_id),
        user_id,
        UserUpdate(name=data.username, state=data.state, role_id=data.role_id),
    )


@router.delete("/users/{user_id}/", status_code=204)
async def delete_user(user_id: uuid.UUID, request: Request, db: SystemDb) -> Response:
    tenant_id = await service.enter_user_tenant(db, user_id)
    await users_service.delete_user(db, _ctx(request, tenant_id), user_id)
    return Response(status_code=204)
