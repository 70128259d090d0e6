from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ProviderTypeIn = Literal[
    "openai", "azure", "anthropic", "mistral", "openai_compatible", "vllm", "berget", "ollama", "llamacpp"
]
ModelKind = Literal["completion", "embedding", "transcription"]
Hosting = Literal["on_premises", "sweden", "eu", "usa", "other"]

PROVIDER_ALIASES = {
    "vllm": "openai_compatible",
    "berget": "openai_compatible",
    "ollama": "openai_compatible",
    "llamacpp": "openai_compatible",
}
DEFAULT_ENDPOINTS = {"berget": "https://api.berget.ai/v1", "ollama": "http://127.0.0.1:11434/v1"}


class ProviderCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    provider_type: ProviderTypeIn
    endpoint: str | None = Field(default=None, max_length=500, pattern=r"^https?://")
    api_version: str | None = Field(default=None, max_length=50)
    deployment_name: str | None = Field(default=None, max_length=200)
    api_key: str | None = Field(default=None, min_length=8, max_length=4000)


class ProviderUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    endpoint: str | None = Field(default=None, max_length=500, pattern=r"^https?://")
    api_version: str | None = Field(default=None, max_length=50)
    deployment_name: str | None = Field(default=None, max_length=200)
    api_key: str | None = Field(default=None, min_length=8, max_length=4000)
    is_active: bool | None = None


class ProviderRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    provider_type: str
    endpoint: str | None
    api_version: str | None
    deployment_name: str | None
    masked_key: str | None = None
    key_set_at: datetime | None
    is_active: bool
    created_at: datetime
    updated_at: datetime


class ConnectionTest(BaseModel):
    model: str | None = Field(
        default=None, max_length=200, description="Model to try; default: one of the catalogue"
    )


class ConnectionTestResult(BaseModel):
    ok: bool
    message: str
    error_code: str | None = None
    latency_ms: int | None = None
    model: str | None = None


class CredentialSet(BaseModel):
    """The reference system's credential body."""

    api_key: str = Field(min_length=8, max_length=4000)
    endpoint: str | None = Field(default=None, max_length=500, pattern=r"^https?://")
    api_version: str | None = Field(default=None, max_length=50)
    deployment_name: str | None = Field(default=None, max_length=200)


class CredentialSetResponse(BaseModel):
    tenant_id: uuid.UUID
    provider: str
    masked_key: str
    message: str
    set_at: datetime


class CredentialInfo(BaseModel):
    provider: str
    masked_key: str | None = None
    configured_at: datetime | None
    encryption_status: Literal["encrypted"]
    config: dict


class CredentialList(BaseModel):
    credentials: list[CredentialInfo]


class ModelCreate(BaseModel):
    kind: ModelKind
    name: str = Field(min_length=1, max_length=200, description="The provider's model name (LiteLLM name)")
    display_name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    provider_id: uuid.UUID | None = None
    provider_type: ProviderTypeIn | None = None
    context_window: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    vision: bool = False
    reasoning: bool = False
    tool_calling: bool = False
    dimensions: int | None = Field(default=None, ge=1, le=16000)
    batch_size: int | None = Field(default=None, ge=1, le=2048)
    hosting: Hosting = "other"
    security_level: int = Field(default=0, ge=0, le=10)
    is_enabled: bool = False
    is_default: bool = False
    input_price_per_million: Decimal | None = Field(default=None, ge=0)
    output_price_per_million: Decimal | None = Field(default=None, ge=0)
    fallback_model_ids: list[uuid.UUID] = Field(default_factory=list, max_length=5)


class ModelUpdate(BaseModel):
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=1000)
    provider_id: uuid.UUID | None = None
    context_window: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    vision: bool | None = None
    reasoning: bool | None = None
    tool_calling: bool | None = None
    dimensions: int | None = Field(default=None, ge=1, le=16000)
    batch_size: int | None = Field(default=None, ge=1, le=2048)
    hosting: Hosting | None = None
    security_level: int | None = Field(default=None, ge=0, le=10)
    is_enabled: bool | None = None
    is_default: bool | None = None
    input_price_per_million: Decimal | None = Field(default=None, ge=0)
    output_price_per_million: Decimal | None = Field(default=None, ge=0)
    fallback_model_ids: list[uuid.UUID] | None = Field(default=None, max_length=5)


class ModelEnablement(BaseModel):
    """The reference system's per-tenant switch body."""

    is_org_enabled: bool | None = None
    is_org_default: bool | None = None
    security_level: int | None = Field(default=None, ge=0, le=10)


class ModelRead(BaseModel):
    """A catalogue entry; field names follow the reference system where it has them."""

    id: uuid.UUID
    kind: str
    name: str
    nickname: str
    display_name: str
    description: str | None
    family: str | None
    litellm_model_name: str
    token_limit: int | None
    max_output_tokens: int | None
    vision: bool
    reasoning: bool
    supports_tool_calling: bool
    dimensions: int | None
    batch_size: int | None
    hosting: str
    security_level: int
    is_org_enabled: bool
    is_org_default: bool
    can_access: bool
    is_locked: bool
    lock_reason: str | None
    provider_id: uuid.UUID | None
    provider_name: str | None
    provider_type: str
    input_price_per_million: Decimal | None
    output_price_per_million: Decimal | None
    fallback_model_ids: list[uuid.UUID]
    created_at: datetime


class ModelList(BaseModel):
    items: list[ModelRead]
    count: int


class UsageRow(BaseModel):
    key: str | None
    label: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: Decimal | None
    calls: int


class UsageSummary(BaseModel):
    start: datetime
    end: datetime
    group_by: str
    total: UsageRow
    items: list[UsageRow]


BudgetScope = Literal["tenant", "space", "user"]


class BudgetSet(BaseModel):
    monthly_tokens: int | None = Field(default=None, ge=1)
    monthly_cost: Decimal | None = Field(default=None, gt=0)

    @field_validator("monthly_cost")
    @classmethod
    def _two_decimals(cls, value: Decimal | None) -> Decimal | None:
        return value.quantize(Decimal("0.0001")) if value is not None else None


class BudgetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    scope: str
    scope_id: uuid.UUID | None
    monthly_tokens: int | None
    monthly_cost: Decimal | None
    used_tokens: int = 0
    used_cost: Decimal = Decimal(0)
    resets_at: datetime | None = None
