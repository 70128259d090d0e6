"""Collections and documents of a space: the use cases behind the knowledge API.

Decisions worth knowing:
- Who may do what comes from the space (`spaces.permissions`, resource "collection"). Another
  tenant's collection, and one in a space the caller cannot see, answer the same 404 as an unknown id.
- Uploads are checked in the request: the size cap (413), the type sniffed from the content
  (415 naming the type found), the tenant's storage quota (413, code `quota_exceeded`) and
  duplicates. The same content twice in one collection is refused with 409 `duplicate_document`
  naming the existing document (its id in `details`), so a client can link to or reprocess it;
  a unique index makes this hold under concurrent uploads too.
- The original goes to file storage (`files.storage`) under a key Allting makes; the ingestion
  job's payload names the document (and its collection and space, so that the job's live events
  reach every member watching the space, `jobs.events`). A stored file whose transaction rolls back is removed,
  and originals of deleted documents are removed once the deletion has committed.
- A document's shown status joins its latest job: queued, processing (with progress), ready, or
  failed with the job's reason — a failed attempt rolls back, so the job row is where it is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import delete, event, func, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from allting.ai import service as ai_service
from allting.ai.models import AiModel
from allting.audit import service as audit
from allting.deps import Ctx
from allting.files.storage import get_storage, new_key
from allting.jobs import service as jobs_service
from allting.jobs.models import Job
from allting.knowledge import parsing
from allting.knowledge.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP_TOKENS
from allting.knowledge.crawler import CrawlSettings, normalize_url
from allting.knowledge.models import Chunk, Collection, CrawlRun, Document, Website
from allting.knowledge.schemas import CollectionCreate, CollectionUpdate, WebsiteCreate, WebsiteUpdate
from allting.platform import crypto, egress
from allting.platform.db import utcnow
from allting.platform.errors import Conflict, Invalid, NotFound, PayloadTooLarge
from allting.platform.logging import get_logger
from allting.platform.settings import get_settings
from allting.spaces import permissions
from allting.spaces import service as spaces_service
from allting.spaces.models import Space
from allting.tenants.models import Tenant

log = get_logger(__name__)

INGEST_TASK = "knowledge.ingest_document"
REEMBED_TASK = "knowledge.reembed_collection"
STORAGE_AREA = "documents"
_MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Access


async def space_access(
    db: AsyncSession, ctx: Ctx, space_id: uuid.UUID, resource: str, action: str, not_found: str
) -> tuple[Space, str]:
    """The space and the caller's role; a space they cannot see is reported as `not_found`."""
    try:
        return await spaces_service.get_space_for(db, ctx, space_id, resource=resource, action=action)
    except NotFound:
        raise NotFound(not_found) from None


async def get_collection_for(
    db: AsyncSession, ctx: Ctx, collection_id: uuid.UUID, action: str = "read"
) -> tuple[Collection, str]:
    collection = await db.get(Collection, collection_id)
    if collection is None:
        raise NotFound("Collection not found")
    _, role = await space_access(db, ctx, collection.space_id, "collection", action, "Collection not found")
    return collection, role


async def _document_for(
    db: AsyncSession, ctx: Ctx, document_id: uuid.UUID, action: str
) -> tuple[Document, str]:
    document = await db.get(Document, document_id)
    if document is None:
        raise NotFound("Document not found")
    if document.collection_id is not None:
        collection = await db.get(Collection, document.collection_id)
        space_id, resource = collection.space_id, "collection"
    else:
        website = await db.get(Website, document.website_id)
        space_id, resource = website.space_id, "website"
    _, role = await space_access(db, ctx, space_id, resource, action, "Document not found")
    return document, role


# ---------------------------------------------------------------------------------------------
# Files in storage that follow the fate of the transaction


_pending_tasks: set[asyncio.Task] = set()


async def _delete_keys(keys: list[str]) -> None:
    storage = get_storage()
    for key in keys:
        try:
            await storage.delete(key)
        except Exception as exc:  # a leftover file is a leak, not an error for the user
            log.warning("knowledge.storage_delete_failed", key=key, error=type(exc).__name__)


def _on_outcome(db: AsyncSession) -> dict[str, list[str]]:
    """Keys to delete when the session's outer transaction commits or rolls back."""
    pending = db.info.get("knowledge_storage")
    if pending is not None:
        return pending
    pending = {"commit": [], "rollback": []}
    db.info["knowledge_storage"] = pending
    session = db.sync_session

    def settle(outcome: str) -> None:
        if session.in_nested_transaction():
            return
        keys = pending[outcome]
        pending["commit"], pending["rollback"] = [], []
        if keys:
            task = asyncio.get_running_loop().create_task(_delete_keys(keys))
            _pending_tasks.add(task)
            task.add_done_callback(_pending_tasks.discard)

    event.listen(session, "after_commit", lambda _session: settle("commit"))
    event.listen(session, "after_rollback", lambda _session: settle("rollback"))
    return pending


def delete_after_commit(db: AsyncSession, keys: Iterable[str | None]) -> None:
    _on_outcome(db)["commit"].extend(key for key in keys if key)


def delete_after_rollback(db: AsyncSession, keys: Iterable[str | None]) -> None:
    _on_outcome(db)["rollback"].extend(key for key in keys if key)


# ---------------------------------------------------------------------------------------------
# Collections


@dataclass
class SourceStats:
    documents: int = 0
    chunks: int = 0
    size: int = 0


@dataclass
class CollectionView:
    collection: Collection
    role: str
    stats: SourceStats
    model: AiModel | None
    pending_model: AiModel | None


async def embedding_model(db: AsyncSession, model_id: uuid.UUID | None) -> AiModel:
    """The chosen embedding model, or the tenant's default; it must be enabled and have dimensions."""
    if model_id is None:
        model = await ai_service.default_model(db, "embedding")
        if model is None:
            raise Invalid(
                "Your organisation has no default embedding model; an administrator can choose one "
                "under AI models",
                field="embedding_model_id",
            )
    else:
        model = await db.scalar(select(AiModel).where(AiModel.id == model_id))
        if model is None or model.kind != "embedding" or not model.is_enabled:
            raise Invalid("Choose an enabled embedding model", field="embedding_model_id")
    if not model.dimensions:
        raise Invalid(f"{model.display_name} has no vector dimensions set", field="embedding_model_id")
    return model


async def _models_by_id(db: AsyncSession, ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, AiModel]:
    wanted = {model_id for model_id in ids if model_id}
    if not wanted:
        return {}
    return {model.id: model for model in await db.scalars(select(AiModel).where(AiModel.id.in_(wanted)))}


async def source_stats(db: AsyncSession, column, ids: list[uuid.UUID]) -> dict[uuid.UUID, SourceStats]:
    if not ids:
        return {}
    rows = await db.execute(
        select(
            column,
            func.count(),
            func.coalesce(func.sum(Document.chunk_count), 0),
            func.coalesce(func.sum(Document.size), 0),
        )
        .where(column.in_(ids))
        .group_by(column)
    )
    return {row[0]: SourceStats(int(row[1]), int(row[2]), int(row[3])) for row in rows}


async def _views(db: AsyncSession, collections: list[Collection], role: str | dict) -> list[CollectionView]:
    stats = await source_stats(db, Document.collection_id, [c.id for c in collections])
    models = await _models_by_id(
        db, [c.embedding_model_id for c in collections] + [c.pending_embedding_model_id for c in collections]
    )
    return [
        CollectionView(
            collection=c,
            role=role[c.id] if isinstance(role, dict) else role,
            stats=stats.get(c.id, SourceStats()),
            model=models.get(c.embedding_model_id),
            pending_model=models.get(c.pending_embedding_model_id),
        )
        for c in collections
    ]


async def create_collection(db: AsyncSession, ctx: Ctx, data: CollectionCreate) -> CollectionView:
    space, role = await space_access(db, ctx, data.space_id, "collection", "create", "Space not found")
    model = await embedding_model(db, data.embedding_model_id)
    await spaces_service.check_model_allowed(db, space, model)
    _check_chunk_size(model, data.chunk_tokens or DEFAULT_CHUNK_TOKENS)
    collection = Collection(
        space_id=data.space_id,
        name=data.name,
        description=data.description,
        embedding_model_id=model.id,
        embedding_dims=model.dimensions,
        chunk_tokens=data.chunk_tokens or DEFAULT_CHUNK_TOKENS,
        overlap_tokens=data.overlap_tokens if data.overlap_tokens is not None else DEFAULT_OVERLAP_TOKENS,
        created_by=ctx.user_id,
    )
    db.add(collection)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "knowledge.collection_created",
        target_type="collection",
        target_id=collection.id,
        changes={"name": collection.name, "space_id": str(data.space_id), "embedding_model": model.name},
    )
    return (await _views(db, [collection], role))[0]


def _check_chunk_size(model: AiModel, chunk_tokens: int) -> None:
    if model.context_window and chunk_tokens > model.context_window:
        raise Invalid(
            f"{model.display_name} reads at most {model.context_window} tokens per passage; "
            f"choose chunk_tokens of at most that",
            field="chunk_tokens",
        )


async def list_collections(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID) -> list[CollectionView]:
    _, role = await space_access(db, ctx, space_id, "collection", "read", "Space not found")
    collections = list(
        await db.scalars(
            select(Collection)
            .where(Collection.space_id == space_id)
            .order_by(func.lower(Collection.name), Collection.created_at)
        )
    )
    return await _views(db, collections, role)


async def get_collection(db: AsyncSession, ctx: Ctx, collection_id: uuid.UUID) -> CollectionView:
    collection, role = await get_collection_for(db, ctx, collection_id, "read")
    return (await _views(db, [collection], role))[0]


async def update_collection(
    db: AsyncSession, ctx: Ctx, collection_id: uuid.UUID, data: CollectionUpdate
) -> CollectionView:
    """Rename or re-describe; new chunk sizes apply to documents (re)processed from now on.

    A new embedding model starts a job that re-embeds every passage; search keeps using the
    old model until that job swaps all vectors in one transaction.
    """
    collection, role = await get_collection_for(db, ctx, collection_id, "edit")
    changes: dict = {}
    fields = data.model_dump(exclude_unset=True)
    for name in ("name", "description", "chunk_tokens", "overlap_tokens"):
        if name in fields and fields[name] is not None and fields[name] != getattr(collection, name):
            changes[name] = {"from": getattr(collection, name), "to": fields[name]}
            setattr(collection, name, fields[name])
    if collection.overlap_tokens > collection.chunk_tokens // 2:
        raise Invalid("overlap_tokens must be at most half of chunk_tokens", field="overlap_tokens")
    model_id = fields.get("embedding_model_id")
    target_id = collection.pending_embedding_model_id or collection.embedding_model_id
    if model_id is not None and model_id != target_id:
        model = await embedding_model(db, model_id)
        await spaces_service.check_model_allowed(db, await db.get(Space, collection.space_id), model)
        if collection.reembed_job_id is not None:
            await _cancel_if_active(db, collection.reembed_job_id)
        if model.id == collection.embedding_model_id:
            collection.pending_embedding_model_id = None
            collection.reembed_job_id = None
        else:
            collection.pending_embedding_model_id = model.id
            job = await jobs_service.create_job(
                db,
                ctx,
                REEMBED_TASK,
                {
                    "collection_id": str(collection.id),
                    "model_id": str(model.id),
                    "space_id": str(collection.space_id),
                },
                name=f"Re-embed {collection.name}",
            )
            collection.reembed_job_id = job.id
        changes["embedding_model"] = {"to": model.name}
    if collection.embedding_model_id is not None:
        current = await db.get(AiModel, collection.embedding_model_id)
        if current is not None:
            _check_chunk_size(current, collection.chunk_tokens)
    await db.flush()
    if changes:
        await audit.record(
            db,
            ctx,
            "knowledge.collection_updated",
            target_type="collection",
            target_id=collection.id,
            changes=changes,
        )
    return (await _views(db, [collection], role))[0]


async def _cancel_if_active(db: AsyncSession, job_id: uuid.UUID) -> None:
    job = await db.get(Job, job_id)
    if job is not None and job.status in jobs_service.ACTIVE_STATES:
        job.status = "cancelled"
        job.error = "Superseded by a newer request"
        job.finished_at = utcnow()


async def delete_collection(db: AsyncSession, ctx: Ctx, collection_id: uuid.UUID) -> None:
    collection, _ = await get_collection_for(db, ctx, collection_id, "delete")
    keys = list(await db.scalars(select(Document.storage_key).where(Document.collection_id == collection.id)))
    await db.execute(delete(Chunk).where(Chunk.collection_id == collection.id))
    await db.delete(collection)
    await db.flush()
    delete_after_commit(db, keys)
    await audit.record(
        db,
        ctx,
        "knowledge.collection_deleted",
        target_type="collection",
        target_id=collection.id,
        changes={"name": collection.name, "documents": len(keys)},
    )


async def check_attachable(
    db: AsyncSession, space: Space, *, collection_ids: list[uuid.UUID], website_ids: list[uuid.UUID]
) -> None:
    """Refuse knowledge an assistant of `space` may not use.

    An assistant may use the collections and websites of its own space and those of the
    organisation space (shared with everyone); any other id, or one of another tenant, is refused
    with the same message as an unknown one.
    """
    organisation = select(Space.id).where(Space.kind == "organisation").scalar_subquery()
    for model, ids, field in (
        (Collection, collection_ids, "collection_ids"),
        (Website, website_ids, "website_ids"),
    ):
        wanted = set(ids)
        if not wanted:
            continue
        found = set(
            await db.scalars(
                select(model.id).where(
                    model.id.in_(wanted), (model.space_id == space.id) | (model.space_id == organisation)
                )
            )
        )
        missing = wanted - found
        if missing:
            kind = "collection" if model is Collection else "website"
            raise Invalid(
                f"No such {kind} in this space or the organisation space: {sorted(map(str, missing))[0]}",
                field=field,
            )


# ---------------------------------------------------------------------------------------------
# Documents


@dataclass
class DocumentView:
    document: Document
    job: Job | None
    role: str

    @property
    def state(self) -> tuple[str, str | None, int]:
        return document_state(self.document, self.job)


def document_state(document: Document, job: Job | None) -> tuple[str, str | None, int]:
    """(status, error, progress) as a person should see them, from the document and its latest job."""
    if job is not None and job.id == document.job_id:
        if job.status == "queued":
            return "queued", None, 0
        if job.status == "running":
            return "processing", None, job.progress
        if job.status in ("failed", "cancelled"):
            return "failed", job.error or document.error, job.progress
    progress = 100 if document.status == "ready" else 0
    return document.status, document.error, progress


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]+")


def clean_filename(filename: str | None) -> str | None:
    if not filename:
        return None
    name = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME.sub(" ", name).strip().strip(".")
    return name[:255] or None


def _title_from(filename: str | None) -> str:
    if not filename:
        return "Untitled"
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    return (stem.strip() or filename)[:500]


def _megabytes(size: int) -> str:
    return f"{size / _MB:.1f}".rstrip("0").rstrip(".")


def _duplicate(existing: Document) -> Conflict:
    return Conflict(
        f"This content is already in the collection as '{existing.title}'",
        code="duplicate_document",
        details={"document_id": str(existing.id), "title": existing.title, "status": existing.status},
    )


async def _check_quota(db: AsyncSession, ctx: Ctx, extra: int) -> None:
    """Refuse what would take the tenant over its storage quota; uploads of a tenant queue here."""
    tenant = await db.scalar(select(Tenant).where(Tenant.id == ctx.tenant_id).with_for_update(key_share=True))
    used = int(await db.scalar(select(func.coalesce(func.sum(Document.size), 0))) or 0)
    if tenant is not None and used + extra > tenant.quota_limit:
        raise PayloadTooLarge(
            f"Your organisation's storage quota of {_megabytes(tenant.quota_limit)} MB is used up "
            f"({_megabytes(used)} MB in use; this file needs {_megabytes(extra)} MB). Delete documents "
            "you no longer need, or ask the operator to raise the quota.",
            code="quota_exceeded",
            details={"quota_bytes": tenant.quota_limit, "used_bytes": used, "needed_bytes": extra},
        )


async def add_document(
    db: AsyncSession,
    ctx: Ctx,
    collection_id: uuid.UUID,
    *,
    data: bytes,
    filename: str | None,
    title: str | None = None,
) -> DocumentView:
    """Store an uploaded file in the collection and queue its ingestion."""
    collection, role = await get_collection_for(db, ctx, collection_id, "edit")
    limit = get_settings().max_upload_bytes
    if len(data) > limit:
        raise PayloadTooLarge(
            f"The file is {_megabytes(len(data))} MB; the limit is {_megabytes(limit)} MB. "
            "Split it into smaller files."
        )
    if not data.strip():
        raise Invalid("The file is empty", field="file")
    filename = clean_filename(filename)
    mime = parsing.require_allowed(parsing.detect_type(data, filename))
    if collection.embedding_model_id is None:
        raise Conflict(
            "The collection's embedding model was removed; choose another one for the collection first",
            code="no_embedding_model",
        )
    content_hash = hashlib.sha256(data).hexdigest()
    existing = await db.scalar(
        select(Document).where(Document.collection_id == collection.id, Document.content_hash == content_hash)
    )
    if existing is not None:
        raise _duplicate(existing)
    await _check_quota(db, ctx, len(data))
    key = new_key(ctx.tenant_id, STORAGE_AREA)
    await get_storage().put(key, data)
    delete_after_rollback(db, [key])
    document = Document(
        collection_id=collection.id,
        title=(title or _title_from(filename))[:500],
        filename=filename,
        mime_type=mime,
        size=len(data),
        content_hash=content_hash,
        storage_key=key,
        status="queued",
        created_by=ctx.user_id,
    )
    db.add(document)
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        existing = await db.scalar(
            select(Document).where(
                Document.collection_id == collection.id, Document.content_hash == content_hash
            )
        )
        if existing is None:
            raise
        raise _duplicate(existing) from None
    job = await _queue_ingestion(db, ctx, document)
    await audit.record(
        db,
        ctx,
        "knowledge.document_added",
        target_type="document",
        target_id=document.id,
        changes={
            "collection_id": str(collection.id),
            "title": document.title,
            "type": mime,
            "size": len(data),
        },
    )
    return DocumentView(document, job, role)


async def add_text_document(
    db: AsyncSession, ctx: Ctx, collection_id: uuid.UUID, *, title: str, text: str
) -> DocumentView:
    """A text typed or pasted in, stored and processed like an uploaded plain-text file."""
    return await add_document(
        db, ctx, collection_id, data=text.encode("utf-8"), filename=f"{title[:200]}.txt", title=title
    )


async def _queue_ingestion(db: AsyncSession, ctx: Ctx, document: Document) -> Job:
    collection = await db.get(Collection, document.collection_id)
    job = await jobs_service.create_job(
        db,
        ctx,
        INGEST_TASK,
        {
            "document_id": str(document.id),
            "collection_id": str(document.collection_id),
            "space_id": str(collection.space_id),
        },
        name=document.title,
    )
    document.job_id = job.id
    await db.flush()
    return job


async def _latest_jobs(db: AsyncSession, documents: list[Document]) -> dict[uuid.UUID, Job]:
    job_ids = [document.job_id for document in documents if document.job_id]
    if not job_ids:
        return {}
    return {job.id: job for job in await db.scalars(select(Job).where(Job.id.in_(job_ids)))}


async def list_documents(
    db: AsyncSession, ctx: Ctx, collection_id: uuid.UUID, *, limit: int = 100, offset: int = 0
) -> tuple[list[DocumentView], int]:
    collection, role = await get_collection_for(db, ctx, collection_id, "read")
    scope = Document.collection_id == collection.id
    total = int(await db.scalar(select(func.count()).select_from(Document).where(scope)) or 0)
    documents = list(
        await db.scalars(
            select(Document).where(scope).order_by(Document.created_at.desc()).limit(limit).offset(offset)
        )
    )
    jobs = await _latest_jobs(db, documents)
    return [DocumentView(d, jobs.get(d.job_id), role) for d in documents], total


async def get_document(db: AsyncSession, ctx: Ctx, document_id: uuid.UUID) -> DocumentView:
    document, role = await _document_for(db, ctx, document_id, "read")
    jobs = await _latest_jobs(db, [document])
    return DocumentView(document, jobs.get(document.job_id), role)


async def download_document(db: AsyncSession, ctx: Ctx, document_id: uuid.UUID) -> tuple[Document, bytes]:
    document, _ = await _document_for(db, ctx, document_id, "read")
    if not document.storage_key:
        raise NotFound("This document has no stored original (web pages are read from their URL)")
    try:
        data = await get_storage().get(document.storage_key)
    except Exception as exc:
        log.warning("knowledge.original_missing", document_id=str(document.id), error=str(exc))
        raise NotFound("The original file is missing from storage") from None
    await audit.record(
        db, ctx, "knowledge.document_downloaded", target_type="document", target_id=document.id
    )
    return document, data


async def reprocess_document(db: AsyncSession, ctx: Ctx, document_id: uuid.UUID) -> DocumentView:
    """Queue the document's ingestion again; its passages are swapped when the new run succeeds."""
    document, role = await _document_for(db, ctx, document_id, "edit")
    if document.collection_id is None:
        raise Conflict("Web pages are refreshed by running the website's crawl", code="not_reprocessable")
    if document.job_id is not None:
        await _cancel_if_active(db, document.job_id)
    job = await _queue_ingestion(db, ctx, document)
    await audit.record(
        db, ctx, "knowledge.document_reprocessed", target_type="document", target_id=document.id
    )
    return DocumentView(document, job, role)


async def delete_document(db: AsyncSession, ctx: Ctx, document_id: uuid.UUID) -> None:
    document, _ = await _document_for(db, ctx, document_id, "delete")
    if document.job_id is not None:
        await _cancel_if_active(db, document.job_id)
    await db.execute(delete(Chunk).where(Chunk.document_id == document.id))
    await db.delete(document)
    await db.flush()
    delete_after_commit(db, [document.storage_key])
    await audit.record(
        db,
        ctx,
        "knowledge.document_deleted",
        target_type="document",
        target_id=document.id,
        changes={"title": document.title},
    )


async def upload_info_blob(
    db: AsyncSession, ctx: Ctx, collection_id: uuid.UUID, *, data: bytes, filename: str | None
) -> tuple[Job, str]:
    """The reference system's upload: the same checks, answered with the job and its task name."""
    view = await add_document(db, ctx, collection_id, data=data, filename=filename)
    task = "transcription" if view.document.mime_type in parsing.AUDIO_TYPES else "upload_info_blob"
    return view.job, task


def permissions_for(role: str, resource: str = "collection") -> list[str]:
    return permissions.actions(role, resource)


# ---------------------------------------------------------------------------------------------
# Websites and their crawls


CRAWL_TASK = "knowledge.crawl_website"
HTTP_AUTH_PURPOSE = "website.http_auth"
INTERVALS = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}
ACTIVE_JOB_STATES = ("queued", "running")


@dataclass
class RunView:
    run: CrawlRun
    job: Job | None

    @property
    def state(self) -> tuple[str, str | None, int]:
        """(status, error, progress) from the run's job, which records failures the run's rollback loses."""
        if self.job is None:
            return self.run.status, None, 100 if self.run.status == "succeeded" else 0
        progress = 100 if self.job.status == "succeeded" else self.job.progress
        return self.job.status, self.job.error, progress


@dataclass
class WebsiteView:
    website: Website
    role: str
    stats: SourceStats
    model: AiModel | None
    latest: RunView | None


async def _website_for(
    db: AsyncSession, ctx: Ctx, website_id: uuid.UUID, action: str = "read"
) -> tuple[Website, str]:
    website = await db.get(Website, website_id)
    if website is None:
        raise NotFound("Website not found")
    _, role = await space_access(db, ctx, website.space_id, "website", action, "Website not found")
    return website, role


async def _check_start_url(url: str) -> str:
    """The start URL as the crawler will use it; refused early when the guard would refuse it."""
    normalized = normalize_url(url.strip())
    if normalized is None:
        raise Invalid("Give the address of a web page (http or https)", field="url")
    try:
        egress.check_url_form(normalized)
        await egress.check_url_async(normalized)
    except egress.HostNotFound:
        pass  # it may resolve by the time it is crawled; the crawl will say so otherwise
    except egress.EgressError as exc:
        raise Invalid(f"This address cannot be crawled: {exc.reason}", field="url") from None
    return normalized


def crawl_settings(website: Website, password: str | None = None) -> CrawlSettings:
    try:
        return CrawlSettings(
            start_url=website.url,
            mode=website.crawl_type,
            max_depth=website.max_depth,
            max_pages=website.max_pages,
            include_patterns=tuple(website.include_patterns or ()),
            exclude_patterns=tuple(website.exclude_patterns or ()),
            http_auth=(website.http_auth_username, password)
            if website.http_auth_username and password is not None
            else None,
        )
    except ValueError as exc:
        raise Invalid(str(exc), field="url") from None


def http_auth_password(website: Website) -> str | None:
    if not website.encrypted_http_auth_password:
        return None
    return crypto.decrypt_secret(
        website.encrypted_http_auth_password, tenant_id=website.tenant_id, purpose=HTTP_AUTH_PURPOSE
    )


def _set_password(website: Website, tenant_id: uuid.UUID, password: str | None) -> None:
    website.encrypted_http_auth_password = (
        crypto.encrypt_secret(password, tenant_id=tenant_id, purpose=HTTP_AUTH_PURPOSE) if password else None
    )


def _next_crawl(website: Website, after=None):
    interval = INTERVALS.get(website.update_interval)
    return (after or utcnow()) + interval if interval else None


async def _runs(db: AsyncSession, runs: list[CrawlRun]) -> list[RunView]:
    job_ids = [run.job_id for run in runs if run.job_id]
    jobs = (
        {job.id: job for job in await db.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
    )
    return [RunView(run, jobs.get(run.job_id)) for run in runs]


async def _website_views(db: AsyncSession, websites: list[Website], role: str) -> list[WebsiteView]:
    ids = [website.id for website in websites]
    stats = await source_stats(db, Document.website_id, ids)
    models = await _models_by_id(db, [website.embedding_model_id for website in websites])
    latest: dict[uuid.UUID, CrawlRun] = {}
    if ids:
        newest = (
            select(CrawlRun)
            .where(CrawlRun.website_id.in_(ids))
            .ext(distinct_on(CrawlRun.website_id))
            .order_by(CrawlRun.website_id, CrawlRun.created_at.desc())
        )
        latest = {run.website_id: run for run in await db.scalars(newest)}
    run_views = {view.run.website_id: view for view in await _runs(db, list(latest.values()))}
    return [
        WebsiteView(
            website=website,
            role=role,
            stats=stats.get(website.id, SourceStats()),
            model=models.get(website.embedding_model_id),
            latest=run_views.get(website.id),
        )
        for website in websites
    ]


async def create_website(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID, data: WebsiteCreate) -> WebsiteView:
    """Add a site to a space and queue its first crawl."""
    space, role = await space_access(db, ctx, space_id, "website", "create", "Space not found")
    url = await _check_start_url(data.url)
    model = await embedding_model(db, data.embedding_model_id)
    await spaces_service.check_model_allowed(db, space, model)
    if data.http_auth_password and not data.http_auth_username:
        raise Invalid("A password needs a user name", field="http_auth_username")
    website = Website(
        space_id=space_id,
        name=data.name or urlsplit(url).hostname or url,
        url=url,
        crawl_type=data.crawl_type,
        max_depth=data.max_depth,
        max_pages=data.max_pages,
        include_patterns=data.include_patterns or [],
        exclude_patterns=data.exclude_patterns or [],
        update_interval=data.update_interval,
        http_auth_username=data.http_auth_username or None,
        embedding_model_id=model.id,
        embedding_dims=model.dimensions,
        chunk_tokens=data.chunk_tokens or DEFAULT_CHUNK_TOKENS,
        overlap_tokens=data.overlap_tokens if data.overlap_tokens is not None else DEFAULT_OVERLAP_TOKENS,
        created_by=ctx.user_id,
    )
    crawl_settings(website, data.http_auth_password)
    website.next_crawl_at = _next_crawl(website)
    db.add(website)
    await db.flush()
    _set_password(website, ctx.tenant_id, data.http_auth_password)
    await queue_crawl(db, ctx, website, trigger="created")
    await audit.record(
        db,
        ctx,
        "knowledge.website_created",
        target_type="website",
        target_id=website.id,
        changes={"url": url, "space_id": str(space_id), "http_auth": bool(data.http_auth_password)},
    )
    return (await _website_views(db, [website], role))[0]


async def list_websites(db: AsyncSession, ctx: Ctx, space_id: uuid.UUID) -> list[WebsiteView]:
    _, role = await space_access(db, ctx, space_id, "website", "read", "Space not found")
    websites = list(
        await db.scalars(
            select(Website)
            .where(Website.space_id == space_id)
            .order_by(func.lower(Website.name), Website.created_at)
        )
    )
    return await _website_views(db, websites, role)


async def get_website(db: AsyncSession, ctx: Ctx, website_id: uuid.UUID) -> WebsiteView:
    website, role = await _website_for(db, ctx, website_id, "read")
    return (await _website_views(db, [website], role))[0]


async def update_website(
    db: AsyncSession, ctx: Ctx, website_id: uuid.UUID, data: WebsiteUpdate
) -> WebsiteView:
    """Change what is crawled and when; the next crawl uses it. An empty password removes it."""
    website, role = await _website_for(db, ctx, website_id, "edit")
    fields = data.model_dump(exclude_unset=True)
    changes: dict = {}
    if fields.get("url") is not None:
        fields["url"] = await _check_start_url(fields["url"])
    if fields.get("embedding_model_id") not in (None, website.embedding_model_id):
        raise Invalid("A website's embedding model is chosen when it is added", field="embedding_model_id")
    for name in (
        "name", "url", "crawl_type", "max_depth", "max_pages", "include_patterns", "exclude_patterns",
        "update_interval", "http_auth_username", "chunk_tokens", "overlap_tokens",
    ):  # fmt: skip
        if name in fields and fields[name] is not None and fields[name] != getattr(website, name):
            changes[name] = {"from": getattr(website, name), "to": fields[name]}
            setattr(website, name, fields[name])
    if "http_auth_password" in fields:
        _set_password(website, ctx.tenant_id, fields["http_auth_password"] or None)
        changes["http_auth_password"] = {"to": "set" if fields["http_auth_password"] else "removed"}
    if website.overlap_tokens > website.chunk_tokens // 2:
        raise Invalid("overlap_tokens must be at most half of chunk_tokens", field="overlap_tokens")
    crawl_settings(website)
    if "update_interval" in changes:
        website.next_crawl_at = _next_crawl(website, website.last_crawled_at)
    await db.flush()
    if changes:
        await audit.record(
            db, ctx, "knowledge.website_updated", target_type="website", target_id=website.id, changes=changes
        )
    return (await _website_views(db, [website], role))[0]


async def delete_website(db: AsyncSession, ctx: Ctx, website_id: uuid.UUID) -> None:
    website, _ = await _website_for(db, ctx, website_id, "delete")
    for run in await db.scalars(select(CrawlRun).where(CrawlRun.website_id == website.id)):
        if run.job_id is not None:
            await _cancel_if_active(db, run.job_id)
    await db.execute(delete(Chunk).where(Chunk.website_id == website.id))
    await db.delete(website)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "knowledge.website_deleted",
        target_type="website",
        target_id=website.id,
        changes={"url": website.url},
    )


async def _active_run(db: AsyncSession, website_id: uuid.UUID) -> CrawlRun | None:
    return await db.scalar(
        select(CrawlRun)
        .join(Job, Job.id == CrawlRun.job_id)
        .where(CrawlRun.website_id == website_id, Job.status.in_(ACTIVE_JOB_STATES))
        .limit(1)
    )


async def queue_crawl(db: AsyncSession, ctx: Ctx, website: Website, *, trigger: str) -> RunView:
    """A new run of the website's crawl, unless one is queued or running (409)."""
    if await _active_run(db, website.id) is not None:
        raise Conflict(
            "A crawl of this website is already queued or running; wait for it to finish",
            code="crawl_running",
            headers={"Retry-After": "60"},
        )
    run = CrawlRun(website_id=website.id, trigger=trigger, status="queued")
    db.add(run)
    await db.flush()
    job = await jobs_service.create_job(
        db,
        ctx,
        CRAWL_TASK,
        {"website_id": str(website.id), "run_id": str(run.id), "space_id": str(website.space_id)},
        name=f"Crawl {website.name}",
    )
    run.job_id = job.id
    await db.flush()
    return RunView(run, job)


async def run_website(db: AsyncSession, ctx: Ctx, website_id: uuid.UUID) -> RunView:
    website, _ = await _website_for(db, ctx, website_id, "edit")
    view = await queue_crawl(db, ctx, website, trigger="manual")
    await audit.record(
        db, ctx, "knowledge.website_crawl_started", target_type="website", target_id=website.id
    )
    return view


async def list_runs(db: AsyncSession, ctx: Ctx, website_id: uuid.UUID, *, limit: int = 50) -> list[RunView]:
    website, _ = await _website_for(db, ctx, website_id, "read")
    runs = list(
        await db.scalars(
            select(CrawlRun)
            .where(CrawlRun.website_id == website.id)
            .order_by(CrawlRun.created_at.desc())
            .limit(limit)
        )
    )
    return await _runs(db, runs)


async def list_website_documents(
    db: AsyncSession, ctx: Ctx, website_id: uuid.UUID, *, limit: int = 100, offset: int = 0
) -> tuple[list[DocumentView], int]:
    website, role = await _website_for(db, ctx, website_id, "read")
    scope = Document.website_id == website.id
    total = int(await db.scalar(select(func.count()).select_from(Document).where(scope)) or 0)
    documents = list(
        await db.scalars(select(Document).where(scope).order_by(Document.url).limit(limit).offset(offset))
    )
    return [DocumentView(d, None, role) for d in documents], total


async def schedule_due_crawls() -> int:
    """Queue a crawl of every website whose update interval has come round; returns how many.

    Safe to run from several workers at once: each website row is taken with SKIP LOCKED and its
    next crawl time moved on in the same transaction that queues the run.
    """
    from allting.platform.db import system_transaction, transaction
    from allting.platform.tenancy import set_tenant

    now = utcnow()
    async with system_transaction() as db:
        due = list(
            await db.execute(
                select(Website.id, Website.tenant_id)
                .where(Website.update_interval != "never", Website.next_crawl_at <= now)
                .order_by(Website.next_crawl_at)
                .limit(500)
            )
        )
    queued = 0
    for website_id, tenant_id in due:
        async with transaction() as db:
            await set_tenant(db, tenant_id)
            website = await db.scalar(
                select(Website)
                .where(Website.id == website_id, Website.next_crawl_at <= now)
                .with_for_update(skip_locked=True)
            )
            if website is None:
                continue
            website.next_crawl_at = _next_crawl(website, now)
            if await _active_run(db, website.id) is not None:
                continue
            ctx = Ctx(tenant_id=tenant_id, user_id=website.created_by, actor_type="system")
            await queue_crawl(db, ctx, website, trigger="scheduled")
            queued += 1
    if queued:
        log.info("knowledge.crawls_scheduled", count=queued)
    return queued
