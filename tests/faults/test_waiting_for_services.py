"""A worker or server started before PostgreSQL or Redis answers waits for them (rather than exiting),
says what it waits for, starts working once they are up, and stops at once when told to meanwhile."""

from __future__ import annotations

import re
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

TASKWORKER = [sys.executable, str(Path(__file__).resolve().parent / "taskworker.py")]

WAITING = "runtime.waiting_for_dependency"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _as_external_services(stack) -> dict[str, str]:
    """The stack's own PostgreSQL and Redis, configured as external services, with the secrets the
    API generated: a process so configured waits for them instead of starting them itself."""
    secrets = dict(
        line.split("=", 1)
        for line in (stack.data_dir / "secrets.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {
        **secrets,
        "DATABASE_URL": f"postgresql://allting_owner@/allting?host={stack._pg_info().socket_dir}",
        "REDIS_URL": f"unix://{stack.data_dir / 'redis' / 'redis.sock'}",
        # Tries at 1, 2, 2, ... seconds: the test waits seconds, not the default half minute.
        "DEPENDENCY_WAIT_MAX_SECONDS": "2",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_text(log) -> str:
    return ANSI.sub("", log.read_text(errors="replace"))


def _wait_for_warnings(stack, log, dependency: str, count: int, timeout: float = 30) -> str:
    """The process's log once it has warned `count` times that it waits for `dependency`."""
    deadline = time.monotonic() + timeout
    while True:
        text = _log_text(log)
        warnings = [
            line for line in text.splitlines() if WAITING in line and f"dependency={dependency}" in line
        ]
        if len(warnings) >= count:
            return text
        assert time.monotonic() < deadline, f"no {count} warnings about {dependency}\n{stack.log_tail()}"
        time.sleep(0.1)


@pytest.mark.parametrize("dependency", ["redis", "postgres"])
def test_a_worker_started_before_its_dependency_waits_and_then_does_the_work(stack, dependency):
    stack.start_api()
    external = _as_external_services(stack)
    if dependency == "redis":
        stack.stop_redis()
    else:
        stack.stop_postgres()

    worker = stack.start_worker(**external)
    log = stack.logs[-1]
    text = _wait_for_warnings(stack, log, dependency, count=2)
    assert worker.poll() is None, stack.log_tail()
    # Each warning names the dependency, its address and when the next try is.
    warning = next(line for line in text.splitlines() if WAITING in line)
    assert "next_try_at=" in warning and "retry_in_seconds=" in warning and "address=" in warning, warning
    assert "Traceback" not in text

    if dependency == "redis":
        stack.start_redis()
    else:
        stack.start_postgres()
    ids = stack.create_jobs(1, seconds=0.2)
    rows = stack.wait_jobs_done(ids, timeout=60)
    assert [row["status"] for row in rows.values()] == ["succeeded"], stack.log_tail()
    assert worker.poll() is None, stack.log_tail()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_waiting_ends_the_worker_at_once_and_cleanly(stack, stop_signal, tmp_path):
    # Nothing answers at either address: the worker waits for both.
    unreachable = {
        "DATABASE_URL": f"postgresql://allting_owner@127.0.0.1:{_free_port()}/allting",
        "REDIS_URL": f"unix://{tmp_path / 'no-redis.sock'}",
        "JWT_SECRET": "j" * 40,
        "SYSADMIN_API_KEY": "s" * 40,
        "DATABASE_APP_PASSWORD": "a" * 40,
        "DATABASE_SYSTEM_PASSWORD": "y" * 40,
        "ENCRYPTION_KEY": "RkVSTkVUX0tFWV9GT1JfVEVTVFNfT05MWV8zMl9CWVQ=",
    }
    worker = stack.start_worker(**unreachable)
    log = stack.logs[-1]
    _wait_for_warnings(stack, log, "postgres", count=2)
    _wait_for_warnings(stack, log, "redis", count=2)

    started = time.monotonic()
    worker.send_signal(stop_signal)
    returncode = worker.wait(10)
    elapsed = time.monotonic() - started
    text = _log_text(log)
    assert returncode == 0, text
    assert elapsed < 3, f"took {elapsed:.1f} s to stop"
    assert "Stopped while waiting for PostgreSQL and Redis." in text
    assert "Traceback" not in text


def test_serve_started_before_redis_waits_and_its_worker_then_does_the_work(stack):
    stack.start_api()
    external = _as_external_services(stack)
    stack.stop_redis()

    # A second API process with its in-process worker (the first runs none), started while Redis is down.
    port = _free_port()
    server = stack._spawn(
        [*TASKWORKER, "serve", "--host", "127.0.0.1", "--port", str(port)], "serve", **external
    )
    stack.workers.append(server)
    _wait_for_warnings(stack, stack.logs[-1], "redis", count=2)
    assert server.poll() is None, stack.log_tail()

    stack.start_redis()
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, stack.log_tail()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, stack.log_tail()
        time.sleep(0.2)
    ids = stack.create_jobs(1, seconds=0.2)
    rows = stack.wait_jobs_done(ids, timeout=60)
    assert [row["status"] for row in rows.values()] == ["succeeded"], stack.log_tail()
