"""`allting` with one extra task registered, for the fault tests: run as a real worker process.

    python tests/faults/taskworker.py worker          # `allting worker` plus the task below
    python tests/faults/taskworker.py create N SECS   # record N jobs (through the real job service)

The task writes one audit row (its effect, committed with the job's outcome), marks each attempt
in FAULTS_MARK_DIR so a test knows it is under way, and takes SECS seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import select, text

from allting.audit import service as audit
from allting.worker import JobRun, task

TASK = "faults.effect"


@task(TASK)
async def effect(db, run: JobRun) -> dict:
    marker = run.payload["marker"]
    mark_dir = Path(os.environ["FAULTS_MARK_DIR"])
    (mark_dir / f"{marker}.{run.attempt}.{os.getpid()}").touch()
    await audit.record_event(db, tenant_id=run.tenant_id, actor_type="system", action=TASK, target_id=marker)
    deadline = time.monotonic() + float(run.payload["seconds"])
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # A round trip at the end: a PostgreSQL restart during the task breaks this attempt.
    await db.execute(text("SELECT 1"))
    return {"marker": marker, "pid": os.getpid()}


async def create(count: int, seconds: float) -> list[str]:
    from allting.deps import Ctx
    from allting.jobs import service as jobs_service
    from allting.platform import runtime
    from allting.platform.db import system_transaction, transaction
    from allting.platform.settings import get_settings
    from allting.platform.tenancy import set_tenant
    from allting.tenants.models import Tenant
    from allting.users.models import User

    active = await runtime.start(get_settings(), run_migrations=False)
    try:
        async with system_transaction() as db:
            tenant_id = await db.scalar(select(Tenant.id).order_by(Tenant.created_at).limit(1))
            # The first user (the administrator the API created) owns the jobs, so the API shows them.
            user_id = await db.scalar(
                select(User.id).where(User.tenant_id == tenant_id).order_by(User.created_at).limit(1)
            )
        ids = []
        async with transaction() as db:
            await set_tenant(db, tenant_id)
            ctx = Ctx(tenant_id=tenant_id, user_id=user_id, actor_type="user")
            for _ in range(count):
                payload = {"marker": uuid.uuid4().hex, "seconds": seconds}
                job = await jobs_service.create_job(db, ctx, TASK, payload, name=TASK)
                ids.append(str(job.id))
        return ids
    finally:
        await runtime.stop(active)


if __name__ == "__main__":
    if sys.argv[1] == "create":
        print(json.dumps(asyncio.run(create(int(sys.argv[2]), float(sys.argv[3])))))
    else:
        from allting.cli import app

        app()
