"""Tenant scoping: the one place that decides which tenant a transaction sees.

Two layers work together. PostgreSQL row-level security (ENABLE + FORCE, policies on
`app.tenant_id`) is the backstop: the application role sees nothing unless the tenant is set
for the current transaction. The ORM layer adds the same tenant predicate to every query
(so indexes that lead with tenant_id are used) and stamps new rows with the tenant.
"""

from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    Mapped,
    ORMExecuteState,
    Session,
    declared_attr,
    mapped_column,
    with_loader_criteria,
)

from allting.platform.db import APP_ROLE, SYSTEM_ROLE, Base, SettingsOnBeginConnection, driver_connection

TENANT_SETTING = "app.tenant_id"


class CrossTenantWrite(RuntimeError):
    pass


class TenantScoped:
    """Mixin for every tenant-owned table."""

    @declared_attr
    def tenant_id(cls) -> Mapped[uuid.UUID]:
        return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=False)


def current_tenant(db: AsyncSession | Session) -> uuid.UUID | None:
    return db.info.get("tenant_id")


async def set_tenant(db: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Bind the session to a tenant for the rest of its transaction(s)."""
    db.info["tenant_id"] = tenant_id
    if db.in_transaction():
        await db.execute(
            text("select set_config(:name, :value, true)"), {"name": TENANT_SETTING, "value": str(tenant_id)}
        )


@event.listens_for(Session, "after_begin")
def _set_tenant_on_begin(session: Session, _transaction, connection) -> None:
    if session.info.get("system"):
        return
    tenant_id = session.info.get("tenant_id")
    value = str(uuid.UUID(str(tenant_id))) if tenant_id else ""
    raw = driver_connection(connection)
    if isinstance(raw, SettingsOnBeginConnection) and not raw.is_in_transaction():
        # The database transaction starts lazily with the first statement: the tenant goes with
        # that BEGIN, in the same round trip.
        raw.set_on_next_begin({TENANT_SETTING: value})
        return
    connection.execute(
        text("select set_config(:name, :value, true)"), {"name": TENANT_SETTING, "value": value}
    )


def _tenant_criteria(tenant_id: uuid.UUID | None):
    return with_loader_criteria(TenantScoped, lambda cls: cls.tenant_id == tenant_id, include_aliases=True)


# Building the option (and analysing its lambda) costs more than running a cached query, so each
# tenant's option is built once. The lambda's tenant is a bound parameter: one compiled statement
# serves every tenant.
_criteria_by_tenant: dict[uuid.UUID | None, object] = {}
_CRITERIA_CACHE_SIZE = 4096


def _criteria_for(tenant_id: uuid.UUID | None):
    option = _criteria_by_tenant.get(tenant_id)
    if option is None:
        if len(_criteria_by_tenant) >= _CRITERIA_CACHE_SIZE:
            _criteria_by_tenant.clear()
        option = _criteria_by_tenant[tenant_id] = _tenant_criteria(tenant_id)
    return option


@event.listens_for(Session, "do_orm_execute")
def _only_current_tenant(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    tenant_id = state.session.info.get("tenant_id")
    if tenant_id is None and state.session.info.get("system"):
        return
    state.statement = state.statement.options(_criteria_for(tenant_id))


@event.listens_for(Session, "before_flush")
def _stamp_tenant(session: Session, _flush_context, _instances) -> None:
    tenant_id = session.info.get("tenant_id")
    for obj in session.new:
        if not isinstance(obj, TenantScoped):
            continue
        if obj.tenant_id is None:
            if tenant_id is None:
                raise CrossTenantWrite(f"{type(obj).__name__} created with no tenant set")
            obj.tenant_id = tenant_id
        elif tenant_id is not None and obj.tenant_id != tenant_id:
            raise CrossTenantWrite(f"{type(obj).__name__} written for another tenant")


def tenant_tables() -> list[str]:
    """Names of every tenant-owned table, from the ORM metadata."""
    return sorted(table.name for table in Base.metadata.sorted_tables if "tenant_id" in table.columns)


_CURRENT_TENANT_SQL = f"NULLIF(current_setting('{TENANT_SETTING}', true), '')::uuid"


def row_level_security_sql(table: str, *, key: str = "tenant_id") -> list[str]:
    """Statements that isolate `table` by tenant; used by migrations."""
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE} "
        f"USING ({key} = {_CURRENT_TENANT_SQL}) WITH CHECK ({key} = {_CURRENT_TENANT_SQL})",
        f"CREATE POLICY system_access ON {table} TO {SYSTEM_ROLE} USING (true) WITH CHECK (true)",
    ]
