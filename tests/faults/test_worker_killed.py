"""A worker SIGKILLed in the middle of jobs: other workers finish them, exactly once."""

from __future__ import annotations

import os
import signal
import time

import pytest

pytestmark = pytest.mark.slow

JOBS = 20
KILLS = 5


def test_sigkilled_workers_lose_no_job_and_duplicate_no_effect(stack):
    stack.start_api()
    stack.start_worker()
    stack.start_worker()
    ids = stack.create_jobs(JOBS, seconds=2)

    killed_mid_job = 0
    for _ in range(KILLS):
        # Kill a worker only while it is inside a task (an attempt marked by it, not yet finished).
        deadline = time.monotonic() + 30
        victim = None
        while victim is None:
            rows = stack.jobs(ids)
            running_markers = {row["marker"] for row in rows.values() if row["status"] == "running"}
            busy_pids = {
                int(name.rsplit(".", 1)[1])
                for name in os.listdir(stack.mark_dir)
                if name.split(".", 1)[0] in running_markers
            }
            alive = [worker for worker in stack.workers if worker.poll() is None and worker.pid in busy_pids]
            if alive:
                victim = alive[0]
            elif not running_markers and all(row["status"] == "succeeded" for row in rows.values()):
                break
            else:
                assert time.monotonic() < deadline, stack.log_tail()
                time.sleep(0.1)
        if victim is None:
            break
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_mid_job += 1
        stack.start_worker()
        time.sleep(0.5)

    rows = stack.wait_jobs_done(ids, timeout=60)
    statuses = [row["status"] for row in rows.values()]
    retried = sum(1 for row in rows.values() if row["attempts"] > 1)
    interrupted = sum(row["attempts"] - 1 for row in rows.values())
    duplicates = sum(1 for row in rows.values() if row["effects"] > 1)
    lost = sum(1 for row in rows.values() if row["effects"] == 0 or row["status"] != "succeeded")
    print(
        f"{JOBS} jobs, {killed_mid_job} SIGKILLs mid-job interrupting {interrupted} attempts,"
        f" {retried} jobs taken over by another worker,"
        f" {lost} lost, {duplicates} duplicated effects"
    )
    assert killed_mid_job == KILLS
    assert len(rows) == JOBS
    assert statuses == ["succeeded"] * JOBS, [(row["status"], row["error"]) for row in rows.values()]
    assert retried >= 1
    assert lost == 0
    assert duplicates == 0
