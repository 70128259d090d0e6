"""The SAQ queue over Redis: jobs leave only after the transaction that created them commits."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis
from saq import Queue
from saq.queue.redis import ID_PREFIX, PubSubMultiplexer, RedisQueue
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


class ResilientPubSub(PubSubMultiplexer):
    """SAQ's job-update listener, made to survive a Redis restart.

    SAQ's own loop retries a broken connection at once and forever (thousands of tracebacks a
    second while Redis is down), and its close() unsubscribes on the connection the cancelled
    reader still holds, after which every read fails with "readuntil() called while another
    coroutine is already waiting": the worker spun at full CPU after Redis came back. Here a broken
    connection is dropped and replaced, with a growing pause, and close() waits for the reader.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        super().__init__(redis.pubsub(), prefix)
        self._redis = redis

    async def _renew(self) -> None:
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        self.pubsub = self._redis.pubsub()

    async def _start(self) -> None:
        pause = 0.1
        while True:
            try:
                await self.pubsub.psubscribe(f"{self.prefix}*")
                while True:
                    message = await self.pubsub.get_message(timeout=None)  # type: ignore[arg-type]
                    pause = 0.1
                    if message and message["type"] == "pmessage":
                        message["channel"] = message["channel"].decode("utf-8")
                        self.publish(message["channel"], message)
            except asyncio.CancelledError:
                return
            except Exception as exc:
                log.warning("queue.pubsub_lost", error=type(exc).__name__, retry_in=pause)
                await self._renew()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def close(self) -> None:
        async with self._lock:
            task, self._daemon_task = self._daemon_task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._renew()
            self._subscriptions.clear()
            self._queues.clear()


def init_queue(redis_url: str) -> Queue:
    global _queue
    redis = Redis.from_url(redis_url)
    _queue = RedisQueue(redis, name=QUEUE_NAME)
    _queue._pubsub = ResilientPubSub(redis, prefix=f"{ID_PREFIX}{QUEUE_NAME}")
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
