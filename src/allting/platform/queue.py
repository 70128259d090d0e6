"""The SAQ queue over Redis: jobs leave only after the transaction that created them commits."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from saq import Queue
from saq.queue.redis import RedisQueue
from sqlalchemy.ext.asyncio import AsyncSession

from allting.platform.logging import get_logger

QUEUE_NAME = "allting"
RUN_JOB = "run_job"
# A hard stop for runaway tasks; progress and recovery are tracked by the job row's lease instead.
JOB_TIMEOUT_SECONDS = 6 * 3600

log = get_logger(__name__)
_queue: Queue | None = None


@dataclass(frozen=True)
class PendingJob:
    job_id: uuid.UUID
    attempt: int
    delay_seconds: float = 0.0


def init_queue(redis_url: str) -> Queue:
    global _queue
    _queue = RedisQueue(Redis.from_url(redis_url), name=QUEUE_NAME)
    return _queue


def get_queue() -> Queue:
    assert _queue is not None, "queue is not initialised"
    return _queue


async def close_queue() -> None:
    global _queue
    if _queue is not None:
        await _queue.disconnect()
    _queue = None


def enqueue_after_commit(
    db: AsyncSession, job_id: uuid.UUID, *, attempt: int = 0, delay_seconds: float = 0.0
) -> None:
    """Remember a job row to hand to the queue once this session's transaction has committed."""
    db.info.setdefault("pending_jobs", []).append(PendingJob(job_id, attempt, delay_seconds))


async def send_after_commit(db: AsyncSession) -> None:
    pending: list[PendingJob] = db.info.pop("pending_jobs", [])
    for job in pending:
        try:
            await send(job)
        except Exception as exc:
            # The row stays queued in PostgreSQL; the reconciler hands it over again.
            log.warning("job.enqueue_failed", job_id=str(job.job_id), error=str(exc))


async def send(job: PendingJob) -> None:
    scheduled = int(time.time() + job.delay_seconds) if job.delay_seconds else 0
    await get_queue().enqueue(
        RUN_JOB,
        key=f"{job.job_id}:{job.attempt}",
        job_id=str(job.job_id),
        scheduled=scheduled,
        timeout=JOB_TIMEOUT_SECONDS,
        retries=1,
    )
