"""The audit log: written in the same transaction as the change it records."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from allting.audit.models import AuditLog
from allting.deps import Ctx

EXPORT_LIMIT = 100_000
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


async def record(
    db: AsyncSession,
    ctx: Ctx,
    action: str,
    *,
    target_type: str | None = None,
    target_id: Any = None,
    changes: dict[str, Any] | None = None,
    outcome: str = "success",
) -> AuditLog:
    """Record what ctx did, in the caller's transaction."""
    return await record_event(
        db,
        tenant_id=ctx.tenant_id,
        actor_type=ctx.actor_type,
        actor_id=ctx.user_id,
        actor_label=ctx.email,
        action=action,
        target_type=target_type,
        target_id=target_id,
        changes=changes,
        outcome=outcome,
        client_address=ctx.client_address,
        correlation_id=ctx.correlation_id,
    )


async def record_event(
    db: AsyncSession,
    *,
    tenant_id: uuid.UUID | None,
    actor_type: str,
    action: str,
    actor_id: uuid.UUID | None = None,
    actor_label: str | None = None,
    target_type: str | None = None,
    target_id: Any = None,
    changes: dict[str, Any] | None = None,
    outcome: str = "success",
    client_address: str | None = None,
    correlation_id: str | None = None,
) -> AuditLog:
    """Record an event whose actor is not a signed-in user (sign-in attempts, sysadmin, system)."""
    entry = AuditLog(
        tenant_id=tenant_id,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=actor_label,
        action=action,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        changes=changes or {},
        outcome=outcome,
        client_address=client_address,
        correlation_id=correlation_id,
    )
    db.add(entry)
    await db.flush()
    return entry


def _filtered(
    ctx: Ctx,
    *,
    action: str | None,
    actor_id: uuid.UUID | None,
    target_type: str | None,
    target_id: str | None,
    outcome: str | None,
    since: datetime | None,
    until: datetime | None,
):
    query = select(AuditLog).where(AuditLog.tenant_id == ctx.tenant_id)
    if action:
        query = query.where(AuditLog.action.startswith(action, autoescape=True))
    if actor_id:
        query = query.where(AuditLog.actor_id == actor_id)
    if target_type:
        query = query.where(AuditLog.target_type == target_type)
    if target_id:
        query = query.where(AuditLog.target_id == target_id)
    if outcome:
        query = query.where(AuditLog.outcome == outcome)
    if since:
        query = query.where(AuditLog.created_at >= since)
    if until:
        query = query.where(AuditLog.created_at < until)
    return query


async def list_logs(
    db: AsyncSession, ctx: Ctx, *, limit: int, offset: int, **filters
) -> tuple[list[AuditLog], int]:
    """The tenant's audit log, newest first; tenant admins and auditors only."""
    ctx.require("audit")
    query = _filtered(ctx, **filters)
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(
        query.order_by(AuditLog.created_at.desc(), AuditLog.id).limit(limit).offset(offset)
    )
    return list(rows), total or 0


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    else:
        text = "" if value is None else str(value)
    # Spreadsheets execute cells starting with these characters (CSV injection).
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


CSV_COLUMNS = (
    "created_at",
    "actor_type",
    "actor_label",
    "actor_id",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "client_address",
    "correlation_id",
    "changes",
)


async def export_csv(db: AsyncSession, ctx: Ctx, **filters) -> Iterable[str]:
    """The filtered audit log as CSV rows, spreadsheet-formula safe."""
    ctx.require("audit")
    rows = await db.scalars(
        _filtered(ctx, **filters).order_by(AuditLog.created_at.desc()).limit(EXPORT_LIMIT)
    )
    await record(db, ctx, "audit.exported", changes={"filters": {k: str(v) for k, v in filters.items() if v}})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(getattr(row, column)) for column in CSV_COLUMNS])
    return buffer.getvalue()
