"""Tenants: created and administered by sysadmins; each starts with the predefined roles."""

from __future__ import annotations

import re
import unicodedata
import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from allting.ai import service as ai_service
from allting.audit import service as audit
from allting.platform.errors import Conflict, NotFound
from allting.platform.security import generate_password, hash_password
from allting.tenants.models import Tenant
from allting.tenants.schemas import TenantCreate, TenantUpdate
from allting.users.models import Role, User
from allting.users.permissions import OWNER_ROLE_KEY, PREDEFINED_ROLES

DEFAULT_OWNER_EMAIL = "admin@allting.local"


def slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:63].strip("-") or "tenant"


async def _free_slug(db: AsyncSession, wanted: str) -> str:
    taken = set(await db.scalars(select(Tenant.slug).where(Tenant.slug.startswith(wanted))))
    if wanted not in taken:
        return wanted
    counter = 2
    while f"{wanted}-{counter}" in taken:
        counter += 1
    return f"{wanted}-{counter}"


async def create_tenant(db: AsyncSession, data: TenantCreate) -> Tenant:
    """Create a tenant with its predefined roles (system session)."""
    if await db.scalar(select(Tenant.id).where(func.lower(Tenant.name) == data.name.lower())):
        raise Conflict(f"A tenant named '{data.name}' already exists", code="tenant_exists")
    if data.slug and await db.scalar(select(Tenant.id).where(Tenant.slug == data.slug)):
        raise Conflict(f"The slug '{data.slug}' is taken", code="slug_taken")
    slug = data.slug or await _free_slug(db, slugify(data.name))
    tenant = Tenant(
        name=data.name,
        display_name=data.display_name,
        slug=slug,
        quota_limit=data.quota_limit,
        state=data.state,
        settings={},
    )
    db.add(tenant)
    await db.flush()
    for key, role in PREDEFINED_ROLES.items():
        db.add(
            Role(
                tenant_id=tenant.id,
                key=key,
                name=role["name"],
                description=role["description"],
                permissions=role["permissions"],
            )
        )
    await ai_service.seed_catalogue(db, tenant.id)
    return tenant


async def get_tenant(db: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    tenant = await db.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("Tenant not found")
    return tenant


async def get_tenant_by_slug(db: AsyncSession, slug: str) -> Tenant:
    tenant = await db.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"No tenant with slug '{slug}'")
    return tenant


async def list_tenants(db: AsyncSession) -> list[Tenant]:
    return list(await db.scalars(select(Tenant).order_by(Tenant.created_at)))


async def update_tenant(db: AsyncSession, tenant_id: uuid.UUID, data: TenantUpdate) -> tuple[Tenant, dict]:
    tenant = await get_tenant(db, tenant_id)
    changes = {}
    for name, value in data.model_dump(exclude_unset=True).items():
        if value is None or getattr(tenant, name) == value:
            continue
        if name == "name" and await db.scalar(
            select(Tenant.id).where(func.lower(Tenant.name) == value.lower(), Tenant.id != tenant.id)
        ):
            raise Conflict(f"A tenant named '{value}' already exists", code="tenant_exists")
        changes[name] = {"from": getattr(tenant, name), "to": value}
        setattr(tenant, name, value)
    await db.flush()
    return tenant, changes


async def delete_tenant(db: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    tenant = await get_tenant(db, tenant_id)
    await db.delete(tenant)
    await db.flush()
    return tenant


async def ensure_first_tenant(
    db: AsyncSession, *, name: str, owner_email: str | None, owner_password: str | None
) -> tuple[Tenant, User, str | None] | None:
    """On an empty installation create the default tenant and its owner; None when tenants exist.

    Returns the generated password when none was configured, to be shown once.
    """
    if await db.scalar(select(func.count()).select_from(Tenant)):
        return None
    tenant = await create_tenant(db, TenantCreate(name=name))
    owner_role = await db.scalar(select(Role).where(Role.tenant_id == tenant.id, Role.key == OWNER_ROLE_KEY))
    generated = None if owner_password else generate_password()
    owner = User(
        tenant_id=tenant.id,
        email=owner_email or DEFAULT_OWNER_EMAIL,
        name=None,  # until the owner gives one under Account; pages show the e-mail address meanwhile
        state="active",
        role_id=owner_role.id,
        password_hash=hash_password(owner_password or generated),
        preferences={},
    )
    db.add(owner)
    await db.flush()
    await audit.record_event(
        db,
        tenant_id=tenant.id,
        actor_type="system",
        action="tenant.created",
        target_type="tenant",
        target_id=tenant.id,
        changes={"name": tenant.name, "first_run": True, "owner": owner.email},
    )
    return tenant, owner, generated
