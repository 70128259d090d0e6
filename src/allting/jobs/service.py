"""Job records: PostgreSQL is the state of record; the queue only wakes workers up."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from allting.deps import Ctx
from allting.jobs.models import Job
from allting.platform.db import utcnow
from allting.platform.errors import Conflict, NotFound
from allting.platform.logging import get_logger
from allting.platform.queue import enqueue_after_commit
from allting.platform.redis import get_redis
from allting.platform.settings import get_settings

ACTIVE_STATES = ("queued", "running")

log = get_logger(__name__)


def events_channel(tenant_id: uuid.UUID, user_id: uuid.UUID | None) -> str:
    return f"events:{tenant_id}:{user_id or 'tenant'}"


def space_channel(tenant_id: uuid.UUID, space_id: uuid.UUID | str) -> str:
    """Events of the jobs that change a space's knowledge, for its members who are watching it."""
    return f"events:{tenant_id}:space:{space_id}"


# Payload keys that say what a job works on; they travel with its events so that a page showing
# that space, collection, document or website can place the event.
SUBJECT_KEYS = ("space_id", "collection_id", "document_id", "website_id")


async def create_job(
    db: AsyncSession, ctx: Ctx, task: str, payload: dict[str, Any], *, name: str | None = None
) -> Job:
    """Record a job and hand it to the queue once the caller's transaction commits."""
    job = Job(
        user_id=ctx.user_id,
        task=task,
        name=name,
        payload=payload,
        status="queued",
        max_attempts=get_settings().job_max_attempts,
    )
    db.add(job)
    await db.flush()
    enqueue_after_commit(db, job.id)
    return job


async def list_jobs(db: AsyncSession, ctx: Ctx, *, status: str | None = None, limit: int = 50) -> list[Job]:
    """The caller's own jobs, newest first."""
    query = select(Job).where(Job.user_id == ctx.user_id)
    if status:
        query = query.where(Job.status == status)
    return list(await db.scalars(query.order_by(Job.created_at.desc()).limit(limit)))


async def get_job(db: AsyncSession, ctx: Ctx, job_id: uuid.UUID) -> Job:
    job = await db.scalar(select(Job).where(Job.id == job_id, Job.user_id == ctx.user_id))
    if job is None:
        raise NotFound("Job not found")
    return job


async def cancel_job(db: AsyncSession, ctx: Ctx, job_id: uuid.UUID) -> Job:
    """Cancel a queued or running job; a running one stops at its next progress report."""
    job = await get_job(db, ctx, job_id)
    if job.status not in ACTIVE_STATES:
        raise Conflict(f"The job has already {job.status}", code="job_finished")
    job.status = "cancelled"
    job.finished_at = utcnow()
    job.error = "Cancelled by the user"
    await db.flush()
    await publish(job)
    return job


async def publish(job: Job) -> None:
    """Tell the job's owner (on every API process) that the job changed, and, when the job works on
    a space (its payload names `space_id`), the members watching that space.

    Best effort: the row is the record and clients re-read it, so a Redis outage must not fail the
    job (a failed publish right after a claim used to leave the job running until its lease expired).
    """
    payload = job.payload or {}
    subject = {key: str(payload[key]) for key in SUBJECT_KEYS if payload.get(key)}
    event = {
        "type": "job",
        "data": {
            "id": str(job.id),
            "task": job.task,
            "name": job.name,
            "status": job.status,
            "progress": job.progress,
            "error": job.error,
            "result": job.result,
            **subject,
        },
    }
    message = json.dumps(event)
    try:
        if "space_id" in subject:
            async with get_redis().pipeline(transaction=False) as pipe:
                pipe.publish(events_channel(job.tenant_id, job.user_id), message)
                pipe.publish(space_channel(job.tenant_id, subject["space_id"]), message)
                await pipe.execute()
        else:
            await get_redis().publish(events_channel(job.tenant_id, job.user_id), message)
    except (RedisError, OSError) as exc:
        log.warning("job.publish_failed", job_id=str(job.id), status=job.status, error=type(exc).__name__)


# The statements below run on system sessions: a worker learns a job's tenant from its row.


async def claim(db: AsyncSession, job_id: uuid.UUID, lease: timedelta) -> Job | None:
    """Take a queued job, or a running one whose worker stopped renewing its lease."""
    now = utcnow()
    result = await db.execute(
        update(Job)
        .where(
            Job.id == job_id,
            (Job.status == "queued") | ((Job.status == "running") & (Job.lease_expires_at < now)),
        )
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=now,
            lease_expires_at=now + lease,
            updated_at=now,
        )
        .returning(Job)
    )
    return result.scalar_one_or_none()


async def renew_lease(db: AsyncSession, job_id: uuid.UUID, attempt: int, lease: timedelta) -> bool:
    result = await db.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status == "running")
        .values(lease_expires_at=utcnow() + lease)
    )
    return bool(result.rowcount)


async def finish(
    db: AsyncSession,
    job_id: uuid.UUID,
    attempt: int,
    *,
    status: str,
    error: str | None = None,
    result: dict | None = None,
) -> Job | None:
    """Set a terminal (or re-queued) state, fenced by the attempt so a presumed-dead worker cannot."""
    values: dict[str, Any] = {
        "status": status,
        "error": error,
        "lease_expires_at": None,
        "updated_at": utcnow(),
    }
    if status != "queued":
        values["finished_at"] = utcnow()
    if status == "succeeded":
        values["progress"] = 100
    if result is not None:
        values["result"] = result
    outcome = await db.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status == "running")
        .values(**values)
        .returning(Job)
    )
    return outcome.scalar_one_or_none()


async def set_progress(db: AsyncSession, job_id: uuid.UUID, attempt: int, progress: int) -> Job | None:
    outcome = await db.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status == "running")
        .values(progress=max(0, min(100, progress)), updated_at=utcnow())
        .returning(Job)
    )
    return outcome.scalar_one_or_none()


async def stale_jobs(db: AsyncSession, *, queued_for: timedelta) -> list[Job]:
    """Queued jobs nobody picked up, and running jobs whose lease expired."""
    now = utcnow()
    rows = await db.scalars(
        select(Job)
        .where(
            ((Job.status == "queued") & (Job.updated_at < now - queued_for))
            | ((Job.status == "running") & (Job.lease_expires_at < now))
        )
        .limit(500)
    )
    return list(rows)


async def fail_exhausted(db: AsyncSession, job: Job) -> None:
    await db.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempts == job.attempts)
        .values(
            status="failed",
            finished_at=utcnow(),
            lease_expires_at=None,
            error=(job.error or "The worker stopped while running this job")
            + f" (gave up after {job.attempts} attempts)",
        )
    )
