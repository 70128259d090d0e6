"""Knowledge: collections and websites of a space, their documents, and the chunks search reads.

Vectors of every embedding model live in one `chunk_vectors` table, in an untyped pgvector
column with the dimension count beside it. Each common dimension has its own partial HNSW index over an
expression cast to that fixed dimension (`(embedding::vector(384)) WHERE dims = 384`), so
vectors of different sizes are all indexable without a table per model; a query names the same
cast and the same literal `dims` to use it (see `retrieval.py`). 3072-dimensional vectors are
indexed as half precision (`halfvec`), since HNSW takes at most 2000 full-precision dimensions.

`source_id` is whichever of collection and website the chunk belongs to, so that every filter
names one column, and every index a search uses leads with (tenant_id, source_id).

Full text: `chunks.tsv` (generated from the heading and the text under the Swedish and the
English stemmer) has a GIN index. Under row-level security PostgreSQL uses it only when `@@`
(`ts_match_vq`) is marked leakproof, which a superuser must do: the embedded database is set up
so (`platform/runtime.py::SUPERUSER_TUNING`), and operations.md asks operators of an external
PostgreSQL to do the same. Without it a search reads the collection's chunks through
(tenant_id, source_id) and matches each `tsv`, which stays in the row (storage MAIN) so that no
TOAST lookups are needed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from allting.knowledge.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP_TOKENS
from allting.platform.db import Base, Entity
from allting.platform.tenancy import TenantScoped

# Dimensions with their own HNSW index, and the pgvector type each is indexed as.
INDEXED_DIMENSIONS: dict[int, str] = {
    384: "vector",
    768: "vector",
    1024: "vector",
    1536: "vector",
    3072: "halfvec",
}

DOCUMENT_STATES = ("queued", "ready", "failed")
CRAWL_TYPES = ("crawl", "sitemap")
UPDATE_INTERVALS = ("never", "daily", "weekly")

# Both stemmers over the text (Swedish and English content are both common), plus the heading.
TSVECTOR_SQL = (
    "setweight(to_tsvector('simple'::regconfig, coalesce(heading, '')), 'A') || "
    "to_tsvector('swedish'::regconfig, text) || to_tsvector('english'::regconfig, text)"
)


def _hnsw_index(dims: int, kind: str) -> Index:
    label = f"embedding_{dims}"
    return Index(
        f"ix_chunk_vectors_embedding_{dims}",
        literal_column(f"(embedding::{kind}({dims}))").label(label),
        postgresql_using="hnsw",
        postgresql_where=text(f"dims = {dims}"),
        postgresql_ops={label: f"{kind}_cosine_ops"},
    )


class Collection(Entity, TenantScoped, Base):
    """Documents of a space, embedded with one model chosen when the collection was made."""

    __tablename__ = "collections"

    space_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(2000))
    embedding_model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_models.id", ondelete="SET NULL"), index=True
    )
    embedding_dims: Mapped[int] = mapped_column(Integer)
    chunk_tokens: Mapped[int] = mapped_column(Integer, default=DEFAULT_CHUNK_TOKENS)
    overlap_tokens: Mapped[int] = mapped_column(Integer, default=DEFAULT_OVERLAP_TOKENS)
    # Set while a re-embedding job moves the chunks to another model; search keeps the old one meanwhile.
    pending_embedding_model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_models.id", ondelete="SET NULL")
    )
    reembed_job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class Website(Entity, TenantScoped, Base):
    """A site crawled into a space, on demand or on a schedule."""

    __tablename__ = "websites"
    __table_args__ = (Index("ix_websites_next_crawl_at", "next_crawl_at"),)

    space_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2000))
    crawl_type: Mapped[str] = mapped_column(String(16), default="crawl")
    max_depth: Mapped[int] = mapped_column(Integer, default=3)
    max_pages: Mapped[int] = mapped_column(Integer, default=500)
    include_patterns: Mapped[list[str]] = mapped_column(ARRAY(String(500)), default=list)
    exclude_patterns: Mapped[list[str]] = mapped_column(ARRAY(String(500)), default=list)
    update_interval: Mapped[str] = mapped_column(String(16), default="never")
    http_auth_username: Mapped[str | None] = mapped_column(String(200))
    encrypted_http_auth_password: Mapped[str | None] = mapped_column(Text)
    embedding_model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_models.id", ondelete="SET NULL"), index=True
    )
    embedding_dims: Mapped[int] = mapped_column(Integer)
    chunk_tokens: Mapped[int] = mapped_column(Integer, default=DEFAULT_CHUNK_TOKENS)
    overlap_tokens: Mapped[int] = mapped_column(Integer, default=DEFAULT_OVERLAP_TOKENS)
    last_crawled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_crawl_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class CrawlRun(Entity, TenantScoped, Base):
    """One crawl of a website: its job, and what it found."""

    __tablename__ = "crawl_runs"

    website_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("websites.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    trigger: Mapped[str] = mapped_column(String(16), default="manual")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    pages_crawled: Mapped[int] = mapped_column(Integer, default=0)
    pages_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    pages_failed: Mapped[int] = mapped_column(Integer, default=0)
    pages_skipped: Mapped[int] = mapped_column(Integer, default=0)
    pages_removed: Mapped[int] = mapped_column(Integer, default=0)
    failure_summary: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    stopped_reason: Mapped[str | None] = mapped_column(String(100))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Document(Entity, TenantScoped, Base):
    """A file or text in a collection, or a page of a website; its chunks are what search finds."""

    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint("(collection_id IS NULL) <> (website_id IS NULL)", name="collection_or_website"),
        Index(
            "uq_documents_collection_content",
            "tenant_id",
            "collection_id",
            "content_hash",
            unique=True,
            postgresql_where=text("collection_id IS NOT NULL"),
        ),
        Index(
            "uq_documents_website_url",
            "tenant_id",
            "website_id",
            "url",
            unique=True,
            postgresql_where=text("website_id IS NOT NULL"),
        ),
    )

    collection_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    website_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("websites.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(500))
    filename: Mapped[str | None] = mapped_column(String(255))
    url: Mapped[str | None] = mapped_column(String(2000))
    mime_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    content_hash: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    page_count: Mapped[int | None] = mapped_column(Integer)
    embedding_model_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_models.id", ondelete="SET NULL")
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class Chunk(TenantScoped, Base):
    """A passage of a document: its text, where it is in the document, and its full-text vector."""

    __tablename__ = "chunks"
    __table_args__ = (
        CheckConstraint("(collection_id IS NULL) <> (website_id IS NULL)", name="collection_or_website"),
        Index("ix_chunks_source", "tenant_id", "source_id"),
        Index("ix_chunks_fts", "tsv", postgresql_using="gin"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # ix_chunks_source leads with the tenant, so the mixin's own tenant index would only slow inserts.
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=False)
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    collection_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    website_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("websites.id", ondelete="CASCADE"))
    source_id: Mapped[uuid.UUID] = mapped_column(
        Computed("coalesce(collection_id, website_id)", persisted=True)
    )
    chunk_index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    heading: Mapped[str | None] = mapped_column(Text)
    page: Mapped[int | None] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    tsv: Mapped[Any] = mapped_column(TSVECTOR, Computed(TSVECTOR_SQL, persisted=True))


class ChunkVector(TenantScoped, Base):
    """The vector of a chunk, in a narrow table of its own so that scans read vectors and nothing else.

    Kept apart from the text, both stay in the row (no TOAST lookups): an exact scan over a
    collection's vectors and a full-text scan over its `tsv` each read only what they need.
    """

    __tablename__ = "chunk_vectors"
    __table_args__ = (
        Index("ix_chunk_vectors_source", "tenant_id", "source_id", "dims"),
        *(_hnsw_index(dims, kind) for dims, kind in INDEXED_DIMENSIONS.items()),
    )

    id: Mapped[uuid.UUID] = mapped_column(ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=False)
    source_id: Mapped[uuid.UUID] = mapped_column()
    embedding_model_id: Mapped[uuid.UUID | None] = mapped_column()
    dims: Mapped[int] = mapped_column(SmallInteger)
    embedding: Mapped[Any] = mapped_column(Vector())
