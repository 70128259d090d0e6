"""Hybrid retrieval: vector search and PostgreSQL full text, fused by reciprocal rank.

`search(db, ctx, collection_ids=..., website_ids=..., query=..., limit=...)` is what assistants
call. It searches only the collections and websites it is given, and row-level security (plus
the explicit tenant predicate) keeps it inside the caller's tenant; unknown ids and another
tenant's ids simply contribute nothing. It does not check space roles: deciding which knowledge
an assistant may use is the caller's job (the HTTP search endpoint checks the collection).

Vectors. Sources are grouped by embedding model and the question is embedded once per model.
Each group is searched in one of two ways, chosen from how many passages the group holds (the sum
of its documents' chunk counts, which costs one small aggregate):
- exact: up to `EXACT_SEARCH_MAX` passages, a scan of the group's rows through the
  (tenant, source, dims) index, sorted by distance. Exact by construction, and fast at this size.
- HNSW: above that, the partial index of the vector's dimension, with pgvector's iterative scan
  (`hnsw.iterative_scan = relaxed_order`, `ef_search` and `max_scan_tuples` raised) so that the
  tenant and source filters, which HNSW applies after the scan, still leave enough rows; the
  candidates are re-sorted by exact distance. Groups whose dimension has no index are searched exactly.

Full text. The `tsv` column holds the heading and the text under both the Swedish and the English
stemmer. A question with "quoted phrases" is matched strictly (websearch syntax, phrases in order);
any other question matches passages containing any of its words, ranked by how often they occur,
so a rare exact term (a case number, a name) finds its passage even when vectors do not. `ts_rank`
rather than cover density (`ts_rank_cd`): a question with a common word ranks nearly every passage,
which took 50 ms at 10,000 passages with cover density and 17 ms with `ts_rank`.

Fusion. Reciprocal rank fusion, score = sum over lists of 1 / (60 + rank): robust to the lists'
incomparable scales, and a passage found by both rises to the top.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import Integer, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import Text, Uuid

from allting.ai import gateway
from allting.ai import service as ai_service
from allting.ai.errors import ProviderError
from allting.deps import Ctx
from allting.knowledge.models import INDEXED_DIMENSIONS, Chunk, Document
from allting.platform.db import DriverStatement
from allting.platform.errors import AppError, TooManyRequests
from allting.platform.logging import get_logger
from allting.platform.tenancy import current_tenant, set_tenant

log = get_logger(__name__)

# Groups of up to this many passages are scanned exactly (about 4 ms at 1.6 µs per 384-d row).
EXACT_SEARCH_MAX = 2_500
RRF_K = 60
MAX_LIMIT = 100
HNSW_EF_SEARCH = 64
HNSW_MIN_CANDIDATES = 40
HNSW_ITERATIVE_SCAN = "relaxed_order"
HNSW_MAX_SCAN_TUPLES = 50_000
_QUOTED = re.compile(r'"[^"]+"')
_UUIDS = ARRAY(Uuid())
_WORDS = ARRAY(Text())


@dataclass(frozen=True)
class Passage:
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


@dataclass
class _Source:
    id: uuid.UUID
    model_id: uuid.UUID | None
    chunks: int = 0


async def search(
    db: AsyncSession,
    ctx: Ctx,
    *,
    collection_ids: list[uuid.UUID],
    website_ids: list[uuid.UUID] = (),
    query: str,
    limit: int = 8,
) -> list[Passage]:
    """The passages of the given collections and websites that best answer `query`, best first."""
    query = query.strip()
    if not query or not (collection_ids or website_ids):
        return []
    limit = max(1, min(limit, MAX_LIMIT))
    sources = await _sources(db, list(collection_ids), list(website_ids))
    if not sources:
        return []
    candidates = max(limit * 3, 20)
    ranked: list[list[uuid.UUID]] = []
    groups: dict[uuid.UUID, list[_Source]] = defaultdict(list)
    for source in sources:
        if source.model_id is not None and source.chunks:
            groups[source.model_id].append(source)
    # The question is embedded (in a worker thread or by a provider) while the database runs the
    # full-text search: the two take similar time and need nothing from each other.
    embeddings = {model_id: await _start_embedding(db, ctx, model_id, query) for model_id in groups}
    passages_by_model = {
        model_id: sum(source.chunks for source in group) for model_id, group in groups.items()
    }
    try:
        if any(total > EXACT_SEARCH_MAX for total in passages_by_model.values()):
            await _hnsw_settings(db)  # now, while the question is embedded, rather than after
        common = common_words(ctx.tenant_id, sources)
        text_hits = await text_search(db, [source.id for source in sources], query, candidates, common)
        for model_id, group in groups.items():
            vector = await _finish_embedding(db, ctx, embeddings[model_id], query)
            if vector is None:
                continue
            hits = await vector_search(
                db,
                source_ids=[source.id for source in group],
                model_id=model_id,
                vector=vector,
                k=candidates,
                total_chunks=passages_by_model[model_id],
            )
            ranked.append([chunk_id for chunk_id, _ in hits])
        ranked.append(text_hits)  # after the vectors: among equal scores the nearer passage comes first
    finally:
        for embedding in embeddings.values():
            if embedding is not None:
                embedding.task.cancel()
    fused = fuse(ranked)[:limit]
    return await _passages(db, fused)


def fuse(ranked_lists: Sequence[Sequence[uuid.UUID]]) -> list[tuple[uuid.UUID, float]]:
    """Reciprocal rank fusion of ranked id lists, best first."""
    scores: dict[uuid.UUID, float] = defaultdict(float)
    for ranked in ranked_lists:
        for rank, chunk_id in enumerate(ranked, start=1):
            scores[chunk_id] += 1.0 / (RRF_K + rank)
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


# The given collections and websites that exist in this tenant, with their embedding model and the
# passages their documents hold.
_SOURCES = DriverStatement(
    text(
        "SELECT s.id, s.embedding_model_id, (SELECT coalesce(sum(d.chunk_count), 0) FROM documents AS d "
        "WHERE d.tenant_id = :tenant AND (d.collection_id = s.id OR d.website_id = s.id) "
        "AND d.chunk_count > 0) AS chunks "
        "FROM (SELECT id, embedding_model_id FROM collections WHERE tenant_id = :tenant AND id = ANY(:collections) "
        "UNION ALL SELECT id, embedding_model_id FROM websites WHERE tenant_id = :tenant AND id = ANY(:websites)) AS s"
    ).bindparams(
        bindparam("tenant", type_=Uuid()),
        bindparam("collections", type_=_UUIDS),
        bindparam("websites", type_=_UUIDS),
    )
)


async def _sources(
    db: AsyncSession, collection_ids: list[uuid.UUID], website_ids: list[uuid.UUID]
) -> list[_Source]:
    """The given sources that exist in this tenant, with their model and passage counts."""
    rows = await _SOURCES.fetch(
        db, tenant=current_tenant(db), collections=collection_ids, websites=website_ids
    )
    return [_Source(row["id"], row["embedding_model_id"], int(row["chunks"])) for row in rows]


@dataclass
class _Embedding:
    prepared: ai_service.PreparedCall
    task: asyncio.Future[list[list[float]]]


async def _start_embedding(db: AsyncSession, ctx: Ctx, model_id: uuid.UUID, query: str) -> _Embedding | None:
    """Begin embedding the question with the model, or None (with a log line) when it cannot be used."""
    try:
        prepared = await ai_service.prepare_call(db, ctx, model_id, kind="embedding")
    except TooManyRequests:
        raise
    except AppError as exc:
        log.warning("knowledge.query_model_unusable", model_id=str(model_id), reason=exc.message)
        return None
    return _Embedding(prepared, asyncio.ensure_future(gateway.embed(prepared.target, [query], batch_size=1)))


async def _finish_embedding(
    db: AsyncSession, ctx: Ctx, embedding: _Embedding | None, query: str
) -> list[float] | None:
    if embedding is None:
        return None
    try:
        vectors = await embedding.task
    except ProviderError as exc:
        log.warning(
            "knowledge.query_embedding_failed", model_id=str(embedding.prepared.model.id), error=exc.code
        )
        return None
    if embedding.prepared.model.provider_type != "local":
        await ai_service.record_usage(
            db,
            ctx,
            embedding.prepared.model,
            gateway.Usage(prompt_tokens=max(1, len(query.split())), completion_tokens=0, estimated=True),
            target=embedding.prepared.target,
            latency_ms=None,
        )
    return vectors[0]


async def embed_query(db: AsyncSession, ctx: Ctx, model_id: uuid.UUID, query: str) -> list[float] | None:
    """The question as a vector of the model, or None (with a log line) when the model cannot be used."""
    return await _finish_embedding(db, ctx, await _start_embedding(db, ctx, model_id, query), query)


def _vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form, which is a JSON array of numbers: orjson writes it in microseconds."""
    return orjson.dumps(vector, option=orjson.OPT_SERIALIZE_NUMPY).decode()


async def vector_search(
    db: AsyncSession,
    *,
    source_ids: list[uuid.UUID],
    model_id: uuid.UUID,
    vector: Sequence[float],
    k: int,
    total_chunks: int,
    exact: bool | None = None,
) -> list[tuple[uuid.UUID, float]]:
    """(chunk id, cosine distance) of the k nearest passages among the sources, nearest first.

    `exact` forces one strategy (benchmarks and tests); by default small groups are scanned exactly.
    """
    dims = len(vector)
    kind = INDEXED_DIMENSIONS.get(dims)
    if exact is None:
        exact = kind is None or total_chunks <= EXACT_SEARCH_MAX
    params = {
        "vector": _vector_literal(vector),
        "tenant": current_tenant(db),
        "sources": source_ids,
        "model": model_id,
        "k": k,
    }
    if exact:
        rows = await _vector_sql(dims, kind or "vector", exact=True).fetch(db, **params)
        return [(row["id"], float(row["distance"])) for row in rows]
    await _hnsw_settings(db)
    # HNSW hands out candidates only roughly in order; asking for more than needed and sorting
    # them exactly keeps the true top k when a filter leaves few rows near the question.
    params["k"] = max(k, HNSW_MIN_CANDIDATES)
    rows = await _vector_sql(dims, kind, exact=False).fetch(db, **params)
    return [(row["id"], float(row["distance"])) for row in rows][:k]


_HNSW_SETTINGS = DriverStatement(
    text(
        "SELECT set_config('hnsw.iterative_scan', :mode, true), set_config('hnsw.ef_search', :ef, true), "
        "set_config('hnsw.max_scan_tuples', :tuples, true)"
    )
)


async def _hnsw_settings(db: AsyncSession) -> None:
    """Iterative index scans for the rest of this transaction (set_config(..., true) ends with it)."""
    transaction = db.sync_session.get_transaction()
    if db.info.get("hnsw_settings_for") is transaction:
        return
    await _HNSW_SETTINGS.fetch(
        db, mode=HNSW_ITERATIVE_SCAN, ef=str(HNSW_EF_SEARCH), tuples=str(HNSW_MAX_SCAN_TUPLES)
    )
    db.info["hnsw_settings_for"] = transaction


@functools.cache
def _vector_sql(dims: int, kind: str, *, exact: bool) -> DriverStatement:
    """The nearest-neighbour statement; only an int and a type name from INDEXED_DIMENSIONS are spliced in."""
    # The question's vector is an InitPlan, parsed once: a cast of the parameter written inline
    # would be parsed again for every row once the server switches to a generic plan.
    distance = f"(embedding::{kind}({dims})) <=> (SELECT CAST(CAST(:vector AS text) AS {kind}({dims})))"
    where = (
        f"dims = {dims} AND tenant_id = :tenant AND source_id = ANY(:sources) AND embedding_model_id = :model"
    )
    if exact:
        # OFFSET 0 keeps the planner from walking the HNSW index: this reads the group's rows.
        sql = (
            f"SELECT id, distance FROM (SELECT id, {distance} AS distance FROM chunk_vectors "  # noqa: S608
            f"WHERE {where} OFFSET 0) AS candidates ORDER BY distance LIMIT :k"
        )
    else:
        # Relaxed order is faster than strict; the outer ORDER BY restores the exact order.
        sql = (
            f"WITH candidates AS MATERIALIZED (SELECT id, {distance} AS distance "  # noqa: S608
            f"FROM chunk_vectors WHERE {where} ORDER BY {distance} LIMIT :k) "
            "SELECT id, distance FROM candidates ORDER BY distance"
        )
    return DriverStatement(
        text(sql).bindparams(
            bindparam("vector", type_=Text()),
            bindparam("tenant", type_=Uuid()),
            bindparam("sources", type_=_UUIDS),
            bindparam("model", type_=Uuid()),
            bindparam("k", type_=Integer()),
        )
    )


# The question's words under both stemmers, OR-ed. A word that either language drops as a stop
# word is left out altogether: the Swedish half of every tsv holds English stop words ("the",
# "to") and the English half Swedish ones ("och", "att"), which would otherwise match everything.
# Both configurations share a parser, so a word has the same position in both vectors, and a
# position missing from one is a stop word there. (This gives the same words as pairing the
# tokens of ts_debug did, in half its 0.75 ms.) Quotes, backslashes and colons are dropped so
# each lexeme can be a quoted tsquery operand.
_ANY_WORD = (
    "(SELECT to_tsquery('simple', string_agg(DISTINCT '''' || lexeme || '''', ' | ')) FROM ("
    "SELECT regexp_replace(l, '[''\\\\:]', '', 'g') AS lexeme "
    "FROM unnest(to_tsvector('swedish', :query)) AS s, unnest(s.positions) AS s_at(n), "
    "unnest(to_tsvector('english', :query)) AS e, unnest(e.positions) AS e_at(n), "
    "unnest(ARRAY[s.lexeme, e.lexeme]) AS l "
    "WHERE s_at.n = e_at.n) AS words "
    "WHERE lexeme <> '' AND lexeme <> ALL(:common))"
)
_PHRASES = "(websearch_to_tsquery('swedish', :query) || websearch_to_tsquery('english', :query))"


async def text_search(
    db: AsyncSession, source_ids: list[uuid.UUID], query: str, k: int, common: Sequence[str] = ()
) -> list[uuid.UUID]:
    """Chunk ids matching the question's words (or its quoted phrases), best ranked first. Words in
    `common` (see `common_words`) are left out of an unquoted question."""
    params = {"query": query, "tenant": current_tenant(db), "sources": source_ids, "k": k}
    if _QUOTED.search(query):
        rows = await _TEXT_SEARCH_PHRASES.fetch(db, **params)
    else:
        rows = await _TEXT_SEARCH_WORDS.fetch(db, common=list(common), **params)
    return [row["id"] for row in rows]


def _text_search_statement(query: str, *extra) -> DriverStatement:
    return DriverStatement(
        text(
            f"SELECT c.id FROM chunks AS c, (SELECT {query} AS query) AS q "  # noqa: S608 - constants only
            "WHERE c.tenant_id = :tenant AND c.source_id = ANY(:sources) AND q.query IS NOT NULL "
            "AND c.tsv @@ q.query ORDER BY ts_rank(c.tsv, q.query) DESC, c.id LIMIT :k"
        ).bindparams(
            bindparam("query", type_=Text()),
            bindparam("tenant", type_=Uuid()),
            bindparam("sources", type_=_UUIDS),
            bindparam("k", type_=Integer()),
            *extra,
        )
    )


_TEXT_SEARCH_PHRASES = _text_search_statement(_PHRASES)
_TEXT_SEARCH_WORDS = _text_search_statement(_ANY_WORD, bindparam("common", type_=_WORDS))


# Words in at least this share of a large source's passages carry no signal for ranking (like
# stop words) yet make full text rank nearly every passage: 17 ms of database time per question at
# 10,000 passages, all of it spent again by every concurrent question. They are found per source
# with ts_stat in the background (a few hundred ms per 10,000 passages, once per process and
# COMMON_WORDS_TTL) and left out of unquoted questions; small sources are cheap to rank whole.
COMMON_WORD_SHARE = 0.05
COMMON_WORDS_MIN_PASSAGES = 500
COMMON_WORDS_MAX = 2000
COMMON_WORDS_TTL = 600.0
_common_words: dict[uuid.UUID, tuple[float, frozenset[str]]] = {}
_refreshing: dict[uuid.UUID, asyncio.Task[None]] = {}


def common_words(tenant_id: uuid.UUID, sources: Sequence[_Source]) -> list[str]:
    """The common words of the sources as known now; stale or missing ones are looked up in the
    background for the next question, so no question waits for ts_stat."""
    now = time.monotonic()
    words: set[str] = set()
    for source in sources:
        if source.chunks < COMMON_WORDS_MIN_PASSAGES:
            continue
        known = _common_words.get(source.id)
        if (known is None or known[0] < now) and source.id not in _refreshing:
            _refreshing[source.id] = asyncio.ensure_future(_refresh_common_words(tenant_id, source))
        if known is not None:
            words |= known[1]
    return sorted(words)


async def _refresh_common_words(tenant_id: uuid.UUID, source: _Source) -> None:
    from allting.platform.db import transaction

    try:
        # ts_stat takes the statement as text; the id is a UUID, and row-level security limits
        # the rows to the tenant like any other statement.
        statement = f"SELECT tsv FROM chunks WHERE source_id = '{uuid.UUID(str(source.id))}'"  # noqa: S608
        async with transaction() as db:
            await set_tenant(db, tenant_id)
            rows = await db.execute(
                text(
                    "SELECT word FROM ts_stat(:statement) WHERE ndoc >= :least ORDER BY ndoc DESC LIMIT :most"
                ),
                {
                    "statement": statement,
                    "least": max(2, int(source.chunks * COMMON_WORD_SHARE)),
                    "most": COMMON_WORDS_MAX,
                },
            )
            words = frozenset(row.word for row in rows)
        if len(_common_words) >= 4096:
            _common_words.clear()
        _common_words[source.id] = (time.monotonic() + COMMON_WORDS_TTL, words)
    except Exception as exc:  # a cache warm-up: the next question tries again
        log.warning("knowledge.common_words_failed", source_id=str(source.id), error=type(exc).__name__)
    finally:
        _refreshing.pop(source.id, None)


_PASSAGES = DriverStatement(
    select(
        Chunk.id,
        Chunk.document_id,
        Chunk.collection_id,
        Chunk.website_id,
        Chunk.text,
        Chunk.page,
        Chunk.heading,
        Document.title,
        Document.url,
    )
    .join(Document, Document.id == Chunk.document_id)
    .where(Chunk.tenant_id == bindparam("tenant"), Chunk.id == any_(bindparam("ids", type_=_UUIDS)))
)


async def _passages(db: AsyncSession, fused: list[tuple[uuid.UUID, float]]) -> list[Passage]:
    if not fused:
        return []
    rows = await _PASSAGES.fetch(db, tenant=current_tenant(db), ids=[chunk_id for chunk_id, _ in fused])
    by_id = {row["id"]: row for row in rows}
    passages = []
    for chunk_id, score in fused:
        row = by_id.get(chunk_id)
        if row is None:
            continue
        passages.append(
            Passage(
                chunk_id=row["id"],
                document_id=row["document_id"],
                collection_id=row["collection_id"],
                website_id=row["website_id"],
                title=row["title"],
                text=row["text"],
                page=row["page"],
                heading=row["heading"],
                url=row["url"],
                score=round(score, 6),
            )
        )
    return passages
