"""The audit log page: filters, paging and the CSV export link."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from allting.audit import service
from allting.platform.db import DbSession
from allting.web.rendering import render
from allting.web.web import SignedIn

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50


def _date(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


@router.get("/admin/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    db: DbSession,
    page: SignedIn,
    action: str | None = None,
    outcome: str | None = None,
    since: str | None = None,
    until: str | None = None,
    offset: int = 0,
):
    page.ctx.require("audit")
    filters = {
        "action": (action or "").strip()[:64] or None,
        "outcome": outcome if outcome in ("success", "failure", "denied") else None,
        "since": _date(since),
        "until": _date(until),
        "actor_id": None,
        "target_type": None,
        "target_id": None,
    }
    offset = max(0, offset)
    rows, total = await service.list_logs(db, page.ctx, limit=PAGE_SIZE, offset=offset, **filters)
    query = {
        k: v for k, v in {"action": action, "outcome": outcome, "since": since, "until": until}.items() if v
    }
    return render(
        request,
        "audit/log.html",
        {
            "nav": "admin",
            "admin_tab": "audit",
            "rows": rows,
            "total": total,
            "offset": offset,
            "page_size": PAGE_SIZE,
            "filters": query,
            "export_url": "/api/v1/audit/logs/export" + (f"?{urlencode(query)}" if query else ""),
            "query": urlencode(query),
        },
    )
