"""PostgreSQL stopped and started again under a running API and worker: 503s, then recovery."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.slow

PROBES = 10


def test_postgres_restart_gives_503s_then_recovers_and_the_interrupted_job_completes(stack):
    stack.start_api()
    worker = stack.start_worker()
    auth = {"Authorization": f"Bearer {stack.token()}"}
    assert httpx.get(f"{stack.url}/api/v1/groups/", headers=auth, timeout=10).status_code == 200

    [job_id] = stack.create_jobs(1, seconds=4)
    deadline = time.monotonic() + 20
    while not any(stack.mark_dir.iterdir()):
        assert time.monotonic() < deadline, stack.log_tail()
        time.sleep(0.1)

    stack.stop_postgres()
    outage = []
    for _ in range(PROBES):
        started = time.monotonic()
        try:
            status = httpx.get(f"{stack.url}/api/v1/groups/", headers=auth, timeout=15).status_code
        except httpx.TimeoutException:
            status = "timeout"
        outage.append((status, round(time.monotonic() - started, 2)))
        time.sleep(0.3)
    ready = httpx.get(f"{stack.url}/api/readyz", timeout=15)
    assert ready.status_code == 503 and ready.headers["Retry-After"].isdigit()
    assert ready.json()["checks"]["postgres"].startswith("unavailable")
    login = httpx.post(
        f"{stack.url}/api/v1/users/login/token/",
        data={"username": "owner@example.org", "password": "correct horse battery staple"},
        timeout=15,
    )
    outage.append((login.status_code, "login"))
    time.sleep(max(0.0, stack_lease_seconds(stack) - 1))
    assert worker.poll() is None, "the worker died while PostgreSQL was down\n" + stack.log_tail()

    stack.start_postgres()
    recovered_after = None
    started = time.monotonic()
    while time.monotonic() - started < 20:
        if httpx.get(f"{stack.url}/api/v1/groups/", headers=auth, timeout=15).status_code == 200:
            recovered_after = round(time.monotonic() - started, 2)
            break
        time.sleep(0.2)

    after = stack.create_jobs(2, seconds=0.2)
    rows = stack.wait_jobs_done([job_id, *after], timeout=45)
    interrupted = rows[job_id]
    print(
        f"outage answers (status, seconds): {outage}; API answered 200 again {recovered_after} s after"
        f" the restart; interrupted job: {interrupted['status']} after {interrupted['attempts']} attempts,"
        f" {interrupted['effects']} effect(s); later jobs {[rows[i]['status'] for i in after]}"
    )
    assert all(status == 503 for status, _ in outage), outage
    assert all(seconds == "login" or seconds < 10 for _, seconds in outage), outage
    assert recovered_after is not None, stack.log_tail()
    assert worker.poll() is None, stack.log_tail()
    assert interrupted["status"] == "succeeded", (interrupted["error"], stack.log_tail())
    assert interrupted["attempts"] >= 2
    assert interrupted["effects"] == 1
    assert all(rows[i]["status"] == "succeeded" for i in after)


def stack_lease_seconds(stack) -> float:
    return float(stack.env["JOB_LEASE_SECONDS"])
