"""Hybrid retrieval: paraphrases by vector, exact terms and phrases by full text, only in scope."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from sqlalchemy import bindparam, select, text

from allting.deps import Ctx
from allting.knowledge import retrieval
from allting.knowledge.models import ChunkVector
from allting.platform.db import system_transaction, transaction
from allting.platform.tenancy import set_tenant

DOCUMENTS = {
    "permits.txt": "Residents can apply for a permit to build a deck or a fence around their garden.",
    "transport.txt": "Pupils who live more than two kilometres from school are given free bus transport.",
    "waste.txt": "Household garbage is collected every other Tuesday. Sort packaging for recycling.",
    "library.txt": "The library is open from nine to five on weekdays and closed on public holidays.",
    "diarium.txt": "Beslutet om detaljplanen har diarienummer Zorbulex-0173 och vann laga kraft i maj.",
    "sophantering.txt": "Återvinning av förpackningar sker vid stationen bakom Ängby centrum.",
}


async def _search(client, collection_id: str, query: str, limit: int = 5) -> list[dict]:
    response = await client.post(
        f"/api/v1/collections/{collection_id}/search/", json={"query": query, "limit": limit}
    )
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def _fill(client, knowledge, collection_id: str, documents: dict[str, str]) -> dict[str, dict]:
    uploaded = {
        name: await knowledge.upload(client, collection_id, name, text.encode())
        for name, text in documents.items()
    }
    done = {name: await knowledge.wait_for_document(client, d["id"]) for name, d in uploaded.items()}
    assert {d["status"] for d in done.values()} == {"ready"}, done
    return done


async def test_search_finds_paraphrases_by_vector_and_exact_terms_by_full_text(
    org, collection, worker, knowledge, local_model
):
    client = org.owner.client
    documents = await _fill(client, knowledge, collection["id"], DOCUMENTS)
    by_id = {d["id"]: name for name, d in documents.items()}

    for question, expected in (
        ("How do kids travel to their classes?", "transport.txt"),  # no shared content word
        ("Can I put up a wall around my yard?", "permits.txt"),
        ("When is the trash picked up?", "waste.txt"),
        ("zorbulex-0173", "diarium.txt"),  # a code no embedding knows
        ('"återvinning av förpackningar"', "sophantering.txt"),  # a quoted Swedish phrase
        ("förpackningarna återvinns", "sophantering.txt"),  # Swedish stems match other forms
    ):
        items = await _search(client, collection["id"], question)
        assert by_id[items[0]["document_id"]] == expected, (
            question,
            [by_id[i["document_id"]] for i in items],
        )

    top = (await _search(client, collection["id"], "zorbulex-0173"))[0]
    assert top["title"] == "diarium"
    assert top["collection_id"] == collection["id"] and top["website_id"] is None
    assert "Zorbulex-0173" in top["text"] and top["score"] > 0
    assert set(top) == {
        "chunk_id", "document_id", "collection_id", "website_id", "title", "text", "page", "heading", "url", "score"
    }  # fmt: skip


async def test_search_stays_inside_the_given_collections_and_the_tenant(
    org, other_org, space, collection, worker, knowledge, local_model
):
    client = org.owner.client
    other = await knowledge.create_collection(client, space["id"], "Annat")
    await _fill(client, knowledge, collection["id"], {"a.txt": "Snow is cleared from cycle paths first."})
    await _fill(client, knowledge, other["id"], {"b.txt": "Snow is cleared from the main roads at night."})
    items = await _search(client, collection["id"], "snow clearing", limit=10)
    assert {item["collection_id"] for item in items} == {collection["id"]}

    theirs_space = await knowledge.create_space(other_org.owner.client)
    theirs = await knowledge.create_collection(other_org.owner.client, theirs_space["id"])
    await _fill(other_org.owner.client, knowledge, theirs["id"], {"c.txt": "Snow is cleared by the county."})
    ctx = Ctx(tenant_id=org.id, user_id=org.owner.id, actor_type="user")
    async with transaction() as db:
        await set_tenant(db, org.id)
        mixed = await retrieval.search(
            db,
            ctx,
            collection_ids=[uuid.UUID(theirs["id"]), uuid.UUID(collection["id"]), uuid.uuid4()],
            query="snow cleared county",
            limit=10,
        )
        only_theirs = await retrieval.search(db, ctx, collection_ids=[uuid.UUID(theirs["id"])], query="snow")
    assert mixed and {str(p.collection_id) for p in mixed} == {collection["id"]}
    assert only_theirs == []


async def test_the_hnsw_path_returns_what_the_exact_scan_returns_under_rls(
    org, collection, worker, knowledge, local_model
):
    client = org.owner.client
    await _fill(client, knowledge, collection["id"], DOCUMENTS)
    model_id = uuid.UUID(collection["embedding_model"]["id"])
    ctx = Ctx(tenant_id=org.id, user_id=org.owner.id, actor_type="user")
    async with transaction() as db:
        await set_tenant(db, org.id)
        vector = await retrieval.embed_query(db, ctx, model_id, "bus transport for pupils")
        arguments = {
            "source_ids": [uuid.UUID(collection["id"])],
            "model_id": model_id,
            "vector": vector,
            "k": 4,
            "total_chunks": 6,
        }
        exact = await retrieval.vector_search(db, exact=True, **arguments)
        indexed = await retrieval.vector_search(db, exact=False, **arguments)
        assert [chunk_id for chunk_id, _ in indexed] == [chunk_id for chunk_id, _ in exact]
        settings = (
            await db.execute(select(retrieval.text("current_setting('hnsw.iterative_scan')")))
        ).scalar()
        assert settings == "relaxed_order"
    async with transaction() as db:  # no tenant bound: nothing, whichever path
        assert await retrieval.vector_search(db, exact=False, **arguments) == []
        assert await retrieval.vector_search(db, exact=True, **arguments) == []


async def test_changing_the_embedding_model_re_embeds_the_collection_as_a_job(
    org, space, collection, worker, knowledge, llm, local_model
):
    client = org.owner.client
    documents = await _fill(client, knowledge, collection["id"], DOCUMENTS)
    llm.script(embedding_dimensions=768)
    provider = await client.post(
        "/api/v1/admin/model-providers/",
        json={
            "name": f"emb-{uuid.uuid4().hex[:6]}",
            "provider_type": "vllm",
            "endpoint": llm.url,
            "api_key": "sk-stub-key-for-tests",
        },
    )
    assert provider.status_code == 201, provider.text
    model = await client.post(
        "/api/v1/ai-models/",
        json={
            "kind": "embedding",
            "name": "stub-embed",
            "display_name": "Stub embeddings",
            "provider_id": provider.json()["id"],
            "dimensions": 768,
            "hosting": "on_premises",
            "security_level": 3,
            "is_enabled": True,
        },
    )
    assert model.status_code == 201, model.text
    changed = await client.patch(
        f"/api/v1/collections/{collection['id']}", json={"embedding_model_id": model.json()["id"]}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["pending_embedding_model"]["id"] == model.json()["id"]
    assert changed.json()["embedding_model"]["dimensions"] == 384  # search keeps the old model meanwhile
    job_id = changed.json()["reembed_job_id"]
    import asyncio

    for _ in range(400):
        job = (await client.get(f"/api/v1/jobs/{job_id}/")).json()
        if job["status"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.05)
    assert job["status"] == "succeeded", job
    after = (await client.get(f"/api/v1/collections/{collection['id']}")).json()
    assert after["embedding_model"]["id"] == model.json()["id"] and after["pending_embedding_model"] is None
    async with system_transaction() as db:
        dims = set(
            await db.scalars(
                select(ChunkVector.dims).where(ChunkVector.source_id == uuid.UUID(collection["id"]))
            )
        )
    assert dims == {768}
    # The stub's vectors are hashes: only exact text matches them, so the full text carries this.
    items = await _search(client, collection["id"], "zorbulex-0173")
    assert items[0]["document_id"] == documents["diarium.txt"]["id"]

    # Two collections with different models are searched together, each with its own model.
    local = await knowledge.create_collection(client, space["id"], "Lokal")
    await _fill(client, knowledge, local["id"], {"x.txt": "Pupils get free bus transport to school."})
    ctx = Ctx(tenant_id=org.id, user_id=org.owner.id, actor_type="user")
    async with transaction() as db:
        await set_tenant(db, org.id)
        passages = await retrieval.search(
            db,
            ctx,
            collection_ids=[uuid.UUID(collection["id"]), uuid.UUID(local["id"])],
            query="How do kids travel to their classes?",
        )
    assert {str(p.collection_id) for p in passages} == {collection["id"], local["id"]}


async def test_words_in_most_passages_of_a_large_source_are_left_out_of_full_text(
    org, collection, worker, knowledge, local_model, monkeypatch
):
    monkeypatch.setattr(retrieval, "COMMON_WORDS_MIN_PASSAGES", 3)
    retrieval._common_words.clear()
    client = org.owner.client
    documents = {f"notice-{n}.txt": f"Vretaby kommun informerar om ärende {n * 7919}." for n in range(5)}
    documents["deck.txt"] = "Vretaby kommun beviljar altanbygge efter ansökan."
    await _fill(client, knowledge, collection["id"], documents)
    collection_id = uuid.UUID(collection["id"])
    ctx = Ctx(tenant_id=org.id, user_id=org.owner.id, actor_type="user")
    async with transaction() as db:
        await set_tenant(db, org.id)
        sources = await retrieval._sources(db, [collection_id], [])
        assert retrieval.common_words(org.id, sources) == []  # not known yet: the question does not wait
        everything = await retrieval.text_search(db, [collection_id], "Vretaby altanbygge", 10)
    await asyncio.gather(*retrieval._refreshing.values())
    async with transaction() as db:
        await set_tenant(db, org.id)
        common = retrieval.common_words(org.id, sources)
        assert "vretaby" in common and "altanbygg" not in common
        rare_only = await retrieval.text_search(db, [collection_id], "Vretaby altanbygge", 10, common)
        only_common = await retrieval.text_search(db, [collection_id], "Vretaby kommun", 10, common)
        by_vector = await retrieval.search(db, ctx, collection_ids=[collection_id], query="Vretaby kommun")
    assert len(everything) == 6
    assert len(rare_only) == 1
    assert only_common == []
    assert by_vector  # the vectors still answer a question made only of common words


async def _copy_passages(runtime, collection: dict, texts: list[str]) -> None:
    """Passages written straight into the database (as the bench does), without embedding them."""
    connection = await asyncpg.connect(
        f"postgresql://postgres@/allting?host={runtime.services.postgres_socket_dir}"
    )
    try:
        collection_id = uuid.UUID(collection["id"])
        tenant_id, model_id = await connection.fetchrow(
            "SELECT tenant_id, embedding_model_id FROM collections WHERE id = $1", collection_id
        )
        document_id = uuid.uuid4()
        await connection.execute(
            "INSERT INTO documents (id, tenant_id, collection_id, title, mime_type, size, content_hash, "
            "status, chunk_count, token_count, embedding_model_id) "
            "VALUES ($1, $2, $3, 'Copied', 'text/plain', 1, $4, 'ready', $5, $5, $6)",
            document_id,
            tenant_id,
            collection_id,
            uuid.uuid4().hex,
            len(texts),
            model_id,
        )
        await connection.copy_records_to_table(
            "chunks",
            records=[
                (uuid.uuid4(), tenant_id, document_id, collection_id, n, body, 10)
                for n, body in enumerate(texts)
            ],
            columns=["id", "tenant_id", "document_id", "collection_id", "chunk_index", "text", "token_count"],
        )
        await connection.execute("ANALYZE chunks")
    finally:
        await connection.close()


async def test_full_text_reads_its_index_under_row_level_security_and_stays_in_the_tenant(
    org, other_org, collection, runtime, knowledge
):
    theirs_space = await knowledge.create_space(other_org.owner.client)
    theirs = await knowledge.create_collection(other_org.owner.client, theirs_space["id"])
    filler = [
        f"Protokoll från nämndens sammanträde nummer {n} om budget, skolor, vägar och parker i kommunen."
        for n in range(20_000)
    ]
    await _copy_passages(runtime, collection, [*filler, "Ärendet gäller xylofonskolans tak."])
    await _copy_passages(runtime, theirs, ["Deras ärende gäller också xylofonskolans tak."])
    sql = (
        f"EXPLAIN SELECT c.id FROM chunks AS c, (SELECT {retrieval._ANY_WORD} AS query) AS q "
        "WHERE c.tenant_id = :tenant AND c.source_id = ANY(:sources) AND q.query IS NOT NULL "
        "AND c.tsv @@ q.query ORDER BY ts_rank(c.tsv, q.query) DESC, c.id LIMIT :k"
    )
    sources = [uuid.UUID(collection["id"]), uuid.UUID(theirs["id"])]
    async with transaction() as db:
        await set_tenant(db, org.id)
        plan = "\n".join(
            row[0]
            for row in await db.execute(
                text(sql).bindparams(
                    bindparam("sources", type_=retrieval._UUIDS), bindparam("common", type_=retrieval._WORDS)
                ),
                {"query": "xylofonskolans", "tenant": org.id, "sources": sources, "k": 10, "common": []},
            )
        )
        found = await retrieval.text_search(db, sources, "xylofonskolans", 10)
    assert "ix_chunks_fts" in plan, plan
    assert len(found) == 1  # their passage with the same word stays theirs
