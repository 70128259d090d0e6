from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, WebSocket

from allting.deps import CurrentCtx
from allting.jobs import events, service
from allting.jobs.schemas import JobList, JobRead
from allting.platform.db import DbSession

router = APIRouter(tags=["jobs"])


@router.get("/jobs/", response_model=JobList)
async def list_jobs(
    db: DbSession,
    ctx: CurrentCtx,
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
) -> JobList:
    jobs = await service.list_jobs(db, ctx, status=status)
    return JobList(items=jobs, count=len(jobs))


@router.get("/jobs/{job_id}/", response_model=JobRead)
async def get_job(job_id: uuid.UUID, db: DbSession, ctx: CurrentCtx):
    return await service.get_job(db, ctx, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobRead)
async def cancel_job(job_id: uuid.UUID, db: DbSession, ctx: CurrentCtx):
    return await service.cancel_job(db, ctx, job_id)


@router.post("/ws/ticket")
async def websocket_ticket(ctx: CurrentCtx) -> dict:
    """A single-use ticket for `WS /api/v1/ws?ticket=...`, valid for 30 seconds."""
    ticket, seconds = await events.issue_ticket(ctx)
    return {"ticket": ticket, "expires_in": seconds}


@router.websocket("/ws")
async def websocket(websocket: WebSocket) -> None:
    """Live status of the caller's jobs; authenticated by the session cookie or a ticket."""
    await events.serve(websocket)
