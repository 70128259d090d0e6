"""Ingestion: a stored original becomes passages with vectors and full-text vectors.

One job, one transaction (the worker's): load the original from storage, read it (office files and
PDFs in a child process with hard limits, audio through the tenant's transcription model), split
it into token-aware passages, embed them in batches, then swap the document's chunks (delete the
old, insert the new) under a lock on the document row. Running the job twice, or a second worker
taking over from a dead one, therefore never leaves duplicates: only the run that commits counts,
and it replaces whatever was there.

A file that cannot be read fails at once with the parser's reason for a person
(`PermanentJobError`); a provider that is briefly unavailable is retried by the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from allting.ai import gateway
from allting.ai import service as ai_service
from allting.ai.errors import ProviderError, ProviderRateLimited, ProviderUnavailable
from allting.ai.models import AiModel
from allting.deps import Ctx
from allting.files.storage import StorageError, get_storage
from allting.knowledge import parsing
from allting.knowledge import service as knowledge_service
from allting.knowledge.chunking import Chunk as Passage
from allting.knowledge.chunking import split_sections
from allting.knowledge.crawler import (
    CrawlFinished,
    PageFailed,
    PageFetched,
    PageSkipped,
    PageUnchanged,
    crawl,
)
from allting.knowledge.models import Chunk, ChunkVector, Collection, CrawlRun, Document, Website
from allting.platform.crypto import SecretError
from allting.platform.db import transaction, utcnow
from allting.platform.errors import AppError
from allting.platform.logging import get_logger
from allting.platform.settings import get_settings
from allting.platform.tenancy import set_tenant
from allting.worker import JobCancelled, JobRun, LeaseLost, PermanentJobError

log = get_logger(__name__)

ISOLATED_TYPES = frozenset({parsing.PDF, parsing.DOCX, parsing.PPTX, parsing.XLSX})
# Texts handed to the gateway per call; progress is reported between calls.
EMBED_GROUP = 128
_TRANSIENT = (ProviderUnavailable, ProviderRateLimited)


class ModelChanged(Exception):
    """The collection's model changed while this run embedded; the worker retries with the new one."""


def job_ctx(run: JobRun) -> Ctx:
    return Ctx(tenant_id=run.tenant_id, user_id=run.user_id, actor_type="job")


def _permanent(exc: Exception, what: str) -> Exception:
    """A provider error as the worker should treat it: retry when transient, else fail with the reason."""
    if isinstance(exc, ProviderError) and not isinstance(exc, _TRANSIENT) and exc.code != "provider_error":
        return PermanentJobError(f"{what} failed: {exc}")
    if isinstance(exc, AppError):
        return PermanentJobError(exc.message)
    return exc


# ---------------------------------------------------------------------------------------------
# Reading


async def read_document(
    db: AsyncSession, ctx: Ctx, data: bytes, mime: str, filename: str | None
) -> parsing.ParsedDocument:
    """The document's text in sections; audio is transcribed. Raises PermanentJobError with the reason."""
    limits = parsing.ParseLimits(max_bytes=get_settings().max_upload_bytes)
    try:
        parsing.require_allowed(mime)
        if mime in parsing.AUDIO_TYPES:
            return await _transcribe(db, ctx, data, mime, filename)
        reader = parsing.parse_isolated if mime in ISOLATED_TYPES else parsing.parse
        return await asyncio.to_thread(reader, data, mime, limits=limits)
    except parsing.DocumentError as exc:
        raise PermanentJobError(exc.message) from exc


async def _transcribe(
    db: AsyncSession, ctx: Ctx, data: bytes, mime: str, filename: str | None
) -> parsing.ParsedDocument:
    model = await ai_service.default_model(db, "transcription")
    if model is None:
        raise PermanentJobError(
            f"This is a recording ({parsing.type_label(mime)}), and your organisation has no transcription "
            "model enabled. An administrator can enable one under AI models; then process the document again."
        )
    try:
        prepared = await ai_service.prepare_call(db, ctx, model.id, kind="transcription")
    except AppError as exc:
        raise PermanentJobError(f"The recording cannot be transcribed: {exc.message}") from exc
    started = time.perf_counter()
    try:
        text = await gateway.transcribe(prepared.target, data, filename or "recording")
    except ProviderError as exc:
        raise _permanent(exc, "Transcription") from exc
    await ai_service.record_usage(
        db,
        ctx,
        model,
        gateway.Usage(prompt_tokens=0, completion_tokens=len(text.split()), estimated=True),
        target=prepared.target,
        latency_ms=int((time.perf_counter() - started) * 1000),
    )
    if not text.strip():
        raise PermanentJobError("The recording contains no speech that could be transcribed.")
    return parsing.ParsedDocument(title=None, sections=[parsing.Section(text=text.strip())], mime=mime)


# ---------------------------------------------------------------------------------------------
# Embedding


@dataclass
class Embedded:
    model: AiModel
    vectors: list[list[float]]
    tokens: int


async def embed_passages(
    db: AsyncSession,
    ctx: Ctx,
    model_id: uuid.UUID,
    texts: Sequence[str],
    *,
    tokens: int,
    progress: Callable[[float], Awaitable[None]] | None = None,
) -> Embedded:
    """Vectors for `texts` with the model, in batches, reporting the share done after each group."""
    try:
        prepared = await ai_service.prepare_call(db, ctx, model_id, kind="embedding", estimated_tokens=tokens)
    except AppError as exc:
        raise PermanentJobError(f"The passages cannot be embedded: {exc.message}") from exc
    model = prepared.model
    batch_size = model.batch_size or 32
    group = max(EMBED_GROUP, batch_size)
    vectors: list[list[float]] = []
    started = time.perf_counter()
    for start in range(0, len(texts), group):
        try:
            vectors.extend(
                await gateway.embed(prepared.target, texts[start : start + group], batch_size=batch_size)
            )
        except ProviderError as exc:
            raise _permanent(exc, "Embedding") from exc
        if progress is not None:
            await progress(len(vectors) / len(texts))
    dims = {len(vector) for vector in vectors}
    if len(dims) > 1:
        raise PermanentJobError(f"{model.display_name} returned vectors of different sizes")
    await ai_service.record_usage(
        db,
        ctx,
        model,
        gateway.Usage(prompt_tokens=tokens, completion_tokens=0, estimated=True),
        target=prepared.target,
        latency_ms=int((time.perf_counter() - started) * 1000),
    )
    return Embedded(model, vectors, tokens)


@dataclass
class ChunkRows:
    chunks: list[dict]
    vectors: list[dict]


def chunk_rows(
    tenant_id: uuid.UUID,
    document: Document,
    passages: Sequence[Passage],
    embedded: Embedded,
) -> ChunkRows:
    rows = ChunkRows([], [])
    source_id = document.collection_id or document.website_id
    for passage, vector in zip(passages, embedded.vectors, strict=True):
        chunk_id = uuid.uuid4()
        rows.chunks.append(
            {
                "id": chunk_id,
                "tenant_id": tenant_id,
                "document_id": document.id,
                "collection_id": document.collection_id,
                "website_id": document.website_id,
                "chunk_index": passage.index,
                "text": passage.text,
                "heading": passage.heading,
                "page": passage.page,
                "token_count": passage.token_count,
            }
        )
        rows.vectors.append(
            {
                "id": chunk_id,
                "tenant_id": tenant_id,
                "source_id": source_id,
                "embedding_model_id": embedded.model.id,
                "dims": len(vector),
                "embedding": vector,
            }
        )
    return rows


async def replace_chunks(db: AsyncSession, document_id: uuid.UUID, rows: ChunkRows) -> None:
    """The document's passages swapped in the caller's transaction: the old ones go, the new ones come."""
    await db.execute(delete(Chunk).where(Chunk.document_id == document_id))  # vectors go by cascade
    if rows.chunks:
        await db.execute(insert(Chunk), rows.chunks)
        await db.execute(insert(ChunkVector), rows.vectors)


# ---------------------------------------------------------------------------------------------
# The job


async def _record_failure(run: JobRun, document_id: uuid.UUID, message: str) -> None:
    """Keep the reason on the document too (the job's own transaction is rolled back)."""
    async with transaction() as db:
        await set_tenant(db, run.tenant_id)
        await db.execute(
            update(Document)
            .where(Document.id == document_id, Document.job_id == run.job_id)
            .values(status="failed", error=message[:2000])
        )


async def ingest_document(db: AsyncSession, run: JobRun) -> dict:
    document_id = uuid.UUID(run.payload["document_id"])
    document = await db.get(Document, document_id)
    if document is None or document.job_id != run.job_id:
        return {"skipped": "The document was deleted or is being processed again"}
    try:
        return await _ingest(db, run, document)
    except PermanentJobError as exc:
        await _record_failure(run, document_id, str(exc))
        raise


async def _ingest(db: AsyncSession, run: JobRun, document: Document) -> dict:
    ctx = job_ctx(run)
    collection = await db.get(Collection, document.collection_id)
    model_id = collection.pending_embedding_model_id or collection.embedding_model_id
    if model_id is None:
        raise PermanentJobError(
            "The collection has no embedding model; choose one and process the document again"
        )
    try:
        data = await get_storage().get(document.storage_key)
    except StorageError as exc:
        raise PermanentJobError("The original file is missing from storage; upload it again") from exc
    mime = parsing.detect_type(data, document.filename)
    parsed = await read_document(db, ctx, data, mime, document.filename)
    await run.progress(10)
    passages = split_sections(
        parsed.sections, chunk_tokens=collection.chunk_tokens, overlap_tokens=collection.overlap_tokens
    )
    if not passages:
        raise PermanentJobError("The document contains no readable text.")
    tokens = sum(passage.token_count for passage in passages)

    async def progress(share: float) -> None:
        await run.progress(10 + int(share * 85))

    embedded = await embed_passages(
        db, ctx, model_id, [passage.text for passage in passages], tokens=tokens, progress=progress
    )
    # The swap: under the document's row lock, and only if this run is still the latest one.
    locked = await db.scalar(
        select(Document)
        .where(Document.id == document.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if locked is None or locked.job_id != run.job_id:
        return {"skipped": "The document was deleted or is being processed again"}
    current = await db.scalar(
        select(Collection)
        .where(Collection.id == collection.id)
        .with_for_update(read=True)
        .execution_options(populate_existing=True)
    )
    if (current.pending_embedding_model_id or current.embedding_model_id) != embedded.model.id:
        raise ModelChanged("The collection's embedding model changed while the document was processed")
    await replace_chunks(db, document.id, chunk_rows(run.tenant_id, document, passages, embedded))
    pages = {section.page for section in parsed.sections if section.page is not None}
    document.status = "ready"
    document.error = None
    document.mime_type = mime
    document.chunk_count = len(passages)
    document.token_count = tokens
    document.page_count = max(pages) if pages else None
    document.embedding_model_id = embedded.model.id
    document.processed_at = utcnow()
    if parsed.title and document.filename and document.title == _stem(document.filename):
        document.title = parsed.title[:500]
    await db.flush()
    log.info("knowledge.document_ingested", document_id=str(document.id), chunks=len(passages))
    return {
        "location": f"/api/v1/documents/{document.id}",
        "document_id": str(document.id),
        "chunks": len(passages),
        "tokens": tokens,
    }


def _stem(filename: str) -> str:
    return filename.rsplit(".", 1)[0] if "." in filename else filename


async def reembed_collection(db: AsyncSession, run: JobRun) -> dict:
    """Move every passage of a collection to its new embedding model, in one swap."""
    ctx = job_ctx(run)
    collection_id = uuid.UUID(run.payload["collection_id"])
    model_id = uuid.UUID(run.payload["model_id"])
    collection = await db.get(Collection, collection_id)
    if collection is None or collection.reembed_job_id != run.job_id:
        return {"skipped": "The collection was deleted or another model was chosen since"}
    done = 0

    async def pending_rows() -> list:
        return list(
            await db.execute(
                select(ChunkVector.id, Chunk.text, Chunk.token_count)
                .join(Chunk, Chunk.id == ChunkVector.id)
                .where(
                    ChunkVector.source_id == collection_id,
                    ChunkVector.embedding_model_id.is_distinct_from(model_id),
                )
                .order_by(Chunk.document_id, Chunk.chunk_index)
            )
        )

    rows = await pending_rows()
    total = len(rows) or 1
    while rows:

        async def progress(share: float, base: int = done, count: int = len(rows)) -> None:
            await run.progress(min(99, int(100 * (base + share * count) / total)))

        embedded = await embed_passages(
            db,
            ctx,
            model_id,
            [row.text for row in rows],
            tokens=sum(row.token_count for row in rows),
            progress=progress,
        )
        await db.execute(
            update(ChunkVector),
            [
                {"id": row.id, "embedding": vector, "dims": len(vector), "embedding_model_id": model_id}
                for row, vector in zip(rows, embedded.vectors, strict=True)
            ],
        )
        done += len(rows)
        # Lock out ingestions that embedded with the old model, then catch any that committed meanwhile.
        await db.execute(select(Collection.id).where(Collection.id == collection_id).with_for_update())
        rows = await pending_rows()
    model = await db.get(AiModel, model_id)
    await db.execute(
        update(Document).where(Document.collection_id == collection_id).values(embedding_model_id=model_id)
    )
    collection = await db.scalar(
        select(Collection).where(Collection.id == collection_id).execution_options(populate_existing=True)
    )
    collection.embedding_model_id = model_id
    collection.embedding_dims = model.dimensions if model and model.dimensions else collection.embedding_dims
    collection.pending_embedding_model_id = None
    collection.reembed_job_id = None
    await db.flush()
    return {"location": f"/api/v1/collections/{collection_id}", "chunks": done}


# ---------------------------------------------------------------------------------------------
# Websites


CRAWL_EMBED_GROUP = 64  # passages of several pages are embedded together
_MAX_FAILURE_REASONS = 20


@dataclass
class _Page:
    event: PageFetched
    passages: list[Passage]


async def crawl_website(db: AsyncSession, run: JobRun) -> dict:
    """Crawl a website: store new and changed pages, skip unchanged ones, remove pages that are gone."""
    website_id = uuid.UUID(run.payload["website_id"])
    crawl_run = await db.get(CrawlRun, uuid.UUID(run.payload["run_id"]))
    website = await db.get(Website, website_id)
    if website is None or crawl_run is None:
        return {"skipped": "The website was deleted"}
    try:
        return await _crawl(db, run, website, crawl_run)
    except (JobCancelled, LeaseLost):
        raise
    except Exception:
        await _record_crawl_failure(run, website_id)
        raise


async def _record_crawl_failure(run: JobRun, website_id: uuid.UUID) -> None:
    async with transaction() as db:
        await set_tenant(db, run.tenant_id)
        await db.execute(
            update(Website)
            .where(Website.id == website_id)
            .values(consecutive_failures=Website.consecutive_failures + 1)
        )


async def _crawl(db: AsyncSession, run: JobRun, website: Website, crawl_run: CrawlRun) -> dict:
    ctx = job_ctx(run)
    if website.embedding_model_id is None:
        raise PermanentJobError("The website has no embedding model; add it again to choose one")
    try:
        password = knowledge_service.http_auth_password(website)
    except SecretError as exc:
        raise PermanentJobError("The stored password of the website cannot be read; enter it again") from exc
    try:
        settings = knowledge_service.crawl_settings(website, password)
    except AppError as exc:
        raise PermanentJobError(exc.message) from exc
    crawl_run.status = "running"
    crawl_run.started_at = utcnow()
    known = dict(
        (
            await db.execute(
                select(Document.url, Document.content_hash).where(Document.website_id == website.id)
            )
        ).all()
    )
    counts = {"crawled": 0, "unchanged": 0, "failed": 0, "skipped": 0}
    failures: Counter[str] = Counter()
    pending: list[_Page] = []
    stats = None

    async def store_pending() -> None:
        if not pending:
            return
        texts = [passage.text for page in pending for passage in page.passages]
        vectors: list[list[float]] = []
        model = None
        if texts:
            embedded = await embed_passages(
                db,
                ctx,
                website.embedding_model_id,
                texts,
                tokens=sum(p.token_count for pg in pending for p in pg.passages),
            )
            vectors, model = embedded.vectors, embedded.model
        offset = 0
        for page in pending:
            share = Embedded(model, vectors[offset : offset + len(page.passages)], 0) if model else None
            offset += len(page.passages)
            await _store_page(db, run.tenant_id, website, page, share)
        pending.clear()

    async with contextlib.aclosing(crawl(settings, known_hashes=known)) as events:
        async for event in events:
            if isinstance(event, PageFetched):
                counts["crawled"] += 1
                passages = split_sections(
                    event.sections, chunk_tokens=website.chunk_tokens, overlap_tokens=website.overlap_tokens
                )
                pending.append(_Page(event, passages))
                if sum(len(page.passages) for page in pending) >= CRAWL_EMBED_GROUP:
                    await store_pending()
            elif isinstance(event, PageUnchanged):
                counts["unchanged"] += 1
            elif isinstance(event, PageFailed):
                counts["failed"] += 1
                if len(failures) < _MAX_FAILURE_REASONS or event.reason[:200] in failures:
                    failures[event.reason[:200]] += 1
            elif isinstance(event, PageSkipped):
                counts["skipped"] += 1
            elif isinstance(event, CrawlFinished):
                stats = event.stats
            done = counts["crawled"] + counts["unchanged"]
            if done and done % 10 == 0 and isinstance(event, PageFetched | PageUnchanged):
                await run.progress(min(95, int(100 * done / max(1, website.max_pages))))
    await store_pending()
    removed = 0
    if stats is not None and stats.disappeared:
        gone = list(
            await db.scalars(
                select(Document.id).where(
                    Document.website_id == website.id, Document.url.in_(stats.disappeared)
                )
            )
        )
        if gone:
            await db.execute(delete(Chunk).where(Chunk.document_id.in_(gone)))
            await db.execute(delete(Document).where(Document.id.in_(gone)))
        removed = len(gone)
    finished = utcnow()
    crawl_run.status = "succeeded"
    crawl_run.pages_crawled = counts["crawled"]
    crawl_run.pages_unchanged = counts["unchanged"]
    crawl_run.pages_failed = counts["failed"]
    crawl_run.pages_skipped = counts["skipped"]
    crawl_run.pages_removed = removed
    crawl_run.failure_summary = dict(failures)
    crawl_run.stopped_reason = stats.stopped_reason if stats else None
    crawl_run.finished_at = finished
    website.last_crawled_at = finished
    website.consecutive_failures = 0
    if website.update_interval in knowledge_service.INTERVALS:
        website.next_crawl_at = finished + knowledge_service.INTERVALS[website.update_interval]
    await db.flush()
    log.info("knowledge.website_crawled", website_id=str(website.id), **counts, removed=removed)
    return {
        "location": f"/api/v1/websites/{website.id}/runs/",
        "pages_crawled": counts["crawled"],
        "pages_unchanged": counts["unchanged"],
        "pages_failed": counts["failed"],
        "pages_removed": removed,
    }


async def _store_page(
    db: AsyncSession, tenant_id: uuid.UUID, website: Website, page: _Page, embedded: Embedded | None
) -> None:
    event = page.event
    document = await db.scalar(
        select(Document).where(Document.website_id == website.id, Document.url == event.final_url)
    )
    if document is None:
        document = Document(website_id=website.id, url=event.final_url, mime_type="text/html", status="ready")
        db.add(document)
    document.title = (event.title or event.final_url)[:500]
    document.content_hash = event.content_hash
    document.size = len(event.text.encode())
    document.chunk_count = len(page.passages)
    document.token_count = sum(passage.token_count for passage in page.passages)
    document.embedding_model_id = website.embedding_model_id
    document.status = "ready"
    document.error = None
    document.processed_at = utcnow()
    await db.flush()
    rows = chunk_rows(tenant_id, document, page.passages, embedded) if embedded else ChunkRows([], [])
    await replace_chunks(db, document.id, rows)
