"""Background jobs of the knowledge domain (thin: each calls one function)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from allting.knowledge import ingest
from allting.knowledge.service import INGEST_TASK, REEMBED_TASK
from allting.worker import JobRun, task


@task(INGEST_TASK)
async def ingest_document(db: AsyncSession, run: JobRun) -> dict:
    return await ingest.ingest_document(db, run)


@task(REEMBED_TASK)
async def reembed_collection(db: AsyncSession, run: JobRun) -> dict:
    return await ingest.reembed_collection(db, run)
