"""Background jobs of the knowledge domain (thin: each calls one function)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from allting.knowledge import ingest, service
from allting.knowledge.service import CRAWL_TASK, INGEST_TASK, REEMBED_TASK
from allting.worker import JobRun, task


@task(INGEST_TASK)
async def ingest_document(db: AsyncSession, run: JobRun) -> dict:
    return await ingest.ingest_document(db, run)


@task(REEMBED_TASK)
async def reembed_collection(db: AsyncSession, run: JobRun) -> dict:
    return await ingest.reembed_collection(db, run)


@task(CRAWL_TASK)
async def crawl_website(db: AsyncSession, run: JobRun) -> dict:
    return await ingest.crawl_website(db, run)


async def schedule_due_crawls(_ctx: dict | None = None) -> int:
    """Queue the crawls whose update interval has come round; for the worker's cron (every few minutes)."""
    return await service.schedule_due_crawls()
