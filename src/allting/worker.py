"""Background work: the task registry, the job runner and the SAQ worker.

A job row in PostgreSQL is the record. The runner claims it with a lease that a heartbeat
renews, runs the task in one transaction bound to the job's tenant, and finishes the row in
that same transaction, fenced by the attempt number. A worker that dies leaves an expired
lease; the reconciler hands such jobs, and queued jobs Redis lost, to the queue again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from saq import CronJob, Worker
from sqlalchemy.ext.asyncio import AsyncSession

from allting.conversations.tasks import purge_expired_conversations
from allting.jobs import service as jobs_service
from allting.jobs.models import Job
from allting.platform.db import system_transaction, transaction
from allting.platform.logging import get_logger
from allting.platform.queue import RUN_JOB, enqueue_after_commit, get_queue
from allting.platform.settings import get_settings
from allting.platform.tenancy import set_tenant

log = get_logger(__name__)

# How long a queued row waits for its queue message before the reconciler sends it again, and how
# often the reconciler runs. The environment overrides exist so fault tests (and operators who want
# faster recovery) can shorten them; they belong in Settings.
RETRY_BASE_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0


class JobCancelled(Exception):
    """The job was cancelled while it ran; its effects are rolled back."""


class PermanentJobError(Exception):
    """A failure that retrying cannot fix (a broken file, say); the message is shown to the user."""


class LeaseLost(Exception):
    """Another worker took the job over; this attempt's effects must not be committed."""


@dataclass
class JobRun:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID | None
    attempt: int
    payload: dict[str, Any]

    async def progress(self, percent: int) -> None:
        """Report progress; raises JobCancelled if the job was cancelled meanwhile."""
        async with system_transaction() as db:
            job = await jobs_service.set_progress(db, self.job_id, self.attempt, percent)
        if job is None:
            raise JobCancelled()
        await jobs_service.publish(job)


TaskHandler = Callable[[AsyncSession, JobRun], Awaitable[dict | None]]
_handlers: dict[str, TaskHandler] = {}


def task(name: str) -> Callable[[TaskHandler], TaskHandler]:
    """Register a task handler under "<domain>.<function>"."""

    def register(handler: TaskHandler) -> TaskHandler:
        _handlers[name] = handler
        return handler

    return register


def _retry_delay(attempt: int) -> float:
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)


async def _heartbeat(job: Job, lease: timedelta) -> None:
    while True:
        await asyncio.sleep(lease.total_seconds() / 3)
        try:
            async with system_transaction() as db:
                if not await jobs_service.renew_lease(db, job.id, job.attempts, lease):
                    return
        except Exception as exc:
            log.warning("job.heartbeat_failed", job_id=str(job.id), error=type(exc).__name__)


async def _finish(job: Job, *, status: str, error: str | None = None, retry_in: float | None = None) -> None:
    async with system_transaction() as db:
        finished = await jobs_service.finish(db, job.id, job.attempts, status=status, error=error)
        if finished is not None and retry_in is not None:
            enqueue_after_commit(db, job.id, attempt=job.attempts, delay_seconds=retry_in)
    if finished is not None:
        await jobs_service.publish(finished)


async def execute_job(job_id: uuid.UUID) -> None:
    """Run one job to a recorded outcome (or leave it for a later attempt)."""
    settings = get_settings()
    lease = timedelta(seconds=settings.job_lease_seconds)
    async with system_transaction() as db:
        job = await jobs_service.claim(db, job_id, lease)
        if job is not None and job.attempts > job.max_attempts:
            await jobs_service.fail_exhausted(db, job)
            job = None
    if job is None:
        return
    await jobs_service.publish(job)
    handler = _handlers.get(job.task)
    if handler is None:
        await _finish(job, status="failed", error=f"Unknown task '{job.task}'")
        return
    run = JobRun(
        job_id=job.id,
        tenant_id=job.tenant_id,
        user_id=job.user_id,
        attempt=job.attempts,
        payload=dict(job.payload or {}),
    )
    heartbeat = asyncio.create_task(_heartbeat(job, lease))
    try:
        async with transaction() as db:
            await set_tenant(db, job.tenant_id)
            result = await handler(db, run)
            done = await jobs_service.finish(db, job.id, job.attempts, status="succeeded", result=result)
            if done is None:
                raise LeaseLost()
        await jobs_service.publish(done)
        log.info("job.succeeded", job_id=str(job.id), task=job.task, attempt=job.attempts)
    except asyncio.CancelledError:
        # The worker is shutting down: hand the job back now instead of waiting for the lease to expire.
        await asyncio.shield(
            _finish(job, status="queued", error="Interrupted by a worker shutdown", retry_in=0)
        )
        raise
    except (JobCancelled, LeaseLost):
        log.info("job.abandoned", job_id=str(job.id), task=job.task)
    except PermanentJobError as exc:
        await _finish(job, status="failed", error=str(exc))
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:1000]
        log.warning("job.failed", job_id=str(job.id), task=job.task, attempt=job.attempts, error=message)
        if job.attempts < job.max_attempts:
            await _finish(job, status="queued", error=message, retry_in=_retry_delay(job.attempts))
        else:
            await _finish(job, status="failed", error=f"{message} (gave up after {job.attempts} attempts)")
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat


async def run_job(_ctx: dict, *, job_id: str) -> None:
    await execute_job(uuid.UUID(job_id))


async def reconcile(_ctx: dict | None = None) -> int:
    """Re-enqueue queued jobs Redis lost and jobs whose worker died; returns how many."""
    handed_over = 0
    async with system_transaction() as db:
        for job in await jobs_service.stale_jobs(
            db, queued_for=timedelta(seconds=get_settings().job_reconcile_queued_after_seconds)
        ):
            if job.status == "running" and job.attempts >= job.max_attempts:
                await jobs_service.fail_exhausted(db, job)
                continue
            enqueue_after_commit(db, job.id, attempt=job.attempts)
            handed_over += 1
    if handed_over:
        log.info("jobs.reconciled", count=handed_over)
    return handed_over


class AlltingWorker(Worker):
    """SAQ's worker, stopping its housekeeping loops at once so shutdown waits only for jobs."""

    _upkeep_tasks: list[asyncio.Task] = []

    async def upkeep(self) -> list[asyncio.Task]:
        self._upkeep_tasks = await super().upkeep()
        return self._upkeep_tasks

    async def schedule(self, lock: int = 1) -> None:
        """SAQ's cron scheduling with one key per tick rather than one per function.

        SAQ keys a unique cron job `cron:<function>`. A worker killed while it held the reconciler's
        job left that key active, and every later tick was skipped until SAQ's sweep freed it (a
        minute or more): the very recovery that should follow a kill stalled. Per tick, workers
        still agree on one key, so each tick runs once.
        """
        for cron_job in self.cron_jobs:
            kwargs = cron_job.__dict__.copy()
            function = kwargs.pop("function").__qualname__
            unique = kwargs.pop("unique")
            scheduled = int(croniter(kwargs.pop("cron"), datetime.now(self.cron_tz)).get_next())
            kwargs["key"] = f"cron:{function}:{scheduled}" if unique else None
            await self.queue.enqueue(
                function, scheduled=scheduled, **{k: v for k, v in kwargs.items() if v is not None}
            )
        await self.queue.schedule(lock)

    async def stop(self) -> None:
        for upkeep_task in self._upkeep_tasks:
            upkeep_task.cancel()
        await super().stop()


class InProcessWorker(AlltingWorker):
    """A worker sharing the API's event loop; the server owns the signal handlers."""

    SIGNALS = []


def build_worker(*, in_process: bool) -> Worker:
    # The domains' task modules register their handlers on import; they import this module, so here.
    from allting.knowledge import tasks as knowledge_tasks

    worker_class = InProcessWorker if in_process else AlltingWorker
    return worker_class(
        get_queue(),
        functions=[(RUN_JOB, run_job)],
        cron_jobs=[
            # SAQ aborts a job after 10 s unless told otherwise; maintenance may take longer.
            CronJob(reconcile, cron=get_settings().job_reconcile_cron, unique=True, timeout=60),
            CronJob(purge_expired_conversations, cron="17 3 * * *", unique=True, timeout=3600),
            CronJob(knowledge_tasks.schedule_due_crawls, cron="*/5 * * * *", unique=True, timeout=300),
        ],
        concurrency=get_settings().worker_concurrency,
        shutdown_grace_period_s=10,
        # Waiting for work in one-second slices lets a stopping worker leave promptly.
        dequeue_timeout=1,
        timers={"worker_info": 5, "sweep": 60, "schedule": 1, "abort": 1},
    )


async def workers_alive() -> int:
    info = await get_queue().info()
    return len(info.get("workers", {}))
