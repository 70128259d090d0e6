"""The job runner: outcomes recorded in PostgreSQL, effects committed once, nothing lost."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from allting.audit import service as audit
from allting.audit.models import AuditLog
from allting.deps import Ctx
from allting.jobs import service as jobs_service
from allting.jobs.models import Job
from allting.platform.db import system_transaction, transaction
from allting.platform.queue import get_queue
from allting.platform.tenancy import set_tenant
from allting.worker import JobRun, PermanentJobError, build_worker, reconcile, task

failures_left: dict[str, int] = {}
started: dict[str, asyncio.Event] = {}
release: dict[str, asyncio.Event] = {}


@task("tests.record_effect")
async def record_effect(db, run: JobRun) -> dict:
    """Writes one audit row as its effect; fails as often as the test asks first."""
    marker = run.payload["marker"]
    await audit.record_event(
        db, tenant_id=run.tenant_id, actor_type="system", action="tests.effect", target_id=marker
    )
    if failures_left.get(marker, 0) > 0:
        failures_left[marker] -= 1
        raise RuntimeError("provider hiccup")
    return {"marker": marker}


@task("tests.broken_input")
async def broken_input(db, run: JobRun) -> dict:
    raise PermanentJobError("The file is encrypted; save it without a password and upload it again")


@task("tests.slow")
async def slow(db, run: JobRun) -> dict:
    marker = run.payload["marker"]
    started[marker].set()
    await release[marker].wait()
    await run.progress(50)
    return {}


@pytest.fixture
async def worker(runtime, monkeypatch):
    import allting.worker as worker_module

    monkeypatch.setattr(worker_module, "RETRY_BASE_SECONDS", 0.05)
    running = build_worker(in_process=True)
    runner = asyncio.create_task(running.start())
    yield running
    running.event.set()
    await runner


def _ctx(org) -> Ctx:
    return Ctx(tenant_id=org.id, user_id=org.owner.id, actor_type="user", permissions=frozenset())


async def _create(org, task_name: str, payload: dict, *, commit: bool = True) -> uuid.UUID:
    try:
        async with transaction() as db:
            await set_tenant(db, org.id)
            job = await jobs_service.create_job(db, _ctx(org), task_name, payload, name=task_name)
            if not commit:
                raise _Rollback(job.id)
            return job.id
    except _Rollback as rolled_back:
        return rolled_back.job_id


class _Rollback(Exception):
    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id


async def _wait_for(org, job_id: uuid.UUID, states: tuple[str, ...], timeout: float = 20.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await org.owner.client.get(f"/api/v1/jobs/{job_id}/")
        assert response.status_code == 200, response.text
        if response.json()["status"] in states:
            return response.json()
        assert asyncio.get_running_loop().time() < deadline, response.json()
        await asyncio.sleep(0.05)


async def _effects(org, marker: str) -> int:
    async with system_transaction() as db:
        return await db.scalar(
            select(func.count())
            .select_from(AuditLog)
            .where(
                AuditLog.tenant_id == org.id, AuditLog.action == "tests.effect", AuditLog.target_id == marker
            )
        )


async def test_job_succeeds_and_its_effect_is_committed_once(org, worker):
    marker = uuid.uuid4().hex
    job_id = await _create(org, "tests.record_effect", {"marker": marker})
    job = await _wait_for(org, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded"
    assert job["progress"] == 100
    assert job["result"] == {"marker": marker}
    assert job["reference_status"] == "complete"
    assert await _effects(org, marker) == 1


async def test_failing_job_is_retried_and_failed_attempts_leave_no_effect(org, worker):
    marker = uuid.uuid4().hex
    failures_left[marker] = 2
    job_id = await _create(org, "tests.record_effect", {"marker": marker})
    job = await _wait_for(org, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded"
    assert job["attempts"] == 3
    assert await _effects(org, marker) == 1


async def test_job_that_keeps_failing_stops_after_max_attempts_with_its_reason(org, worker):
    marker = uuid.uuid4().hex
    failures_left[marker] = 100
    job_id = await _create(org, "tests.record_effect", {"marker": marker})
    job = await _wait_for(org, job_id, ("failed",))
    assert job["attempts"] == job["max_attempts"] == 3
    assert "provider hiccup" in job["error"]
    assert "gave up after 3 attempts" in job["error"]
    assert await _effects(org, marker) == 0


async def test_permanent_error_fails_at_once_with_a_readable_reason(org, worker):
    job_id = await _create(org, "tests.broken_input", {})
    job = await _wait_for(org, job_id, ("failed",))
    assert job["attempts"] == 1
    assert job["error"].startswith("The file is encrypted")


async def test_job_is_not_enqueued_when_its_transaction_rolls_back(org, runtime):
    job_id = await _create(org, "tests.record_effect", {"marker": "never"}, commit=False)
    assert await get_queue().job(f"{job_id}:0") is None
    async with system_transaction() as db:
        assert await db.get(Job, job_id) is None


async def test_reconciler_hands_over_a_queued_job_that_redis_lost(org, worker, monkeypatch, settings):

    marker = uuid.uuid4().hex
    monkeypatch.setattr("allting.platform.queue.send_after_commit", _drop_pending)
    job_id = await _create(org, "tests.record_effect", {"marker": marker})
    monkeypatch.undo()
    await asyncio.sleep(0.3)
    assert (await org.owner.client.get(f"/api/v1/jobs/{job_id}/")).json()["status"] == "queued"
    # Only now: with it set earlier, the worker's own scheduled reconciler could hand the job over
    # during the pause, if a minute began then.
    monkeypatch.setattr(settings, "job_reconcile_queued_after_seconds", 0)
    assert await reconcile() >= 1
    job = await _wait_for(org, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded"
    assert await _effects(org, marker) == 1


async def _drop_pending(db) -> None:
    db.info.pop("pending_jobs", None)


async def test_cancelled_running_job_rolls_back_and_stays_cancelled(org, worker):
    marker = uuid.uuid4().hex
    started[marker], release[marker] = asyncio.Event(), asyncio.Event()
    job_id = await _create(org, "tests.slow", {"marker": marker})
    await asyncio.wait_for(started[marker].wait(), 10)
    response = await org.owner.client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    release[marker].set()
    await asyncio.sleep(0.5)
    job = (await org.owner.client.get(f"/api/v1/jobs/{job_id}/")).json()
    assert job["status"] == "cancelled"
    again = await org.owner.client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409


async def test_jobs_are_listed_for_their_owner_only(org, worker):
    job_id = await _create(org, "tests.broken_input", {})
    member = await org.add_user("member")
    mine = await org.owner.client.get("/api/v1/jobs/")
    assert job_id in {uuid.UUID(item["id"]) for item in mine.json()["items"]}
    theirs = await member.client.get("/api/v1/jobs/")
    assert theirs.json()["items"] == []
    assert (await member.client.get(f"/api/v1/jobs/{job_id}/")).status_code == 404
