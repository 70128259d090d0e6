"""Settings: the only module that reads the environment."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_NAMES = (
    "JWT_SECRET",
    "ENCRYPTION_KEY",
    "SYSADMIN_API_KEY",
    "DATABASE_APP_PASSWORD",
    "DATABASE_SYSTEM_PASSWORD",
)
MIN_SECRET_LENGTH = 32
KNOWN_DEFAULT_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "secret",
        "password",
        "your-secret-key",
        "your_secret_key",
        "insecure",
        "development",
        "test",
        "jwt_secret",
        "super_secret",
    }
)


class ConfigError(RuntimeError):
    """Raised when the configuration cannot be used; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("allting")),
        validation_alias="ALLTING_DATA_DIR",
    )
    database_url: str | None = None
    redis_url: str | None = None

    jwt_secret: str | None = None
    encryption_key: str | None = None
    sysadmin_api_key: str | None = None
    database_app_password: str | None = None
    database_system_password: str | None = None

    admin_email: str | None = Field(default=None, validation_alias="ALLTING_ADMIN_EMAIL")
    admin_password: str | None = Field(default=None, validation_alias="ALLTING_ADMIN_PASSWORD")
    default_tenant_name: str = Field(default="Default", validation_alias="ALLTING_DEFAULT_TENANT")

    public_url: str = Field(default="http://127.0.0.1:8000", validation_alias="ALLTING_PUBLIC_URL")
    access_token_minutes: int = 15
    refresh_token_days: int = 14
    web_session_hours: int = 12
    cors_origins: str = ""
    trusted_proxies: str = ""
    max_request_bytes: int = 2 * 1024 * 1024
    max_upload_bytes: int = 50 * 1024 * 1024

    login_max_failures_per_account: int = 10
    login_max_failures_per_address: int = 50
    login_failure_window_seconds: int = 900

    # Connections are kept rather than opened for a burst and closed after it: a new connection
    # costs its start-up, asyncpg's type lookups and every statement's preparation again, which
    # under 50 concurrent questions took about a sixth of the API's CPU. Requests beyond
    # the pool wait for a connection (each holds one for a few milliseconds) for up to
    # DB_POOL_TIMEOUT seconds, then get 503 with Retry-After.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    worker_concurrency: int = 4
    # Threads torch may use for each encode of the local embedding model. One keeps questions
    # steady on a busy machine; a dedicated worker with spare cores ingests faster with more.
    local_embedding_threads: int = Field(default=1, ge=1, le=64)
    job_max_attempts: int = 3
    job_lease_seconds: int = 120
    job_reconcile_cron: str = "* * * * *"
    job_reconcile_queued_after_seconds: float = 60.0
    # At start, an external PostgreSQL or Redis that does not answer yet is tried again with a
    # pause that doubles up to this many seconds (see runtime.wait_for_services).
    dependency_wait_max_seconds: float = Field(default=30.0, gt=0)

    tenant_credentials_enabled: bool = False
    federation_per_tenant_enabled: bool = False
    # Single sign-on (OIDC). Single-tenant mode: one provider from these settings for one tenant
    # (OIDC_TENANT names it by slug; empty means the first tenant created).
    oidc_discovery_endpoint: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_tenant: str | None = None
    oidc_provider_label: str = "Single sign-on"
    oidc_allowed_domains: str = ""
    oidc_jit_provisioning: bool = False
    oidc_default_role: str = "member"
    # Federation mode: list tenants that have a provider on the public sign-in page (off: found
    # from the e-mail domain or the tenant slug only).
    oidc_public_tenant_list: bool = False
    outbound_allowed_networks: str = ""

    openai_api_key: str | None = None
    azure_api_key: str | None = None
    azure_endpoint: str | None = None
    azure_api_version: str | None = None
    anthropic_api_key: str | None = None
    mistral_api_key: str | None = None
    vllm_model_url: str | None = None
    vllm_api_key: str | None = None

    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|console)$")

    @property
    def embedded(self) -> bool:
        """True when Allting runs its own PostgreSQL and Redis under the data directory."""
        return not self.database_url and not self.redis_url

    @property
    def embedded_postgres(self) -> bool:
        return not self.database_url

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def secrets_file(self) -> Path:
        return self.data_dir / "secrets.env"

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def oidc_allowed_domain_list(self) -> list[str]:
        return [d.strip().lower() for d in self.oidc_allowed_domains.split(",") if d.strip()]

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [proxy.strip() for proxy in self.trusted_proxies.split(",") if proxy.strip()]

    def secret(self, name: str) -> str:
        value = getattr(self, name.lower())
        if not value:
            raise ConfigError(f"{name} is not set")
        return value


def _generate_secret(name: str) -> str:
    if name == "ENCRYPTION_KEY":
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()
    return secrets.token_urlsafe(48)


def _read_secrets_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _write_secrets_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "# Generated by Allting on first start. Keep private; readable by the owner only.\n"
    body += "".join(f"{key}={value}\n" for key, value in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    path.chmod(0o600)


def check_secret_strength(name: str, value: str | None) -> None:
    """Refuse missing, short or well-known secrets, naming the variable."""
    if not value:
        raise ConfigError(
            f"{name} is missing: set it in the environment (at least {MIN_SECRET_LENGTH} chars)"
        )
    if name == "ENCRYPTION_KEY":
        from cryptography.fernet import Fernet

        for part in value.split(","):
            try:
                Fernet(part.strip())
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    "ENCRYPTION_KEY must be a comma-separated list of Fernet keys (32 url-safe base64 bytes)"
                ) from exc
        return
    if value.lower() in KNOWN_DEFAULT_SECRETS:
        raise ConfigError(f"{name} is a well-known default value; generate a random one")
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{name} is too short: at least {MIN_SECRET_LENGTH} characters are required")


def prepare_secrets(settings: Settings) -> Settings:
    """Fill in secrets: generated and stored on first start when embedded, required when external."""
    stored = _read_secrets_file(settings.secrets_file) if settings.embedded else {}
    updates: dict[str, str] = {}
    generated = False
    for name in SECRET_NAMES:
        value = getattr(settings, name.lower()) or stored.get(name)
        if not value and settings.embedded:
            value = _generate_secret(name)
            stored[name] = value
            generated = True
        check_secret_strength(name, value)
        updates[name.lower()] = value
    if generated:
        _write_secrets_file(settings.secrets_file, stored)
    return settings.model_copy(update=updates)


@lru_cache
def get_settings() -> Settings:
    return prepare_secrets(Settings())
