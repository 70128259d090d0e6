from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from allting.knowledge.chunking import DEFAULT_CHUNK_TOKENS

MIN_CHUNK_TOKENS = 32
MAX_CHUNK_TOKENS = 2000


def _stripped(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


class _ChunkSettings(BaseModel):
    chunk_tokens: int | None = Field(default=None, ge=MIN_CHUNK_TOKENS, le=MAX_CHUNK_TOKENS)
    overlap_tokens: int | None = Field(default=None, ge=0, le=MAX_CHUNK_TOKENS // 2)

    @model_validator(mode="after")
    def _overlap_fits(self):
        chunk = self.chunk_tokens or DEFAULT_CHUNK_TOKENS
        if self.overlap_tokens is not None and self.overlap_tokens > chunk // 2:
            raise ValueError("overlap_tokens must be at most half of chunk_tokens")
        return self


class CollectionCreate(_ChunkSettings):
    space_id: uuid.UUID
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    embedding_model_id: uuid.UUID | None = None

    _name = field_validator("name")(_stripped)


class CollectionUpdate(_ChunkSettings):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    embedding_model_id: uuid.UUID | None = None

    _name = field_validator("name")(_stripped)


class EmbeddingModelRef(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    display_name: str
    provider_type: str
    dimensions: int | None


class CollectionMetadata(BaseModel):
    num_documents: int
    num_info_blobs: int  # the reference system's name for the same count
    num_chunks: int
    size: int


class CollectionRead(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    space_id: uuid.UUID
    embedding_model: EmbeddingModelRef | None
    pending_embedding_model: EmbeddingModelRef | None
    reembed_job_id: uuid.UUID | None
    chunk_tokens: int
    overlap_tokens: int
    metadata: CollectionMetadata
    permissions: list[str]
    created_at: datetime
    updated_at: datetime


class CollectionList(BaseModel):
    items: list[CollectionRead]
    count: int


DocumentStatus = Literal["queued", "processing", "ready", "failed"]


class DocumentRead(BaseModel):
    id: uuid.UUID
    collection_id: uuid.UUID | None
    website_id: uuid.UUID | None
    title: str
    filename: str | None
    url: str | None
    mime_type: str
    type_label: str
    size: int
    content_hash: str
    status: DocumentStatus
    error: str | None
    progress: int
    job_id: uuid.UUID | None
    chunk_count: int
    token_count: int
    page_count: int | None
    processed_at: datetime | None
    permissions: list[str]
    created_at: datetime
    updated_at: datetime


class DocumentList(BaseModel):
    items: list[DocumentRead]
    count: int


class TextDocumentCreate(BaseModel):
    title: str = Field(min_length=1, max_length=500)
    text: str = Field(min_length=1)

    _title = field_validator("title")(_stripped)
    _text = field_validator("text")(_stripped)


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    limit: int = Field(default=8, ge=1, le=50)

    _query = field_validator("query")(_stripped)


class PassageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    chunk_id: uuid.UUID
    document_id: uuid.UUID
    collection_id: uuid.UUID | None
    website_id: uuid.UUID | None
    title: str
    text: str
    page: int | None
    heading: str | None
    url: str | None
    score: float


class SearchResponse(BaseModel):
    items: list[PassageRead]
    count: int


ReferenceStatus = Literal["queued", "in progress", "complete", "failed", "not found"]


class JobPublic(BaseModel):
    """The reference system's job shape, answered by its upload endpoint."""

    id: uuid.UUID
    name: str | None
    status: ReferenceStatus
    task: str
    result_location: str | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime


# --- Websites -------------------------------------------------------------------------------------

CrawlType = Literal["crawl", "sitemap"]
UpdateInterval = Literal["never", "daily", "weekly"]
Pattern = str


class _WebsiteFields(_ChunkSettings):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    crawl_type: CrawlType | None = None
    max_depth: int | None = Field(default=None, ge=0, le=20)
    max_pages: int | None = Field(default=None, ge=1, le=10_000)
    include_patterns: list[Pattern] | None = Field(default=None, max_length=50)
    exclude_patterns: list[Pattern] | None = Field(default=None, max_length=50)
    update_interval: UpdateInterval | None = None
    http_auth_username: str | None = Field(default=None, max_length=200)
    http_auth_password: str | None = Field(default=None, max_length=500)

    _name = field_validator("name")(_stripped)

    @field_validator("include_patterns", "exclude_patterns")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = [pattern.strip() for pattern in value if pattern.strip()]
        if any(len(pattern) > 500 for pattern in cleaned):
            raise ValueError("patterns are at most 500 characters")
        return cleaned


class WebsiteCreate(_WebsiteFields):
    url: str = Field(min_length=1, max_length=2000)
    crawl_type: CrawlType = "crawl"
    max_depth: int = Field(default=3, ge=0, le=20)
    max_pages: int = Field(default=500, ge=1, le=10_000)
    update_interval: UpdateInterval = "never"
    embedding_model_id: uuid.UUID | None = None


class WebsiteUpdate(_WebsiteFields):
    url: str | None = Field(default=None, min_length=1, max_length=2000)
    embedding_model_id: uuid.UUID | None = None


class CrawlRunRead(BaseModel):
    id: uuid.UUID
    website_id: uuid.UUID
    job_id: uuid.UUID | None
    trigger: str
    status: str
    error: str | None
    progress: int
    pages_crawled: int
    pages_unchanged: int
    pages_failed: int
    pages_skipped: int
    pages_removed: int
    failure_summary: dict
    stopped_reason: str | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime


class CrawlRunList(BaseModel):
    items: list[CrawlRunRead]
    count: int


class WebsiteMetadata(BaseModel):
    num_pages: int
    num_chunks: int
    size: int


class WebsiteRead(BaseModel):
    id: uuid.UUID
    space_id: uuid.UUID
    name: str
    url: str
    crawl_type: str
    max_depth: int
    max_pages: int
    include_patterns: list[str]
    exclude_patterns: list[str]
    update_interval: str
    http_auth_username: str | None
    requires_http_auth: bool
    embedding_model: EmbeddingModelRef | None
    chunk_tokens: int
    overlap_tokens: int
    last_crawled_at: datetime | None
    next_crawl_at: datetime | None
    consecutive_failures: int
    latest_crawl: CrawlRunRead | None
    metadata: WebsiteMetadata
    permissions: list[str]
    created_at: datetime
    updated_at: datetime


class WebsiteList(BaseModel):
    items: list[WebsiteRead]
    count: int
