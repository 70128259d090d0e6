"""Ingestion throughput: passages per second through the whole pipeline vs raw embedding, in one run.

"pipeline" is the real job runner (`worker.execute_job`) on a stored Word document: claim the job,
load the original from storage, parse it in the isolated child process, split it into passages,
embed them in batches through the gateway with the collection's model (the bundled local
all-MiniLM-L6-v2), swap the document's chunks in, finish the job, all in its transaction. Each
round re-processes the same document (so the swap also deletes the previous round's chunks).
"raw" is `gateway.embed` on exactly the passages the pipeline produced, with the same batch size.
Rounds alternate; medians are reported, and the median of the rounds' ratios pipeline / raw.

    .venv/bin/python bench/bench_ingest.py [--passages 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import statistics
import sys
import tempfile
import time
import uuid

SENTENCES = (
    "Kommunen beslutar om bygglov för altaner, plank och murar inom tio veckor från komplett ansökan.",
    "Elever som bor mer än två kilometer från skolan har rätt till kostnadsfri skolskjuts.",
    "Hushållsavfall hämtas varannan tisdag och förpackningar lämnas vid återvinningsstationen.",
    "The council decides on planning permission within ten weeks of receiving a complete application.",
    "Residents may appeal a decision to the county administrative board within three weeks.",
    "Biblioteket har öppet vardagar klockan nio till sjutton och lördagar tio till fjorton.",
    "Fees are charged per hour of case handling according to the rates adopted by the council.",
    "Äldreomsorgen erbjuder hemtjänst, trygghetslarm och särskilt boende efter biståndsbeslut.",
)


def make_docx(passages: int, rng: random.Random) -> bytes:
    """A report with headings and paragraphs, about `passages` passages of ~190 tokens each."""
    import docx

    document = docx.Document()
    document.add_heading("Kommunens riktlinjer", level=0)
    for section in range(passages):
        if section % 4 == 0:
            document.add_heading(f"Avsnitt {section // 4 + 1}", level=1)
        sentences = [rng.choice(SENTENCES) for _ in range(9)]
        document.add_paragraph(f"Punkt {section}. " + " ".join(sentences))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


async def main(args) -> None:
    data_dir = tempfile.mkdtemp(prefix="allting-bench-ingest-")
    os.environ["ALLTING_DATA_DIR"] = data_dir
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("LOG_FORMAT", "console")
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    from allting.platform.settings import get_settings

    get_settings.cache_clear()
    import allting.all_models
    import allting.knowledge.tasks  # noqa: F401
    from allting.ai import gateway, local_embeddings
    from allting.ai import service as ai_service
    from allting.deps import Ctx
    from allting.jobs.models import Job
    from allting.knowledge import parsing, service
    from allting.knowledge.chunking import split_sections
    from allting.knowledge.schemas import CollectionCreate
    from allting.platform import runtime
    from allting.platform.db import system_transaction, transaction
    from allting.platform.tenancy import set_tenant
    from allting.spaces.models import Space
    from allting.tenants import service as tenants_service
    from allting.tenants.schemas import TenantCreate
    from allting.worker import execute_job

    rng = random.Random(args.seed)
    data = make_docx(args.passages, rng)
    active = await runtime.start(get_settings())
    try:
        async with system_transaction() as db:
            tenant = await tenants_service.create_tenant(
                db, TenantCreate(name=f"Bench {uuid.uuid4().hex[:6]}")
            )
            tenant_id = tenant.id
        ctx = Ctx(tenant_id=tenant_id, user_id=None, actor_type="sysadmin")
        async with transaction() as db:
            await set_tenant(db, tenant_id)
            space = Space(name="Bench", kind="shared")
            db.add(space)
            await db.flush()
            collection = (
                await service.create_collection(db, ctx, CollectionCreate(space_id=space.id, name="Bench"))
            ).collection
            model = await ai_service.default_model(db, "embedding")
            view = await service.add_document(db, ctx, collection.id, data=data, filename="riktlinjer.docx")
            document_id, job_id = view.document.id, view.job.id
        target = gateway.ModelTarget(litellm_model=model.name, provider_type="local")
        batch_size = model.batch_size or 32

        started = time.perf_counter()
        parsed = parsing.parse_isolated(data, parsing.DOCX)
        parse_seconds = time.perf_counter() - started
        started = time.perf_counter()
        passages = split_sections(
            parsed.sections, chunk_tokens=collection.chunk_tokens, overlap_tokens=collection.overlap_tokens
        )
        split_seconds = time.perf_counter() - started
        texts = [passage.text for passage in passages]
        tokens = statistics.mean(passage.token_count for passage in passages)
        print(
            f"document: {len(data) / 1024:.0f} kB .docx, {len(passages)} passages of {tokens:.0f} tokens on average; "
            f"isolated parse {parse_seconds:.2f} s, split {split_seconds:.2f} s"
        )
        local_embeddings.get_model()
        await gateway.embed(target, texts[:64], batch_size=batch_size)  # warm up the model and its threads

        pipeline, raw = [], []
        for round_number in range(args.rounds):
            if round_number:
                async with transaction() as db:
                    await set_tenant(db, tenant_id)
                    job_id = (await service.reprocess_document(db, ctx, document_id)).job.id
            started = time.perf_counter()
            await execute_job(job_id)
            elapsed = time.perf_counter() - started
            async with system_transaction() as db:
                job = await db.get(Job, job_id)
                assert job.status == "succeeded", (job.status, job.error)
                assert job.result["chunks"] == len(passages), job.result
            pipeline.append(len(passages) / elapsed)
            started = time.perf_counter()
            await gateway.embed(target, texts, batch_size=batch_size)
            raw.append(len(passages) / (time.perf_counter() - started))
            print(
                f"round {round_number + 1}: pipeline {pipeline[-1]:.1f} passages/s, raw embedding {raw[-1]:.1f}/s"
            )
        print(
            f"\nmedian of {args.rounds} rounds: pipeline {statistics.median(pipeline):.1f} passages/s, "
            f"raw embedding {statistics.median(raw):.1f} passages/s, "
            f"ratio {statistics.median(pipeline) / statistics.median(raw):.2f}"
        )
    finally:
        await runtime.stop(active)
    print(f"(data directory: {data_dir})", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
