"""Operator actions across tenants. Every call is audited with the sysadmin as actor."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from allting.audit import service as audit
from allting.deps import Ctx
from allting.platform.errors import NotFound
from allting.platform.tenancy import set_tenant
from allting.tenants import service as tenants_service
from allting.tenants.schemas import TenantCreate, TenantUpdate
from allting.users.models import User
from allting.users.permissions import PERMISSIONS


def sysadmin_ctx(tenant_id: uuid.UUID, *, client_address: str | None, correlation_id: str | None) -> Ctx:
    """Act inside one tenant with every permission, audited as the sysadmin."""
    return Ctx(
        tenant_id=tenant_id,
        user_id=None,
        actor_type="sysadmin",
        email="sysadmin",
        permissions=frozenset(PERMISSIONS),
        client_address=client_address,
        correlation_id=correlation_id,
    )


async def _audit(
    db: AsyncSession,
    action: str,
    tenant_id: uuid.UUID | None,
    target_id,
    changes: dict,
    client_address: str | None,
    correlation_id: str | None,
    target_type: str = "tenant",
) -> None:
    await audit.record_event(
        db,
        tenant_id=tenant_id,
        actor_type="sysadmin",
        actor_label="sysadmin",
        action=action,
        target_type=target_type,
        target_id=target_id,
        changes=changes,
        client_address=client_address,
        correlation_id=correlation_id,
    )


async def create_tenant(db: AsyncSession, data: TenantCreate, **request):
    tenant = await tenants_service.create_tenant(db, data)
    await _audit(
        db, "tenant.created", tenant.id, tenant.id, {"name": tenant.name, "slug": tenant.slug}, **request
    )
    return tenant


async def update_tenant(db: AsyncSession, tenant_id: uuid.UUID, data: TenantUpdate, **request):
    tenant, changes = await tenants_service.update_tenant(db, tenant_id, data)
    if changes:
        action = "tenant.suspended" if changes.get("state", {}).get("to") == "suspended" else "tenant.updated"
        await _audit(db, action, tenant.id, tenant.id, changes, **request)
    return tenant


async def delete_tenant(db: AsyncSession, tenant_id: uuid.UUID, **request) -> None:
    tenant = await tenants_service.delete_tenant(db, tenant_id)
    await _audit(db, "tenant.deleted", None, tenant.id, {"name": tenant.name, "slug": tenant.slug}, **request)


async def list_users(db: AsyncSession, tenant_id: uuid.UUID | None) -> list[User]:
    query = select(User).options(selectinload(User.role)).where(User.deleted_at.is_(None))
    if tenant_id:
        query = query.where(User.tenant_id == tenant_id)
    return list(await db.scalars(query.order_by(User.created_at)))


async def enter_user_tenant(db: AsyncSession, user_id: uuid.UUID) -> uuid.UUID:
    """Scope the session to the tenant of a user; unknown users are 404."""
    tenant_id = await db.scalar(select(User.tenant_id).where(User.id == user_id, User.deleted_at.is_(None)))
    if tenant_id is None:
        raise NotFound("User not found")
    await set_tenant(db, tenant_id)
    return tenant_id


async def enter_tenant(db: AsyncSession, tenant_id: uuid.UUID) -> None:
    await tenants_service.get_tenant(db, tenant_id)
    await set_tenant(db, tenant_id)
