"""`allting serve`, `doctor`, `migrate` and the admin commands, run as real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ALLTING = [sys.executable, "-m", "allting"]
ADMIN = {"ALLTING_ADMIN_EMAIL": "owner@example.org", "ALLTING_ADMIN_PASSWORD": "correct horse battery staple"}


def _env(data_dir: Path, **extra: str) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL") and not key.startswith("ALLTING_")
    }
    env.update({"ALLTING_DATA_DIR": str(data_dir), "LOG_FORMAT": "console", "LOG_LEVEL": "WARNING", **extra})
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, *options: str, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*ALLTING, "serve", "--host", "127.0.0.1", "--port", str(self.port), *options],
            env=_env(data_dir, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if httpx.get(f"{self.url}/api/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=30)
        return output


def _server_processes(data_dir: Path) -> list[str]:
    listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if str(data_dir) in line and "pytest" not in line]


def _login(url: str, password: str = ADMIN["ALLTING_ADMIN_PASSWORD"]) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/users/login/token/",
        data={"username": ADMIN["ALLTING_ADMIN_EMAIL"], "password": password},
        timeout=10,
    )


def test_serve_starts_empty_stops_cleanly_and_restarts_with_data_intact(tmp_path):
    data_dir = tmp_path / "data"
    server = Server(data_dir, **ADMIN)
    server.wait_healthy()
    token = _login(server.url).json()["access_token"]
    created = httpx.post(
        f"{server.url}/api/v1/groups/",
        json={"name": "Social services"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201
    secrets_file = data_dir / "secrets.env"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    doctor = subprocess.run(
        [*ALLTING, "doctor", "--json"], env=_env(data_dir), capture_output=True, text=True
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert all(check["ok"] for check in json.loads(doctor.stdout))

    server.stop()
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status names SIGTERM.
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert _server_processes(data_dir) == []

    again = Server(data_dir)
    again.wait_healthy()
    token = _login(again.url).json()["access_token"]
    groups = httpx.get(f"{again.url}/api/v1/groups/", headers={"Authorization": f"Bearer {token}"}).json()
    assert [group["name"] for group in groups] == ["Social services"]
    again.stop()
    assert _server_processes(data_dir) == []


def _api_processes_of(pid: int) -> list[int]:
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split(None, 2) for line in listing.splitlines()[1:]]
    return [int(row[0]) for row in rows if int(row[1]) == pid and "spawn_main" in row[2]]


def test_serve_with_several_processes_shares_one_installation_and_stops_it_whole(tmp_path):
    data_dir = tmp_path / "data"
    server = Server(data_dir, "--processes", "2", **ADMIN)
    try:
        server.wait_healthy()
        assert len(_api_processes_of(server.process.pid)) == 2
        # Each request may reach either process: all of them see the same organisation and its data.
        token = _login(server.url).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(
            f"{server.url}/api/v1/groups/", json={"name": "Byggnadsnämnden"}, headers=headers
        )
        assert created.status_code == 201, created.text
        for _ in range(10):
            groups = httpx.get(f"{server.url}/api/v1/groups/", headers=headers, timeout=10).json()
            assert [group["name"] for group in groups] == ["Byggnadsnämnden"]
    finally:
        server.stop()
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert _server_processes(data_dir) == []  # the API processes and the embedded servers


def test_serve_exports_the_local_embedding_model_in_the_background_once_per_machine(tmp_path):
    cache = tmp_path / "cache"
    server = Server(tmp_path / "data", XDG_CACHE_HOME=str(cache), **ADMIN)
    server.wait_healthy()  # ready without waiting for the export
    models = cache / "allting" / "models"
    deadline = time.monotonic() + 120
    while not list(models.glob("*.onnx")) and time.monotonic() < deadline:
        time.sleep(0.5)
    (exported,) = models.glob("*.onnx")
    assert exported.stat().st_size > 50 * 2**20 and not list(models.glob("*.partial"))
    server.stop()
    exported_at = exported.stat().st_mtime_ns
    again = Server(tmp_path / "other-data", XDG_CACHE_HOME=str(cache), **ADMIN)  # another installation
    again.wait_healthy()
    time.sleep(1)
    again.stop()
    assert list(models.glob("*.onnx")) == [exported] and exported.stat().st_mtime_ns == exported_at


def test_first_start_without_configured_password_prints_a_generated_one_once(tmp_path):
    data_dir = tmp_path / "data"
    server = Server(data_dir, ALLTING_ADMIN_EMAIL="owner@example.org")
    server.wait_healthy()
    output = server.stop()
    line = next(line for line in output.splitlines() if "with the password:" in line)
    password = line.rsplit(": ", 1)[1].strip()
    again = Server(data_dir)
    again.wait_healthy()
    assert _login(again.url, password).status_code == 200
    assert "with the password:" not in again.stop()


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("JWT_SECRET", "short", "too short"),
        ("JWT_SECRET", "changeme", "well-known default"),
        ("SYSADMIN_API_KEY", "", "missing"),
        ("ENCRYPTION_KEY", "not-a-fernet-key", "Fernet"),
    ],
)
def test_external_mode_refuses_weak_or_missing_secrets_naming_the_variable(tmp_path, variable, value, reason):
    strong = {
        name: "x" * 48
        for name in ("JWT_SECRET", "SYSADMIN_API_KEY", "DATABASE_APP_PASSWORD", "DATABASE_SYSTEM_PASSWORD")
    }
    strong["ENCRYPTION_KEY"] = "ZmRzYWZkc2FmZHNhZmRzYWZkc2FmZHNhZmRzYWZkc2E="
    strong[variable] = value
    env = _env(
        tmp_path,
        DATABASE_URL="postgresql://allting@127.0.0.1:1/allting",
        REDIS_URL="redis://127.0.0.1:1",
        **strong,
    )
    result = subprocess.run(
        [*ALLTING, "serve", "--port", str(_free_port())], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert variable in result.stderr
    assert reason in result.stderr


def test_admin_commands_create_tenant_and_user_with_password_from_stdin(tmp_path):
    data_dir = tmp_path / "data"
    env = _env(data_dir, **ADMIN)
    migrated = subprocess.run([*ALLTING, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    tenant = subprocess.run(
        [*ALLTING, "tenant", "create", "Malmö stad"], env=env, capture_output=True, text=True, timeout=120
    )
    assert tenant.returncode == 0, tenant.stderr
    assert json.loads(tenant.stdout)["slug"] == "malmo-stad"
    duplicate = subprocess.run(
        [*ALLTING, "tenant", "create", "Malmö stad"], env=env, capture_output=True, text=True, timeout=120
    )
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    user = subprocess.run(
        [*ALLTING, "user", "create", "--tenant", "malmo-stad", "--email", "anna@malmo.se", "--role", "admin"],
        env=env,
        input="a very good password\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert user.returncode == 0, user.stderr
    assert "password" not in json.loads(user.stdout)
    generated = subprocess.run(
        [*ALLTING, "user", "create", "--tenant", "malmo-stad", "--email", "bo@malmo.se"],
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(json.loads(generated.stdout)["password"]) >= 16

    server = Server(data_dir)
    server.wait_healthy()
    response = httpx.post(
        f"{server.url}/api/v1/users/login/token/",
        timeout=10,
        data={"username": "anna@malmo.se", "password": "a very good password"},
    )
    assert response.status_code == 200
    server.stop()
    assert _server_processes(data_dir) == []


def test_provider_model_and_secret_rotation_commands(tmp_path):
    from cryptography.fernet import Fernet

    data_dir = tmp_path / "data"
    env = _env(data_dir, **ADMIN)
    assert subprocess.run([*ALLTING, "migrate"], env=env, capture_output=True, timeout=120).returncode == 0
    provider = subprocess.run(
        [
            *ALLTING,
            "provider",
            "add",
            "--tenant",
            "default",
            "--type",
            "vllm",
            "--name",
            "gpu-server",
            "--endpoint",
            "http://10.1.2.3:8000/v1",
            "--api-key-stdin",
        ],
        env=env,
        input="sk-vllm-secret-9876\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert provider.returncode == 0, provider.stderr
    assert json.loads(provider.stdout)["masked_key"] == "…9876"
    assert "sk-vllm-secret" not in provider.stdout
    model = subprocess.run(
        [
            *ALLTING,
            "model",
            "add",
            "--tenant",
            "default",
            "--provider",
            "gpu-server",
            "--kind",
            "completion",
            "--name",
            "meta-llama/Llama-3.3-70B-Instruct",
            "--default",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert model.returncode == 0, model.stderr
    assert json.loads(model.stdout)["is_default"] is True
    unknown = subprocess.run(
        [
            *ALLTING,
            "model",
            "add",
            "--tenant",
            "default",
            "--provider",
            "nope",
            "--kind",
            "completion",
            "--name",
            "x",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 1 and "No provider account named 'nope'" in unknown.stderr

    old_key = next(
        line.split("=", 1)[1]
        for line in (data_dir / "secrets.env").read_text().splitlines()
        if line.startswith("ENCRYPTION_KEY=")
    )
    new_key = Fernet.generate_key().decode()
    rotated = subprocess.run(
        [*ALLTING, "secrets", "rotate"],
        env={**env, "ENCRYPTION_KEY": f"{new_key},{old_key}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout) == {"provider_keys": 1}


def test_serve_uses_external_postgres_and_redis_by_url(runtime, tmp_path):
    """With DATABASE_URL and REDIS_URL set, no embedded server starts and the given ones are used."""
    from cryptography.fernet import Fernet

    secrets = {
        name: f"{name.lower()}-" + "s" * 40
        for name in ("JWT_SECRET", "SYSADMIN_API_KEY", "DATABASE_APP_PASSWORD", "DATABASE_SYSTEM_PASSWORD")
    }
    data_dir = tmp_path / "unused"
    server = Server(
        data_dir,
        DATABASE_URL=runtime.urls.owner,
        REDIS_URL=runtime.redis_url,
        ENCRYPTION_KEY=Fernet.generate_key().decode(),
        **secrets,
    )
    server.wait_healthy()
    tenants = httpx.get(
        f"{server.url}/api/v1/sysadmin/tenants/",
        headers={"X-API-Key": secrets["SYSADMIN_API_KEY"]},
        timeout=10,
    )
    assert tenants.status_code == 200 and tenants.json()["count"] >= 1
    server.stop()
    assert not (data_dir / "postgres").exists() and not (data_dir / "redis").exists()
