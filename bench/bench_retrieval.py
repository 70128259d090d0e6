"""Retrieval at 100,000 passages: latency and recall@10 under tenant and collection filters.

One shared `chunks`/`chunk_vectors` pair of tables holds two tenants' passages: tenant A has a large collection, a tiny
one and many medium ones; tenant B has as many passages again in its own collections. Vectors
are synthetic unit vectors (384 dimensions, the local model's size) drawn around shared random
centres, so both tenants have passages near every query: the case where a filter applied after
an index scan loses results. Queries come from the same distribution. The ground truth is exact
cosine top-10 computed with numpy over the collection's own vectors.

Each strategy is measured as the application role inside a tenant-bound transaction, like a
request: "plain HNSW" is the partial HNSW index with the filter and pgvector's defaults
(ef_search 40, no iterative scan); "allting" is `retrieval.vector_search` as `search` calls it
(exact scan up to EXACT_SEARCH_MAX passages, else HNSW with iterative scan); "forced HNSW" and
"forced exact" pin one strategy. "hybrid search()" is the full function assistants call:
the question embedded by the local model, vectors, full text and fusion.

Setup uses COPY as the embedded server's superuser (COPY FROM is refused under row-level
security), then builds the HNSW index once.

    .venv/bin/python bench/bench_retrieval.py [--passages 100000] [--queries 100] [--large 40000] [--tiny 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

DIMS = 384
VOCABULARY_SIZE = 20_000
WORDS = [
    "kommun",
    "bygglov",
    "skola",
    "förskola",
    "parkering",
    "avgift",
    "ansökan",
    "beslut",
    "nämnd",
    "detaljplan",
    "vatten",
    "avlopp",
    "bibliotek",
    "äldreomsorg",
    "hemtjänst",
    "färdtjänst",
    "council",
    "permit",
    "school",
    "parking",
    "fee",
    "application",
    "decision",
    "board",
    "plan",
    "water",
    "library",
    "care",
    "transport",
    "budget",
    "invest",
    "road",
    "snow",
    "park",
]


def _vocabulary(rng: np.random.Generator) -> list[str]:
    """The domain words first (the most frequent), then invented words for the long tail."""
    letters = np.array(list("abdefghijklmnoprstuvyåäö"))
    invented = {"".join(rng.choice(letters, size=rng.integers(4, 11))) for _ in range(VOCABULARY_SIZE)}
    return WORDS + sorted(invented - set(WORDS))[: VOCABULARY_SIZE - len(WORDS)]


@dataclass
class Source:
    name: str
    tenant: uuid.UUID
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    document: uuid.UUID = field(default_factory=uuid.uuid4)
    size: int = 0
    rows: list[int] = field(default_factory=list)


def _vectors(count: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), count)]
    noisy = picks + rng.normal(0, 1.2 / np.sqrt(DIMS), (count, DIMS))
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


async def setup(active, args, rng) -> tuple[dict, np.ndarray, list[Source], uuid.UUID]:
    import asyncpg
    from pgvector.asyncpg import register_vector
    from sqlalchemy import select

    from allting.ai.models import AiModel
    from allting.knowledge.models import Collection, Document
    from allting.platform.db import system_transaction
    from allting.spaces.models import Space
    from allting.tenants import service as tenants_service
    from allting.tenants.schemas import TenantCreate

    async with system_transaction() as db:
        tenants = {}
        for label in ("A", "B"):
            tenant = await tenants_service.create_tenant(
                db, TenantCreate(name=f"Bench {label} {uuid.uuid4().hex[:6]}")
            )
            tenants[label] = tenant.id
        await db.flush()
        models = {
            label: await db.scalar(
                select(AiModel.id).where(
                    AiModel.tenant_id == tenant_id, AiModel.kind == "embedding", AiModel.is_default
                )
            )
            for label, tenant_id in tenants.items()
        }
        sources: list[Source] = [
            Source("large", tenants["A"], size=args.large),
            Source("medium", tenants["A"], size=args.medium),
            Source("tiny", tenants["A"], size=args.tiny),
        ]
        rest_a = args.passages // 2 - args.large - args.medium - args.tiny
        rest_b = args.passages - args.passages // 2
        for label, rest in (("A", rest_a), ("B", rest_b)):
            count = max(1, rest // 500)
            for number in range(count):
                sources.append(Source(f"{label}-{number}", tenants[label], size=rest // count))
        for label, tenant_id in tenants.items():
            space = Space(tenant_id=tenant_id, name="Bench", kind="shared")
            db.add(space)
            await db.flush()
            for source in sources:
                if source.tenant != tenant_id:
                    continue
                db.add(
                    Collection(
                        id=source.id,
                        tenant_id=tenant_id,
                        space_id=space.id,
                        name=source.name,
                        embedding_model_id=models[label],
                        embedding_dims=DIMS,
                    )
                )
                await db.flush()
                db.add(
                    Document(
                        id=source.document,
                        tenant_id=tenant_id,
                        collection_id=source.id,
                        title=f"Document of {source.name}",
                        mime_type="text/plain",
                        size=source.size * 300,
                        content_hash=uuid.uuid4().hex,
                        status="ready",
                        chunk_count=source.size,
                        embedding_model_id=models[label],
                    )
                )
    total = sum(source.size for source in sources)
    centres = rng.normal(0, 1, (args.centres, DIMS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = _vectors(total, centres, rng)
    ids = [uuid.uuid4() for _ in range(total)]
    socket_dir = active.services.postgres_socket_dir
    connection = await asyncpg.connect(f"postgresql://postgres@/allting?host={socket_dir}")
    await register_vector(connection)
    index_sql = await connection.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_chunk_vectors_embedding_384'"
    )
    await connection.execute("DROP INDEX ix_chunk_vectors_embedding_384")
    chunk_records, vector_records = [], []
    row = 0
    model_by_tenant = {tenants[label]: models[label] for label in tenants}
    vocabulary = _vocabulary(rng)
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)  # Zipf: a few common words, a long tail
    weights /= weights.sum()
    for source in sources:
        words = rng.choice(len(vocabulary), size=(source.size, 60), p=weights)
        for index in range(source.size):
            body = " ".join(vocabulary[w] for w in words[index])
            chunk_records.append((ids[row], source.tenant, source.document, source.id, index, f"{body}.", 80))
            vector_records.append(
                (ids[row], source.tenant, source.id, model_by_tenant[source.tenant], DIMS, vectors[row])
            )
            source.rows.append(row)
            row += 1
    started = time.perf_counter()
    await connection.copy_records_to_table(
        "chunks",
        records=chunk_records,
        columns=["id", "tenant_id", "document_id", "collection_id", "chunk_index", "text", "token_count"],
    )
    await connection.copy_records_to_table(
        "chunk_vectors",
        records=vector_records,
        columns=["id", "tenant_id", "source_id", "embedding_model_id", "dims", "embedding"],
    )
    copied = time.perf_counter() - started
    started = time.perf_counter()
    await connection.execute("SET maintenance_work_mem = '1GB'")
    await connection.execute("SET max_parallel_maintenance_workers = 2")
    await connection.execute(index_sql)
    await connection.execute("ANALYZE chunks")
    await connection.execute("ANALYZE chunk_vectors")
    indexed = time.perf_counter() - started
    await connection.close()
    print(
        f"setup: {total:,} passages in {len(sources)} collections; COPY {copied:.1f} s, HNSW build {indexed:.1f} s"
    )
    return {"ids": ids, "models": models, "tenants": tenants}, vectors, sources, centres


async def load(active, args, rng) -> tuple[dict, np.ndarray, list[Source], np.ndarray]:
    """The passages a previous run left in --data-dir (with --reuse), for quick parameter trials."""
    import asyncpg
    from pgvector.asyncpg import register_vector

    centres = rng.normal(0, 1, (args.centres, DIMS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    socket_dir = active.services.postgres_socket_dir
    connection = await asyncpg.connect(f"postgresql://postgres@/allting?host={socket_dir}")
    await register_vector(connection)
    ids, rows, sources = [], [], []
    for name in ("large", "medium", "tiny"):
        found = await connection.fetchrow(
            "SELECT id, tenant_id, embedding_model_id FROM collections WHERE name = $1 "
            "ORDER BY created_at DESC LIMIT 1",
            name,
        )
        source = Source(name, found["tenant_id"], id=found["id"])
        for record in await connection.fetch(
            "SELECT id, embedding FROM chunk_vectors WHERE source_id = $1", found["id"]
        ):
            source.rows.append(len(ids))
            ids.append(record["id"])
            rows.append(np.asarray(record["embedding"].to_numpy(), dtype=np.float32))
        source.size = len(source.rows)
        sources.append(source)
        model = found["embedding_model_id"]
    await connection.close()
    world = {"ids": ids, "models": {"A": model}, "tenants": {"A": sources[0].tenant}}
    return world, np.vstack(rows), sources, centres


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def measure(world, vectors, sources, centres, args, rng) -> None:
    from sqlalchemy import text

    from allting.deps import Ctx
    from allting.knowledge import retrieval
    from allting.platform.db import transaction
    from allting.platform.tenancy import set_tenant

    ids = world["ids"]
    tenant_a = world["tenants"]["A"]
    model = world["models"]["A"]
    queries = _vectors(args.queries, centres, rng)
    print(
        f"\n{args.queries} queries per row, recall@10 against exact numpy top-10, latency in ms "
        f"(EXACT_SEARCH_MAX={retrieval.EXACT_SEARCH_MAX:,}, ef_search={retrieval.HNSW_EF_SEARCH})"
    )
    header = f"{'collection':<16} | {'strategy':<22} | {'recall@10':>9} | {'p50':>7} | {'p95':>7}"
    print(header)
    print("-" * len(header))

    async def plain_hnsw(db, source, vector):
        literal = "[" + ",".join(f"{x:.7f}" for x in vector) + "]"
        rows = await db.execute(
            text(
                "SELECT id FROM chunk_vectors WHERE dims = 384 AND tenant_id = :tenant AND source_id = :source "
                "ORDER BY (embedding::vector(384)) <=> (SELECT CAST(CAST(:v AS text) AS vector(384))) LIMIT 10"
            ),
            {"tenant": tenant_a, "source": source.id, "v": literal},
        )
        return [row.id for row in rows]

    def ours(exact):
        async def run(db, source, vector):
            hits = await retrieval.vector_search(
                db,
                source_ids=[source.id],
                model_id=model,
                vector=vector.tolist(),
                k=10,
                total_chunks=source.size,
                exact=exact,
            )
            return [chunk_id for chunk_id, _ in hits]

        return run

    defaults = (retrieval.HNSW_EF_SEARCH, retrieval.HNSW_MIN_CANDIDATES, retrieval.HNSW_ITERATIVE_SCAN)
    strategies = [
        ("plain HNSW", plain_hnsw),
        ("allting", ours(None)),
        ("forced HNSW", ours(False)),
        ("forced exact", ours(True)),
    ]
    if args.sweep:
        for mode in ("relaxed_order", "strict_order"):
            for ef in (40, 64, 100):
                for candidates in (10, 40):

                    def tuned(mode=mode, ef=ef, candidates=candidates):
                        inner = ours(False)

                        async def run(db, source, vector):
                            retrieval.HNSW_ITERATIVE_SCAN = mode
                            retrieval.HNSW_EF_SEARCH = ef
                            retrieval.HNSW_MIN_CANDIDATES = candidates
                            return await inner(db, source, vector)

                        return run

                    strategies.append((f"{mode[:6]} ef={ef} c={candidates}", tuned()))
    measured = ("large", "medium", "tiny")
    for source in (s for s in sources if s.name in measured):
        own = vectors[source.rows]
        truth = []
        for vector in queries:
            top = np.argsort(-(own @ vector))[:10]
            truth.append({ids[source.rows[i]] for i in top})
        for label, strategy in strategies:
            recalls, latencies = [], []
            retrieval.HNSW_EF_SEARCH, retrieval.HNSW_MIN_CANDIDATES, retrieval.HNSW_ITERATIVE_SCAN = defaults
            async with transaction() as db:
                await set_tenant(db, tenant_a)
                for vector in queries[:5]:
                    await strategy(db, source, vector)  # warm-up
                for vector, expected in zip(queries, truth, strict=True):
                    started = time.perf_counter()
                    found = await strategy(db, source, vector)
                    latencies.append((time.perf_counter() - started) * 1000)
                    recalls.append(len(expected & set(found[:10])) / len(expected))
            print(
                f"{source.name + f' ({source.size:,})':<16} | {label:<22} | {statistics.mean(recalls):>9.3f} | "
                f"{_percentile(latencies, 0.5):>7.2f} | {_percentile(latencies, 0.95):>7.2f}"
            )
    ctx = Ctx(tenant_id=tenant_a, user_id=None, actor_type="bench")
    print("\nhybrid search(): questions of one common and two rarer words of the collection, ms (p50 / p95)")
    print(f"{'collection':<16} | {'embed question':>15} | {'full text':>15} | {'search()':>15}")
    retrieval.HNSW_EF_SEARCH, retrieval.HNSW_MIN_CANDIDATES, retrieval.HNSW_ITERATIVE_SCAN = defaults
    for source in (s for s in sources if s.name in measured):
        timings: dict[str, list[float]] = {"embed": [], "text": [], "search": []}
        async with transaction() as db:
            await set_tenant(db, tenant_a)
            texts = list(
                await db.scalars(
                    text("SELECT text FROM chunks WHERE source_id = :s LIMIT 200"), {"s": source.id}
                )
            )
            await retrieval.search(db, ctx, collection_ids=[source.id], query="bygglov för altan")
            for _ in range(args.queries):
                words = texts[int(rng.integers(0, len(texts)))].rstrip(".").split()
                question = " ".join(
                    [WORDS[int(rng.integers(0, len(WORDS)))], *rng.choice(words, 2, replace=False)]
                )
                for label, call in (
                    ("embed", lambda q=question: retrieval.embed_query(db, ctx, model, q)),
                    ("text", lambda q=question: retrieval.text_search(db, [source.id], q, 24)),
                    (
                        "search",
                        lambda q=question: retrieval.search(
                            db, ctx, collection_ids=[source.id], query=q, limit=8
                        ),
                    ),
                ):
                    started = time.perf_counter()
                    await call()
                    timings[label].append((time.perf_counter() - started) * 1000)
        cells = " | ".join(
            f"{_percentile(values, 0.5):6.1f} / {_percentile(values, 0.95):6.1f}"
            for values in timings.values()
        )
        print(f"{source.name + f' ({source.size:,})':<16} | {cells}")


async def main(args) -> None:
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="allting-bench-retrieval-")
    os.environ["ALLTING_DATA_DIR"] = data_dir
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("LOG_FORMAT", "console")
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    from allting.platform import runtime
    from allting.platform.settings import get_settings

    get_settings.cache_clear()
    import allting.all_models  # noqa: F401

    rng = np.random.default_rng(args.seed)
    active = await runtime.start(get_settings())
    try:
        if args.reuse:
            world, vectors, sources, centres = await load(active, args, rng)
        else:
            world, vectors, sources, centres = await setup(active, args, rng)
        await measure(world, vectors, sources, centres, args, rng)
    finally:
        await runtime.stop(active)
    print(f"\n(data directory: {data_dir})", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=40_000)
    parser.add_argument("--medium", type=int, default=4_000)
    parser.add_argument("--tiny", type=int, default=30)
    parser.add_argument("--sweep", action="store_true", help="also sweep ef_search for forced HNSW")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--centres", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--reuse", action="store_true", help="measure the passages left in --data-dir")
    asyncio.run(main(parser.parse_args()))
