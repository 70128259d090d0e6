from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from allting.audit import service
from allting.audit.schemas import AuditLogPage
from allting.deps import CurrentCtx
from allting.platform.db import DbSession
from allting.platform.pagination import Limit, Offset

router = APIRouter(tags=["audit"])


def audit_filters(
    action: str | None = Query(default=None, max_length=64, description="Action or prefix"),
    actor_id: uuid.UUID | None = None,
    target_type: str | None = Query(default=None, max_length=32),
    target_id: str | None = Query(default=None, max_length=64),
    outcome: Literal["success", "failure", "denied"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict:
    return {
        "action": action,
        "actor_id": actor_id,
        "target_type": target_type,
        "target_id": target_id,
        "outcome": outcome,
        "since": since,
        "until": until,
    }


Filters = Annotated[dict, Depends(audit_filters)]


@router.get("/audit/logs", response_model=AuditLogPage)
async def list_logs(
    db: DbSession, ctx: CurrentCtx, filters: Filters, limit: Limit = 50, offset: Offset = 0
) -> AuditLogPage:
    items, total = await service.list_logs(db, ctx, limit=limit, offset=offset, **filters)
    return AuditLogPage(items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/audit/logs/export",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "CSV export"}},
)
async def export_csv(db: DbSession, ctx: CurrentCtx, filters: Filters) -> Response:
    body = await service.export_csv(db, ctx, **filters)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit-log.csv"'},
    )
