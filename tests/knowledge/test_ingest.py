"""Upload to stored passages through a real worker: every format, audio, hostile files, idempotency."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from allting.jobs import service as jobs_service
from allting.knowledge import ingest
from allting.knowledge.models import Chunk, ChunkVector
from allting.platform.db import system_transaction, transaction
from allting.platform.tenancy import set_tenant
from allting.worker import JobRun, reconcile


async def _chunks(document_id: str) -> list:
    async with system_transaction() as db:
        rows = await db.execute(
            select(Chunk.chunk_index, Chunk.page, Chunk.heading, Chunk.text, ChunkVector.dims)
            .join(ChunkVector, ChunkVector.id == Chunk.id)
            .where(Chunk.document_id == uuid.UUID(document_id))
            .order_by(Chunk.chunk_index)
        )
        return list(rows)


async def test_every_format_becomes_passages_with_citation_metadata(
    org, collection, worker, knowledge, files, local_model
):
    client = org.owner.client
    uploads = {
        "info.pdf": files.pdf(),
        "rapport.docx": files.docx(),
        "budget.pptx": files.pptx(),
        "siffror.xlsx": files.xlsx(),
        "parkering.html": files.html,
        "distans.md": files.markdown.encode(),
        "anteckning.txt": "Sophämtningen sker varannan tisdag i Ängby.".encode(),
    }
    documents = {}
    for name, data in uploads.items():
        documents[name] = await knowledge.upload(client, collection["id"], name, data)
    done = {name: await knowledge.wait_for_document(client, d["id"]) for name, d in documents.items()}
    assert {name: d["status"] for name, d in done.items()} == dict.fromkeys(uploads, "ready")
    assert done["info.pdf"]["title"] == "Kommunens information"  # from the PDF, not the file name
    assert done["info.pdf"]["page_count"] == 3
    assert done["info.pdf"]["progress"] == 100

    pdf = await _chunks(documents["info.pdf"]["id"])
    assert [(row.page, row.heading) for row in pdf] == [(1, "Kapitel 1"), (2, "Kapitel 2"), (3, "Kapitel 3")]
    assert "skolskjuts" in pdf[1].text
    assert {row.dims for row in pdf} == {384}
    slides = await _chunks(documents["budget.pptx"]["id"])
    assert (slides[0].page, slides[0].heading) == (1, "Slide 1: Budget 2025")
    docx = await _chunks(documents["rapport.docx"]["id"])
    assert "Slutsats" in [row.heading for row in docx]
    html = await _chunks(documents["parkering.html"]["id"])
    assert "400 kronor" in html[0].text and "SCRIPT_SECRET_TEXT" not in " ".join(r.text for r in html)
    sheet = await _chunks(documents["siffror.xlsx"]["id"])
    assert sheet[0].heading == "Budget" and "Ängby skola" in sheet[0].text

    collection_now = (await client.get(f"/api/v1/collections/{collection['id']}")).json()
    assert collection_now["metadata"]["num_documents"] == len(uploads)
    assert collection_now["metadata"]["num_chunks"] == sum(d["chunk_count"] for d in done.values())


async def _transcription_model(org, stub) -> None:
    provider = await org.owner.client.post(
        "/api/v1/admin/model-providers/",
        json={
            "name": f"whisper-{uuid.uuid4().hex[:6]}",
            "provider_type": "vllm",
            "endpoint": stub.url,
            "api_key": "sk-stub-key-for-tests",
        },
    )
    assert provider.status_code == 201, provider.text
    model = await org.owner.client.post(
        "/api/v1/ai-models/",
        json={
            "kind": "transcription",
            "name": "stub-whisper",
            "display_name": "Stub Whisper",
            "provider_id": provider.json()["id"],
            "hosting": "on_premises",
            "security_level": 3,
            "is_enabled": True,
            "is_default": True,
        },
    )
    assert model.status_code == 201, model.text


async def test_audio_is_transcribed_through_the_tenants_transcription_model(
    org, collection, worker, knowledge, files, llm, local_model
):
    client = org.owner.client
    no_model = await knowledge.upload(client, collection["id"], "möte.wav", files.wav())
    failed = await knowledge.wait_for_document(client, no_model["id"])
    assert failed["status"] == "failed"
    assert "no transcription model" in failed["error"]

    await _transcription_model(org, llm)
    llm.script(transcript="Mötet beslutade att bygga en ny förskola i Västerby.")
    recording = await knowledge.upload(client, collection["id"], "möte2.wav", files.wav(0.2))
    done = await knowledge.wait_for_document(client, recording["id"])
    assert done["status"] == "ready", done
    chunks = await _chunks(recording["id"])
    assert "ny förskola i Västerby" in chunks[0].text
    assert any(request.path == "/v1/audio/transcriptions" for request in llm.requests)


async def test_broken_and_hostile_files_fail_once_with_a_reason_a_person_understands(
    org, collection, worker, knowledge, files
):
    client = org.owner.client
    docx = files.docx()
    bomb = files.rewrite_zip(docx, add={"word/media/padding.bin": b"\x00" * (250 * 1024 * 1024)})
    xxe = files.rewrite_zip(
        docx,
        replace={
            "word/document.xml": files.inject_doctype(
                __import__("zipfile").ZipFile(__import__("io").BytesIO(docx)).read("word/document.xml"),
                files.billion_laughs,
                "",
                "",
            )
        },
    )
    cases = {
        "låst.pdf": (files.encrypt_pdf(files.pdf(), user_password="hemligt"), "password"),
        "skannad.pdf": (files.pdf(text=False), "scanned"),
        "trasig.docx": (docx[: len(docx) // 2], "damaged"),
        "bomb.docx": (bomb, "MB"),
        "entiteter.docx": (xxe, "DTD"),
    }
    documents = {
        name: await knowledge.upload(client, collection["id"], name, data)
        for name, (data, _) in cases.items()
    }
    for name, (_, reason) in cases.items():
        done = await knowledge.wait_for_document(client, documents[name]["id"])
        assert done["status"] == "failed", (name, done)
        assert reason.lower() in done["error"].lower(), (name, done["error"])
        job = (await client.get(f"/api/v1/jobs/{done['job_id']}/")).json()
        assert (job["status"], job["attempts"]) == ("failed", 1), (name, job)
        assert await _chunks(done["id"]) == []


class _QuietRun(JobRun):
    """A run of the handler outside the worker, as a second delivery of the job would make it."""

    async def progress(self, percent: int) -> None:
        pass


async def _run_handler(org, job_id: str, *, commit: bool = True) -> dict | None:
    """The ingestion handler run as the worker runs it, in one tenant-bound transaction."""
    async with system_transaction() as db:
        job = await db.get(jobs_service.Job, uuid.UUID(job_id))
        run = _QuietRun(job.id, job.tenant_id, job.user_id, job.attempts, dict(job.payload))

    class Abort(Exception):
        pass

    try:
        async with transaction() as db:
            await set_tenant(db, org.id)
            result = await ingest.ingest_document(db, run)
            if not commit:
                raise Abort()
            return result
    except Abort:
        return None


async def test_running_ingestion_again_replaces_passages_and_never_duplicates(
    org, collection, worker, knowledge, files
):
    client = org.owner.client
    document = await knowledge.upload(client, collection["id"], "info.pdf", files.pdf())
    done = await knowledge.wait_for_document(client, document["id"])
    first = await _chunks(document["id"])
    await _run_handler(org, done["job_id"])  # the same job delivered twice
    await _run_handler(org, done["job_id"])
    assert [(r.chunk_index, r.page, r.text) for r in await _chunks(document["id"])] == [
        (r.chunk_index, r.page, r.text) for r in first
    ]

    again = await client.post(f"/api/v1/documents/{document['id']}/reprocess")
    assert again.status_code == 202
    assert again.json()["job_id"] != done["job_id"]
    redone = await knowledge.wait_for_document(client, document["id"])
    assert redone["status"] == "ready" and redone["chunk_count"] == len(first)
    async with system_transaction() as db:
        total = await db.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.document_id == uuid.UUID(document["id"]))
        )
    assert total == len(first)
    # The first job is superseded: delivered again, it changes nothing.
    assert (await _run_handler(org, done["job_id"]))["skipped"]


async def test_a_worker_that_dies_mid_job_leaves_nothing_and_the_job_completes_once(
    org, collection, knowledge, files, local_model
):
    # A "dead worker" took the job: claimed it with a lease, did its work, and never committed.
    client = org.owner.client
    document = await knowledge.upload(client, collection["id"], "info.pdf", files.pdf())
    async with system_transaction() as db:
        claimed = await jobs_service.claim(db, uuid.UUID(document["job_id"]), timedelta(seconds=0.5))
    assert claimed is not None and claimed.attempts == 1
    assert await _run_handler(org, document["job_id"], commit=False) is None  # effects lost with it
    assert await _chunks(document["id"]) == []
    await asyncio.sleep(0.6)  # the lease runs out

    import allting.worker as worker_module

    replacement = worker_module.build_worker(in_process=True)
    runner = asyncio.create_task(replacement.start())
    try:
        assert await reconcile() >= 1
        done = await knowledge.wait_for_document(client, document["id"])
    finally:
        replacement.event.set()
        await runner
    assert done["status"] == "ready"
    job = (await client.get(f"/api/v1/jobs/{document['job_id']}/")).json()
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    chunks = await _chunks(document["id"])
    assert [row.chunk_index for row in chunks] == list(range(len(chunks))) == [0, 1, 2]


@pytest.mark.slow
async def test_a_worker_process_killed_with_sigkill_mid_job_loses_nothing(
    org, collection, knowledge, settings, local_model
):
    import os
    import signal
    import subprocess
    import sys

    client = org.owner.client
    sentences = [
        f"Stycke {n} handlar om ärende {n * 7} och beslut i nämnden om vägar och parker." for n in range(2500)
    ]
    document = await knowledge.upload(client, collection["id"], "lång.txt", "\n\n".join(sentences).encode())
    env = {**os.environ, "ALLTING_DATA_DIR": str(settings.data_dir), "JOB_LEASE_SECONDS": "3"}
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, then only killed
        [
            sys.executable,
            "-c",
            "import allting.knowledge.tasks; from allting.cli import app; app(['worker'])",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1200):
            job = (await client.get(f"/api/v1/jobs/{document['job_id']}/")).json()
            if job["status"] == "running" and job["progress"] >= 10:
                break
            await asyncio.sleep(0.1)
        assert job["status"] == "running", job
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert await _chunks(document["id"]) == []
    await asyncio.sleep(3.5)  # the dead worker's lease runs out

    import allting.worker as worker_module

    replacement = worker_module.build_worker(in_process=True)
    runner = asyncio.create_task(replacement.start())
    try:
        assert await reconcile() >= 1
        done = await knowledge.wait_for_document(client, document["id"], timeout=300)
    finally:
        replacement.event.set()
        await runner
    assert done["status"] == "ready", done
    job = (await client.get(f"/api/v1/jobs/{document['job_id']}/")).json()
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    chunks = await _chunks(document["id"])
    assert [row.chunk_index for row in chunks] == list(range(done["chunk_count"]))
