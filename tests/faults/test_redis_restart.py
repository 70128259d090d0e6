"""Redis stopped (SIGKILL, its queue lost) and started again on the same socket: nothing is lost."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.slow

QUEUED = 10


def test_redis_restart_loses_no_job_and_the_api_degrades_without_errors(stack):
    stack.env["LOGIN_MAX_FAILURES_PER_ACCOUNT"] = "3"
    stack.start_api()
    worker = stack.start_worker()
    auth = {"Authorization": f"Bearer {stack.token()}"}
    assert httpx.get(f"{stack.url}/api/v1/groups/", headers=auth, timeout=10).status_code == 200

    # A backlog for the single worker, then Redis dies and its queue with it (AOF removed: the worst case).
    ids = stack.create_jobs(QUEUED, seconds=1.5)
    [to_cancel] = stack.create_jobs(1, seconds=30)
    stack.stop_redis()
    for name in ("appendonly.aof", "dump.rdb"):
        (stack.data_dir / "redis" / name).unlink(missing_ok=True)

    ready = httpx.get(f"{stack.url}/api/readyz", timeout=15)
    assert ready.status_code == 503
    assert ready.headers["Retry-After"].isdigit()
    assert ready.json()["checks"]["redis"].startswith("unavailable")
    assert ready.json()["checks"]["postgres"] == "ok"

    # Requests that do not need Redis keep working.
    started = time.monotonic()
    groups = httpx.get(f"{stack.url}/api/v1/groups/", headers=auth, timeout=15)
    assert groups.status_code == 200, groups.text
    assert time.monotonic() - started < 5

    # A request that needs Redis says so (503), and one that only tells Redis (a cancelled job's
    # event) still does its work.
    ticket = httpx.post(f"{stack.url}/api/v1/ws/ticket", headers=auth, timeout=15)
    assert ticket.status_code == 503, ticket.text
    assert ticket.headers["Retry-After"].isdigit()
    cancelled = httpx.post(f"{stack.url}/api/v1/jobs/{to_cancel}/cancel", headers=auth, timeout=15)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"

    # Sign-in throttling falls back to the process's own bound: 401s, then 429, never a 500.
    statuses = []
    for _ in range(5):
        response = httpx.post(
            f"{stack.url}/api/v1/users/login/token/",
            data={"username": "owner@example.org", "password": "wrong password"},
            timeout=15,
        )
        statuses.append(response.status_code)
    assert statuses == [401, 401, 401, 429, 429], statuses
    time.sleep(3)
    assert worker.poll() is None, "the worker died while Redis was down\n" + stack.log_tail()

    stack.start_redis()
    deadline = time.monotonic() + 20
    while httpx.get(f"{stack.url}/api/readyz", timeout=15).status_code != 200:
        assert time.monotonic() < deadline, "API not ready after Redis came back"
        time.sleep(0.2)
    # The throttle counted during the outage still holds after Redis is back.
    blocked = httpx.post(
        f"{stack.url}/api/v1/users/login/token/",
        data={"username": "owner@example.org", "password": "wrong password"},
        timeout=15,
    )
    assert blocked.status_code == 429

    # The same worker process, never restarted, finishes the backlog and new work.
    after = stack.create_jobs(3, seconds=0.2)
    rows = stack.wait_jobs_done([*ids, *after, to_cancel], timeout=60)
    assert rows.pop(to_cancel)["effects"] == 0
    assert worker.poll() is None, stack.log_tail()
    succeeded = sum(1 for row in rows.values() if row["status"] == "succeeded")
    duplicates = sum(1 for row in rows.values() if row["effects"] > 1)
    print(
        f"{QUEUED} jobs queued when Redis died (queue file removed) + 3 after: {succeeded}/{len(rows)}"
        f" succeeded, {duplicates} duplicated effects; login statuses during outage {statuses}"
    )
    assert succeeded == QUEUED + 3, [(row["status"], row["error"]) for row in rows.values()]
    assert duplicates == 0
