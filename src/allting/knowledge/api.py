from __future__ import annotations

import re
import uuid
from urllib.parse import quote

from fastapi import APIRouter, File, Response, UploadFile

from allting.deps import CurrentCtx
from allting.jobs.models import Job
from allting.knowledge import parsing, retrieval, service
from allting.knowledge import tasks as _tasks  # noqa: F401  (registers the job handlers)
from allting.knowledge.schemas import (
    CollectionCreate,
    CollectionList,
    CollectionMetadata,
    CollectionRead,
    CollectionUpdate,
    CrawlRunList,
    CrawlRunRead,
    DocumentList,
    DocumentRead,
    EmbeddingModelRef,
    JobPublic,
    PassageRead,
    SearchRequest,
    SearchResponse,
    TextDocumentCreate,
    WebsiteCreate,
    WebsiteList,
    WebsiteMetadata,
    WebsiteRead,
    WebsiteUpdate,
)
from allting.platform.db import DbSession
from allting.platform.pagination import Limit, Offset

router = APIRouter(tags=["knowledge"])

# Our job states in the reference system's words (its JobPublic.status).
REFERENCE_STATUS = {
    "queued": "queued",
    "running": "in progress",
    "succeeded": "complete",
    "failed": "failed",
    "cancelled": "failed",
}


def collection_read(view: service.CollectionView) -> CollectionRead:
    collection = view.collection
    return CollectionRead(
        id=collection.id,
        name=collection.name,
        description=collection.description,
        space_id=collection.space_id,
        embedding_model=EmbeddingModelRef.model_validate(view.model) if view.model else None,
        pending_embedding_model=(
            EmbeddingModelRef.model_validate(view.pending_model) if view.pending_model else None
        ),
        reembed_job_id=collection.reembed_job_id,
        chunk_tokens=collection.chunk_tokens,
        overlap_tokens=collection.overlap_tokens,
        metadata=CollectionMetadata(
            num_documents=view.stats.documents,
            num_info_blobs=view.stats.documents,
            num_chunks=view.stats.chunks,
            size=view.stats.size,
        ),
        permissions=service.permissions_for(view.role, "collection"),
        created_at=collection.created_at,
        updated_at=collection.updated_at,
    )


def document_read(view: service.DocumentView) -> DocumentRead:
    document = view.document
    status, error, progress = view.state
    resource = "collection" if document.collection_id else "website"
    return DocumentRead(
        id=document.id,
        collection_id=document.collection_id,
        website_id=document.website_id,
        title=document.title,
        filename=document.filename,
        url=document.url,
        mime_type=document.mime_type,
        type_label=parsing.type_label(document.mime_type),
        size=document.size,
        content_hash=document.content_hash,
        status=status,
        error=error,
        progress=progress,
        job_id=document.job_id,
        chunk_count=document.chunk_count,
        token_count=document.token_count,
        page_count=document.page_count,
        processed_at=document.processed_at,
        permissions=service.permissions_for(view.role, resource),
        created_at=document.created_at,
        updated_at=document.updated_at,
    )


def job_public(job: Job, task: str) -> JobPublic:
    return JobPublic(
        id=job.id,
        name=job.name,
        status=REFERENCE_STATUS[job.status],
        task=task,
        result_location=(job.result or {}).get("location"),
        finished_at=job.finished_at,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


# --- Collections ----------------------------------------------------------------------------------


@router.post("/collections/", response_model=CollectionRead, status_code=201)
async def create_collection(data: CollectionCreate, db: DbSession, ctx: CurrentCtx) -> CollectionRead:
    return collection_read(await service.create_collection(db, ctx, data))


@router.get("/spaces/{space_id}/collections/", response_model=CollectionList)
async def list_collections(space_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> CollectionList:
    views = await service.list_collections(db, ctx, space_id)
    return CollectionList(items=[collection_read(view) for view in views], count=len(views))


@router.get("/collections/{collection_id}", response_model=CollectionRead)
async def get_collection(collection_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> CollectionRead:
    return collection_read(await service.get_collection(db, ctx, collection_id))


@router.patch("/collections/{collection_id}", response_model=CollectionRead)
async def update_collection(
    collection_id: uuid.UUID, data: CollectionUpdate, db: DbSession, ctx: CurrentCtx
) -> CollectionRead:
    return collection_read(await service.update_collection(db, ctx, collection_id, data))


@router.delete("/collections/{collection_id}", status_code=204)
async def delete_collection(collection_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_collection(db, ctx, collection_id)
    return Response(status_code=204)


@router.post("/collections/{collection_id}/search/", response_model=SearchResponse)
async def search_collection(
    collection_id: uuid.UUID, data: SearchRequest, db: DbSession, ctx: CurrentCtx
) -> SearchResponse:
    collection, _ = await service.get_collection_for(db, ctx, collection_id, "read")
    passages = await retrieval.search(
        db, ctx, collection_ids=[collection.id], query=data.query, limit=data.limit
    )
    return SearchResponse(items=[PassageRead.model_validate(p) for p in passages], count=len(passages))


# --- Documents ------------------------------------------------------------------------------------


@router.post("/collections/{collection_id}/documents/", response_model=DocumentRead, status_code=202)
async def upload_document(
    collection_id: uuid.UUID, db: DbSession, ctx: CurrentCtx, file: UploadFile = File(...)
) -> DocumentRead:
    data = await file.read()
    return document_read(
        await service.add_document(db, ctx, collection_id, data=data, filename=file.filename)
    )


@router.post("/collections/{collection_id}/documents/text", response_model=DocumentRead, status_code=202)
async def add_text_document(
    collection_id: uuid.UUID, data: TextDocumentCreate, db: DbSession, ctx: CurrentCtx
) -> DocumentRead:
    view = await service.add_text_document(db, ctx, collection_id, title=data.title, text=data.text)
    return document_read(view)


@router.get("/collections/{collection_id}/documents/", response_model=DocumentList)
async def list_documents(
    collection_id: uuid.UUID, db: DbSession, ctx: CurrentCtx, limit: Limit = 100, offset: Offset = 0
) -> DocumentList:
    views, total = await service.list_documents(db, ctx, collection_id, limit=limit, offset=offset)
    return DocumentList(items=[document_read(view) for view in views], count=total)


@router.get("/documents/{document_id}", response_model=DocumentRead)
async def get_document(document_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> DocumentRead:
    return document_read(await service.get_document(db, ctx, document_id))


_NOT_TOKEN = re.compile(r"[^A-Za-z0-9._ -]+")


def _attachment(filename: str) -> str:
    fallback = _NOT_TOKEN.sub("_", filename).strip() or "document"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("/documents/{document_id}/download")
async def download_document(document_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    document, data = await service.download_document(db, ctx, document_id)
    return Response(
        content=data,
        media_type=document.mime_type,
        headers={
            "Content-Disposition": _attachment(document.filename or document.title),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.post("/documents/{document_id}/reprocess", response_model=DocumentRead, status_code=202)
async def reprocess_document(document_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> DocumentRead:
    return document_read(await service.reprocess_document(db, ctx, document_id))


@router.delete("/documents/{document_id}", status_code=204)
async def delete_document(document_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_document(db, ctx, document_id)
    return Response(status_code=204)


# --- The reference system's upload ----------------------------------------------------------------


@router.post("/groups/{group_id}/info-blobs/upload/", response_model=JobPublic, status_code=202)
async def upload_info_blob(
    group_id: uuid.UUID, db: DbSession, ctx: CurrentCtx, file: UploadFile = File(...)
) -> JobPublic:
    data = await file.read()
    job, task = await service.upload_info_blob(db, ctx, group_id, data=data, filename=file.filename)
    return job_public(job, task)


# --- Websites -------------------------------------------------------------------------------------


def crawl_run_read(view: service.RunView) -> CrawlRunRead:
    run = view.run
    status, error, progress = view.state
    return CrawlRunRead(
        id=run.id,
        website_id=run.website_id,
        job_id=run.job_id,
        trigger=run.trigger,
        status=status,
        error=error,
        progress=progress,
        pages_crawled=run.pages_crawled,
        pages_unchanged=run.pages_unchanged,
        pages_failed=run.pages_failed,
        pages_skipped=run.pages_skipped,
        pages_removed=run.pages_removed,
        failure_summary=run.failure_summary or {},
        stopped_reason=run.stopped_reason,
        started_at=run.started_at,
        finished_at=run.finished_at,
        created_at=run.created_at,
    )


def website_read(view: service.WebsiteView) -> WebsiteRead:
    website = view.website
    return WebsiteRead(
        id=website.id,
        space_id=website.space_id,
        name=website.name,
        url=website.url,
        crawl_type=website.crawl_type,
        max_depth=website.max_depth,
        max_pages=website.max_pages,
        include_patterns=list(website.include_patterns or []),
        exclude_patterns=list(website.exclude_patterns or []),
        update_interval=website.update_interval,
        http_auth_username=website.http_auth_username,
        requires_http_auth=bool(website.encrypted_http_auth_password),
        embedding_model=EmbeddingModelRef.model_validate(view.model) if view.model else None,
        chunk_tokens=website.chunk_tokens,
        overlap_tokens=website.overlap_tokens,
        last_crawled_at=website.last_crawled_at,
        next_crawl_at=website.next_crawl_at,
        consecutive_failures=website.consecutive_failures,
        latest_crawl=crawl_run_read(view.latest) if view.latest else None,
        metadata=WebsiteMetadata(
            num_pages=view.stats.documents, num_chunks=view.stats.chunks, size=view.stats.size
        ),
        permissions=service.permissions_for(view.role, "website"),
        created_at=website.created_at,
        updated_at=website.updated_at,
    )


@router.post("/spaces/{space_id}/websites/", response_model=WebsiteRead, status_code=201)
async def create_website(
    space_id: uuid.UUID, data: WebsiteCreate, db: DbSession, ctx: CurrentCtx
) -> WebsiteRead:
    return website_read(await service.create_website(db, ctx, space_id, data))


@router.get("/spaces/{space_id}/websites/", response_model=WebsiteList)
async def list_websites(space_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> WebsiteList:
    views = await service.list_websites(db, ctx, space_id)
    return WebsiteList(items=[website_read(view) for view in views], count=len(views))


@router.get("/websites/{website_id}", response_model=WebsiteRead)
async def get_website(website_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> WebsiteRead:
    return website_read(await service.get_website(db, ctx, website_id))


@router.patch("/websites/{website_id}", response_model=WebsiteRead)
async def update_website(
    website_id: uuid.UUID, data: WebsiteUpdate, db: DbSession, ctx: CurrentCtx
) -> WebsiteRead:
    return website_read(await service.update_website(db, ctx, website_id, data))


@router.delete("/websites/{website_id}", status_code=204)
async def delete_website(website_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_website(db, ctx, website_id)
    return Response(status_code=204)


@router.post("/websites/{website_id}/run/", response_model=CrawlRunRead, status_code=202)
async def run_website(website_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> CrawlRunRead:
    return crawl_run_read(await service.run_website(db, ctx, website_id))


@router.get("/websites/{website_id}/runs/", response_model=CrawlRunList)
async def list_crawl_runs(website_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> CrawlRunList:
    views = await service.list_runs(db, ctx, website_id)
    return CrawlRunList(items=[crawl_run_read(view) for view in views], count=len(views))


@router.get("/websites/{website_id}/documents/", response_model=DocumentList)
async def list_website_documents(
    website_id: uuid.UUID, db: DbSession, ctx: CurrentCtx, limit: Limit = 100, offset: Offset = 0
) -> DocumentList:
    views, total = await service.list_website_documents(db, ctx, website_id, limit=limit, offset=offset)
    return DocumentList(items=[document_read(view) for view in views], count=total)


@router.post("/websites/{website_id}/search/", response_model=SearchResponse)
async def search_website(
    website_id: uuid.UUID, data: SearchRequest, db: DbSession, ctx: CurrentCtx
) -> SearchResponse:
    view = await service.get_website(db, ctx, website_id)
    passages = await retrieval.search(
        db, ctx, collection_ids=[], website_ids=[view.website.id], query=data.query, limit=data.limit
    )
    return SearchResponse(items=[PassageRead.model_validate(p) for p in passages], count=len(passages))
