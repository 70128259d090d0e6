"""AI providers, the model catalogue, credentials, usage and budgets of a tenant."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from allting.ai import gateway
from allting.ai.catalogue import STARTING_CATALOGUE
from allting.ai.errors import ProviderError
from allting.ai.models import AiModel, Budget, ModelProvider, UsageRecord
from allting.ai.schemas import (
    DEFAULT_ENDPOINTS,
    PROVIDER_ALIASES,
    BudgetSet,
    CredentialSet,
    ModelCreate,
    ModelUpdate,
    ProviderCreate,
    ProviderUpdate,
)
from allting.audit import service as audit
from allting.deps import Ctx
from allting.platform import crypto
from allting.platform.db import column_parameters, utcnow
from allting.platform.errors import Conflict, Invalid, NotFound, TooManyRequests
from allting.platform.settings import get_settings

KEY_PURPOSE = "model_provider.api_key"
NEEDS_KEY = frozenset({"openai", "azure", "anthropic", "mistral"})
REQUIRED_MODEL_FIELDS = frozenset(
    {"display_name", "vision", "reasoning", "tool_calling", "hosting", "security_level"}
)


def _normalise_type(provider_type: str) -> str:
    return PROVIDER_ALIASES.get(provider_type, provider_type)


# ---------------------------------------------------------------------------------------------
# Provider accounts and their keys


def masked_key(provider: ModelProvider) -> str | None:
    return f"…{provider.key_last4}" if provider.key_last4 else None


def _set_key(provider: ModelProvider, api_key: str) -> None:
    provider.encrypted_api_key = crypto.encrypt_secret(
        api_key, tenant_id=provider.tenant_id, purpose=KEY_PURPOSE
    )
    provider.key_last4 = api_key[-4:]
    provider.key_set_at = utcnow()


def provider_key(provider: ModelProvider) -> str | None:
    """The decrypted key; refused if the stored value was copied from another tenant or provider."""
    if not provider.encrypted_api_key:
        return None
    try:
        return crypto.decrypt_secret(
            provider.encrypted_api_key, tenant_id=provider.tenant_id, purpose=KEY_PURPOSE
        )
    except crypto.SecretError as exc:
        raise Conflict(
            f"The stored key of the provider account '{provider.name}' cannot be read; enter it again",
            code="credential_unreadable",
        ) from exc


def _check_provider_fields(
    provider_type: str, endpoint: str | None, api_version: str | None, deployment: str | None
) -> None:
    if provider_type == "openai_compatible" and not endpoint:
        raise Invalid("An OpenAI-compatible server needs its endpoint URL", field="endpoint")
    if provider_type == "azure" and not (endpoint and api_version):
        raise Invalid(
            "Azure OpenAI needs the endpoint and the API version",
            field="endpoint" if not endpoint else "api_version",
        )
    del deployment


async def list_providers(db: AsyncSession, ctx: Ctx) -> list[ModelProvider]:
    ctx.require("ai")
    return list(await db.scalars(select(ModelProvider).order_by(func.lower(ModelProvider.name))))


async def get_provider(db: AsyncSession, ctx: Ctx, provider_id: uuid.UUID) -> ModelProvider:
    ctx.require("ai")
    provider = await db.get(ModelProvider, provider_id)
    if provider is None:
        raise NotFound("Provider not found")
    return provider


async def _flush_unique(db: AsyncSession, name: str) -> None:
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"A provider named '{name}' already exists",
            code="provider_exists",
            details=[{"field": "name", "message": "already in use"}],
        ) from exc


async def create_provider(db: AsyncSession, ctx: Ctx, data: ProviderCreate) -> ModelProvider:
    """Add a provider account; its key is encrypted and bound to this tenant."""
    ctx.require("ai")
    provider_type = _normalise_type(data.provider_type)
    endpoint = data.endpoint or DEFAULT_ENDPOINTS.get(data.provider_type)
    _check_provider_fields(provider_type, endpoint, data.api_version, data.deployment_name)
    provider = ModelProvider(
        tenant_id=ctx.tenant_id,
        name=data.name,
        provider_type=provider_type,
        endpoint=endpoint,
        api_version=data.api_version,
        deployment_name=data.deployment_name,
        is_active=True,
    )
    if data.api_key:
        _set_key(provider, data.api_key)
    db.add(provider)
    await _flush_unique(db, data.name)
    await audit.record(
        db,
        ctx,
        "ai.provider_created",
        target_type="model_provider",
        target_id=provider.id,
        changes={
            "name": provider.name,
            "type": provider_type,
            "endpoint": endpoint,
            "key": masked_key(provider),
        },
    )
    return provider


async def update_provider(
    db: AsyncSession, ctx: Ctx, provider_id: uuid.UUID, data: ProviderUpdate
) -> ModelProvider:
    provider = await get_provider(db, ctx, provider_id)
    changes = {}
    for field in ("name", "endpoint", "api_version", "deployment_name", "is_active"):
        value = getattr(data, field)
        if value is not None and value != getattr(provider, field):
            changes[field] = {"from": getattr(provider, field), "to": value}
            setattr(provider, field, value)
    if data.api_key:
        _set_key(provider, data.api_key)
        changes["key"] = {"to": masked_key(provider)}
    _check_provider_fields(
        provider.provider_type, provider.endpoint, provider.api_version, provider.deployment_name
    )
    await _flush_unique(db, provider.name)
    await audit.record(
        db, ctx, "ai.provider_updated", target_type="model_provider", target_id=provider.id, changes=changes
    )
    return provider


async def delete_provider(db: AsyncSession, ctx: Ctx, provider_id: uuid.UUID) -> None:
    provider = await get_provider(db, ctx, provider_id)
    await db.delete(provider)
    await audit.record(
        db,
        ctx,
        "ai.provider_deleted",
        target_type="model_provider",
        target_id=provider.id,
        changes={"name": provider.name},
    )


async def test_provider(db: AsyncSession, ctx: Ctx, provider_id: uuid.UUID, model_name: str | None) -> dict:
    """Send a one-token request through the provider; reports the provider's answer in plain words."""
    provider = await get_provider(db, ctx, provider_id)
    if model_name is None:
        model_name = await db.scalar(
            select(AiModel.name)
            .where(
                AiModel.kind == "completion",
                (AiModel.provider_id == provider.id)
                | (AiModel.provider_id.is_(None) & (AiModel.provider_type == provider.provider_type)),
            )
            .order_by(AiModel.is_enabled.desc(), AiModel.created_at)
        )
    if model_name is None:
        raise Invalid("Name a model to try: this provider has none in the catalogue", field="model")
    target = _target_from_provider(provider, model_name)
    started = time.perf_counter()
    try:
        await gateway.complete_chat(
            target, [{"role": "user", "content": "Reply with OK."}], params={"max_tokens": 1}, timeout=20
        )
        result = {"ok": True, "message": "The provider answered.", "model": model_name}
    except ProviderError as exc:
        result = {"ok": False, "message": exc.message, "error_code": exc.code, "model": model_name}
    result["latency_ms"] = int((time.perf_counter() - started) * 1000)
    await audit.record(
        db,
        ctx,
        "ai.provider_tested",
        target_type="model_provider",
        target_id=provider.id,
        outcome="success" if result["ok"] else "failure",
        changes={"model": model_name, "error_code": result.get("error_code")},
    )
    return result


# The reference system's per-provider credential endpoints map onto the provider account named
# after the provider type, so there is one credential store per tenant.


async def _credential_provider(db: AsyncSession, provider: str) -> ModelProvider | None:
    return await db.scalar(select(ModelProvider).where(ModelProvider.name == provider))


async def set_credential(db: AsyncSession, ctx: Ctx, provider: str, data: CredentialSet) -> ModelProvider:
    ctx.require("ai")
    account = await _credential_provider(db, provider)
    if account is None:
        return await create_provider(
            db,
            ctx,
            ProviderCreate(
                name=provider,
                provider_type=provider,
                endpoint=data.endpoint,
                api_version=data.api_version,
                deployment_name=data.deployment_name,
                api_key=data.api_key,
            ),
        )
    return await update_provider(
        db,
        ctx,
        account.id,
        ProviderUpdate(
            endpoint=data.endpoint,
            api_version=data.api_version,
            deployment_name=data.deployment_name,
            api_key=data.api_key,
        ),
    )


async def list_credentials(db: AsyncSession, ctx: Ctx) -> list[ModelProvider]:
    return [provider for provider in await list_providers(db, ctx) if provider.encrypted_api_key]


async def delete_credential(db: AsyncSession, ctx: Ctx, provider: str) -> None:
    ctx.require("ai")
    account = await _credential_provider(db, provider)
    if account is None or not account.encrypted_api_key:
        raise NotFound(f"No credential is set for {provider}")
    account.encrypted_api_key = account.key_last4 = account.key_set_at = None
    await db.flush()
    await audit.record(
        db,
        ctx,
        "ai.credential_deleted",
        target_type="model_provider",
        target_id=account.id,
        changes={"provider": provider},
    )


async def rotate_provider_keys(db: AsyncSession) -> int:
    """Re-encrypt every stored provider key under the newest ENCRYPTION_KEY (system session)."""
    providers = list(
        await db.scalars(select(ModelProvider).where(ModelProvider.encrypted_api_key.is_not(None)))
    )
    for provider in providers:
        provider.encrypted_api_key = crypto.rotate_secret(provider.encrypted_api_key)
    await db.flush()
    return len(providers)


# ---------------------------------------------------------------------------------------------
# Resolving where a model's requests go


@dataclass(frozen=True)
class Credentials:
    api_key: str | None
    api_base: str | None
    api_version: str | None
    source: str


def _shared_credentials(provider_type: str) -> Credentials | None:
    """The operator's global key for a provider type (shared credential mode only)."""
    settings = get_settings()
    if settings.tenant_credentials_enabled:
        return None
    match provider_type:
        case "openai" if settings.openai_api_key:
            return Credentials(settings.openai_api_key, None, None, "shared")
        case "anthropic" if settings.anthropic_api_key:
            return Credentials(settings.anthropic_api_key, None, None, "shared")
        case "mistral" if settings.mistral_api_key:
            return Credentials(settings.mistral_api_key, None, None, "shared")
        case "azure" if settings.azure_api_key and settings.azure_endpoint and settings.azure_api_version:
            return Credentials(
                settings.azure_api_key, settings.azure_endpoint, settings.azure_api_version, "shared"
            )
        case "openai_compatible" if settings.vllm_model_url:
            return Credentials(settings.vllm_api_key, settings.vllm_model_url, None, "shared")
    return None


def _target_from_provider(provider: ModelProvider, model_name: str) -> gateway.ModelTarget:
    name = (
        provider.deployment_name
        if provider.provider_type == "azure" and provider.deployment_name
        else model_name
    )
    return gateway.ModelTarget(
        litellm_model=name,
        api_base=provider.endpoint,
        api_key=provider_key(provider),
        api_version=provider.api_version,
        provider_type=provider.provider_type,
    )


class ModelLocked(Invalid):
    status_code = 409
    code = "model_unavailable"


def _account_for(model: AiModel, accounts: dict[str, ModelProvider]) -> ModelProvider | None:
    if model.provider_id is not None:
        return model.provider if model.provider is not None and model.provider.is_active else None
    return accounts.get(model.provider_type)


def lock_reason(model: AiModel, accounts: dict[str, ModelProvider]) -> str | None:
    """Why the model cannot be used right now (no key, inactive account), or None."""
    if model.provider_type == "local":
        return None
    account = _account_for(model, accounts)
    if account is not None:
        if model.provider_type in NEEDS_KEY and not account.encrypted_api_key:
            return f"The provider account '{account.name}' has no API key"
        return None
    if model.provider_id is not None:
        return "Its provider account is deactivated"
    if _shared_credentials(model.provider_type) is not None:
        return None
    if get_settings().tenant_credentials_enabled:
        return f"No {model.provider_type} key is configured for this organisation"
    return f"No {model.provider_type} key is configured: add a provider account under AI providers"


async def _accounts_by_type(db: AsyncSession) -> dict[str, ModelProvider]:
    accounts: dict[str, ModelProvider] = {}
    for provider in await db.scalars(
        select(ModelProvider).where(ModelProvider.is_active).order_by(ModelProvider.created_at)
    ):
        accounts.setdefault(provider.provider_type, provider)
    return accounts


def target_for(model: AiModel, accounts: dict[str, ModelProvider]) -> gateway.ModelTarget:
    if reason := lock_reason(model, accounts):
        raise ModelLocked(f"{model.display_name} cannot be used: {reason}", field="model_id")
    if model.provider_type == "local":
        return gateway.ModelTarget(litellm_model=model.name, provider_type="local")
    account = _account_for(model, accounts)
    if account is not None:
        return _target_from_provider(account, model.name)
    shared = _shared_credentials(model.provider_type)
    return gateway.ModelTarget(
        litellm_model=model.name,
        api_base=shared.api_base,
        api_key=shared.api_key,
        api_version=shared.api_version,
        provider_type=model.provider_type,
    )


@dataclass(frozen=True)
class PreparedCall:
    model: AiModel
    target: gateway.ModelTarget
    fallbacks: tuple[gateway.ModelTarget, ...]
    fallback_models: tuple[AiModel, ...]

    def model_for(self, served_by_index: int) -> AiModel:
        return self.model if served_by_index == 0 else self.fallback_models[served_by_index - 1]


async def prepare_call(
    db: AsyncSession,
    ctx: Ctx,
    model: AiModel | uuid.UUID,
    *,
    kind: str,
    space_id: uuid.UUID | None = None,
    estimated_tokens: int = 0,
) -> PreparedCall:
    """Everything needed before a model call: the model is enabled and usable, budgets allow it.

    `model` may be a model loaded with `load_model` (its provider account loaded too) or its id.
    """
    if not isinstance(model, AiModel):
        model = await load_model(db, model)
    if model.kind != kind or not model.is_enabled:
        raise ModelLocked(f"{model.display_name} is not enabled for this organisation", field="model_id")
    fallback_models = (
        list(await db.scalars(_models().where(AiModel.id.in_(model.fallback_model_ids), AiModel.is_enabled)))
        if model.fallback_model_ids
        else []
    )
    # Models tied to an account, and the built-in local model, need no lookup of the tenant's
    # accounts; that saves a query per question (and per question searching knowledge).
    needs_accounts = any(
        candidate.provider_id is None and candidate.provider_type != "local"
        for candidate in (model, *fallback_models)
    )
    accounts = await _accounts_by_type(db) if needs_accounts else {}
    target = target_for(model, accounts)
    order = {fallback_id: index for index, fallback_id in enumerate(model.fallback_model_ids or [])}
    fallback_models = sorted(
        (fallback for fallback in fallback_models if lock_reason(fallback, accounts) is None),
        key=lambda fallback: order[fallback.id],
    )
    await check_budgets(db, ctx, space_id=space_id, estimated_tokens=estimated_tokens)
    return PreparedCall(
        model=model,
        target=target,
        fallbacks=tuple(target_for(fallback, accounts) for fallback in fallback_models),
        fallback_models=tuple(fallback_models),
    )


async def default_model(db: AsyncSession, kind: str) -> AiModel | None:
    return await db.scalar(_models().where(AiModel.kind == kind, AiModel.is_default, AiModel.is_enabled))


# ---------------------------------------------------------------------------------------------
# The catalogue


def _models():
    return select(AiModel).options(joinedload(AiModel.provider))


async def load_model(db: AsyncSession, model_id: uuid.UUID) -> AiModel:
    """A model of the catalogue with its provider account."""
    return await _model(db, model_id)


_MODEL_BY_ID = _models().where(AiModel.id == bindparam("model_id", type_=AiModel.id.type))


async def _model(db: AsyncSession, model_id: uuid.UUID) -> AiModel:
    model = await db.scalar(_MODEL_BY_ID, {"model_id": model_id})
    if model is None:
        raise NotFound("Model not found")
    return model


async def seed_catalogue(db: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Give a new tenant the starting catalogue."""
    for entry in STARTING_CATALOGUE:
        db.add(AiModel(tenant_id=tenant_id, **{"is_enabled": False, "is_default": False, **entry}))
    await db.flush()


async def list_models(
    db: AsyncSession, ctx: Ctx, kind: str | None = None
) -> list[tuple[AiModel, str | None]]:
    """The catalogue with each model's lock reason; members see enabled models only."""
    query = _models().order_by(AiModel.kind, AiModel.is_default.desc(), func.lower(AiModel.display_name))
    if kind:
        query = query.where(AiModel.kind == kind)
    if not ctx.has("ai"):
        query = query.where(AiModel.is_enabled)
    accounts = await _accounts_by_type(db)
    return [(model, lock_reason(model, accounts)) for model in await db.scalars(query)]


async def get_model(db: AsyncSession, ctx: Ctx, model_id: uuid.UUID) -> tuple[AiModel, str | None]:
    model = await _model(db, model_id)
    if not model.is_enabled and not ctx.has("ai"):
        raise NotFound("Model not found")
    return model, lock_reason(model, await _accounts_by_type(db))


async def _check_fallbacks(db: AsyncSession, model: AiModel, fallback_ids: list[uuid.UUID]) -> None:
    for fallback_id in fallback_ids:
        fallback = await db.get(AiModel, fallback_id)
        if fallback is None or fallback.kind != model.kind or fallback_id == model.id:
            raise Invalid("Fallbacks must be other models of the same kind", field="fallback_model_ids")


async def _apply_default_and_enabled(
    db: AsyncSession, ctx: Ctx, model: AiModel, *, enabled: bool | None, default: bool | None
) -> dict:
    changes = {}
    if enabled is not None and enabled != model.is_enabled:
        if enabled and (reason := lock_reason(model, await _accounts_by_type(db))):
            raise ModelLocked(f"{model.display_name} cannot be enabled: {reason}", field="is_enabled")
        if not enabled and model.is_default:
            raise Invalid("Choose another default before disabling this model", field="is_enabled")
        model.is_enabled = enabled
        changes["is_enabled"] = enabled
    if default is None and model.is_enabled and not model.is_default:
        # The first enabled model of its kind becomes the default, so that assistants on the
        # organisation's default (every personal assistant) can answer at once.
        default = await default_model(db, model.kind) is None
    if default and not model.is_default:
        if not model.is_enabled:
            raise Invalid("Only an enabled model can be the default", field="is_default")
        await db.execute(
            update(AiModel).where(AiModel.kind == model.kind, AiModel.is_default).values(is_default=False)
        )
        model.is_default = True
        changes["is_default"] = True
    elif default is False and model.is_default:
        model.is_default = False
        changes["is_default"] = False
    return changes


async def create_model(db: AsyncSession, ctx: Ctx, data: ModelCreate) -> AiModel:
    """Add a model to the catalogue, tied to a provider account or to a provider type."""
    ctx.require("ai")
    provider = await get_provider(db, ctx, data.provider_id) if data.provider_id else None
    provider_type = provider.provider_type if provider else _normalise_type(data.provider_type or "")
    if not provider_type:
        raise Invalid("Give the provider account (provider_id) or the provider type", field="provider_id")
    if data.kind == "embedding" and not data.dimensions:
        raise Invalid("Embedding models need their vector dimensions", field="dimensions")
    fields = data.model_dump(exclude={"provider_type", "is_enabled", "is_default"})
    fields["display_name"] = data.display_name or data.name
    if await db.scalar(
        select(AiModel.id).where(
            AiModel.kind == data.kind, func.lower(AiModel.display_name) == fields["display_name"].lower()
        )
    ):
        raise Conflict(
            f"A {data.kind} model named '{fields['display_name']}' already exists",
            code="model_exists",
            details=[{"field": "display_name", "message": "already in use"}],
        )
    model = AiModel(
        tenant_id=ctx.tenant_id,
        provider_type=provider_type,
        is_enabled=False,
        is_default=False,
        extra={},
        **fields,
    )
    db.add(model)
    await db.flush()
    await _check_fallbacks(db, model, data.fallback_model_ids)
    model = await _model(db, model.id)
    changes = await _apply_default_and_enabled(
        db, ctx, model, enabled=data.is_enabled or None, default=data.is_default or None
    )
    await db.flush()
    await audit.record(
        db,
        ctx,
        "ai.model_created",
        target_type="ai_model",
        target_id=model.id,
        changes={"kind": model.kind, "name": model.name, "provider_type": provider_type, **changes},
    )
    return model


async def update_model(db: AsyncSession, ctx: Ctx, model_id: uuid.UUID, data: ModelUpdate) -> AiModel:
    ctx.require("ai")
    model = await _model(db, model_id)
    values = data.model_dump(exclude_unset=True, exclude={"is_enabled", "is_default"})
    for required in REQUIRED_MODEL_FIELDS & {name for name, value in values.items() if value is None}:
        raise Invalid("This field cannot be empty", field=required)
    if "fallback_model_ids" in values:
        await _check_fallbacks(db, model, values["fallback_model_ids"] or [])
    if values.get("provider_id"):
        provider = await get_provider(db, ctx, values["provider_id"])
        model.provider_type = provider.provider_type
    changes = {}
    for name, value in values.items():
        if getattr(model, name) != value:
            changes[name] = {"from": str(getattr(model, name)), "to": str(value)}
            setattr(model, name, value)
    await db.flush()
    model = await _model(db, model.id)
    changes |= await _apply_default_and_enabled(
        db, ctx, model, enabled=data.is_enabled, default=data.is_default
    )
    await db.flush()
    await audit.record(
        db, ctx, "ai.model_updated", target_type="ai_model", target_id=model.id, changes=changes
    )
    return model


async def delete_model(db: AsyncSession, ctx: Ctx, model_id: uuid.UUID) -> None:
    ctx.require("ai")
    model = await _model(db, model_id)
    if model.is_default:
        raise Invalid("Choose another default before deleting this model", field="model_id")
    await db.delete(model)
    await audit.record(
        db,
        ctx,
        "ai.model_deleted",
        target_type="ai_model",
        target_id=model.id,
        changes={"name": model.name, "kind": model.kind},
    )


# ---------------------------------------------------------------------------------------------
# Usage and budgets


def month_window(now: datetime | None = None) -> tuple[datetime, datetime]:
    now = now or datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


_USAGE_COLUMNS = (
    "id",
    "created_at",
    "tenant_id",
    "user_id",
    "space_id",
    "assistant_id",
    "model_id",
    "model_name",
    "provider_type",
    "kind",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "latency_ms",
    "outcome",
)
USAGE_INSERT = insert(UsageRecord.__table__).values(
    column_parameters(UsageRecord.__table__, _USAGE_COLUMNS, "usage_")
)
"""One usage row without the unit of work, built once; its parameters come from `usage_row`. The
tenant is the caller's and row-level security checks it. Callers may add a CTE to write more in
the same round trip."""


def usage_row(
    ctx: Ctx,
    model: AiModel,
    usage: gateway.Usage,
    *,
    target: gateway.ModelTarget,
    latency_ms: int | None,
    space_id: uuid.UUID | None = None,
    assistant_id: uuid.UUID | None = None,
    outcome: str = "success",
) -> dict:
    """The parameters of `USAGE_INSERT` for one model call, with its cost where known."""
    override = None
    if model.input_price_per_million is not None and model.output_price_per_million is not None:
        override = gateway.PriceOverride(
            float(model.input_price_per_million) / 1e6, float(model.output_price_per_million) / 1e6
        )
    cost = gateway.estimate_cost(target, usage, price_override=override)
    values = {
        "id": uuid.uuid4(),
        "created_at": utcnow(),
        "tenant_id": ctx.tenant_id,
        "user_id": ctx.user_id,
        "space_id": space_id,
        "assistant_id": assistant_id,
        "model_id": model.id,
        "model_name": model.name,
        "provider_type": model.provider_type,
        "kind": model.kind,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost": Decimal(str(round(cost, 6))) if cost is not None else None,
        "latency_ms": latency_ms,
        "outcome": outcome,
    }
    return {f"usage_{name}": value for name, value in values.items()}


async def record_usage(db: AsyncSession, ctx: Ctx, model: AiModel, usage: gateway.Usage, **details) -> None:
    """Record one model call for usage reports and budgets (see `usage_row` for the details)."""
    await db.execute(USAGE_INSERT, usage_row(ctx, model, usage, **details))


async def _used(db: AsyncSession, budget: Budget, start: datetime, end: datetime) -> tuple[int, Decimal]:
    query = select(
        func.coalesce(func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0),
        func.coalesce(func.sum(UsageRecord.cost), 0),
    ).where(UsageRecord.created_at >= start, UsageRecord.created_at < end)
    if budget.scope == "space":
        query = query.where(UsageRecord.space_id == budget.scope_id)
    elif budget.scope == "user":
        query = query.where(UsageRecord.user_id == budget.scope_id)
    tokens, cost = (await db.execute(query)).one()
    return int(tokens), Decimal(cost)


_SCOPE_NAMES = {"tenant": "your organisation", "space": "this space", "user": "your account"}


# Built once: it runs before every model call. A NULL space or user matches no budget of that scope.
_BUDGETS_FOR_CALL = select(Budget).where(
    (Budget.scope == "tenant")
    | ((Budget.scope == "space") & (Budget.scope_id == bindparam("space_id", type_=Budget.scope_id.type)))
    | ((Budget.scope == "user") & (Budget.scope_id == bindparam("user_id", type_=Budget.scope_id.type)))
)


async def check_budgets(
    db: AsyncSession, ctx: Ctx, *, space_id: uuid.UUID | None, estimated_tokens: int
) -> None:
    """Refuse a call (429) before it reaches the provider when it would exceed a monthly budget."""
    if ctx.tenant_has_budgets is False:
        return
    budgets = list(await db.scalars(_BUDGETS_FOR_CALL, {"space_id": space_id, "user_id": ctx.user_id}))
    if not budgets:
        return
    start, end = month_window()
    retry_after = int((end - datetime.now(UTC)).total_seconds())
    for budget in budgets:
        tokens, cost = await _used(db, budget, start, end)
        if budget.monthly_tokens is not None and tokens + estimated_tokens > budget.monthly_tokens:
            what = f"monthly budget of {budget.monthly_tokens:,} tokens"
        elif budget.monthly_cost is not None and cost >= budget.monthly_cost:
            what = f"monthly budget of {budget.monthly_cost} USD"
        else:
            continue
        raise TooManyRequests(
            f"The {what} for {_SCOPE_NAMES[budget.scope]} is used up; it resets on {end.date().isoformat()}",
            retry_after=retry_after,
            code="budget_exceeded",
            details={
                "scope": budget.scope,
                "scope_id": str(budget.scope_id) if budget.scope_id else None,
                "resets_at": end.isoformat(),
            },
        )


async def list_budgets(db: AsyncSession, ctx: Ctx) -> list[tuple[Budget, int, Decimal]]:
    ctx.require("ai")
    start, end = month_window()
    budgets = list(await db.scalars(select(Budget).order_by(Budget.scope, Budget.created_at)))
    return [(budget, *await _used(db, budget, start, end)) for budget in budgets]


async def set_budget(
    db: AsyncSession, ctx: Ctx, scope: str, scope_id: uuid.UUID | None, data: BudgetSet
) -> Budget:
    ctx.require("ai")
    if (scope == "tenant") != (scope_id is None):
        raise Invalid("A tenant budget has no scope id; space and user budgets need one", field="scope_id")
    if data.monthly_tokens is None and data.monthly_cost is None:
        raise Invalid("Give a monthly token limit, a monthly cost limit, or both", field="monthly_tokens")
    if scope_id is not None:
        await _check_budget_scope(db, scope, scope_id)
    budget = await db.scalar(
        select(Budget).where(
            Budget.scope == scope,
            Budget.scope_id.is_(None) if scope_id is None else Budget.scope_id == scope_id,
        )
    )
    if budget is None:
        budget = Budget(tenant_id=ctx.tenant_id, scope=scope, scope_id=scope_id)
        db.add(budget)
    budget.monthly_tokens = data.monthly_tokens
    budget.monthly_cost = data.monthly_cost
    await db.flush()
    await audit.record(
        db,
        ctx,
        "ai.budget_set",
        target_type="budget",
        target_id=budget.id,
        changes={
            "scope": scope,
            "scope_id": str(scope_id) if scope_id else None,
            "monthly_tokens": data.monthly_tokens,
            "monthly_cost": str(data.monthly_cost) if data.monthly_cost else None,
        },
    )
    return budget


async def _check_budget_scope(db: AsyncSession, scope: str, scope_id: uuid.UUID) -> None:
    """The space or user a budget is for must exist in this tenant (else 404, like any unknown id)."""
    from allting.spaces.models import Space
    from allting.users.models import User

    if scope == "space" and await db.get(Space, scope_id) is None:
        raise NotFound("Space not found")
    if (
        scope == "user"
        and await db.scalar(select(User.id).where(User.id == scope_id, User.deleted_at.is_(None))) is None
    ):
        raise NotFound("User not found")


async def delete_budget(db: AsyncSession, ctx: Ctx, budget_id: uuid.UUID) -> None:
    ctx.require("ai")
    budget = await db.get(Budget, budget_id)
    if budget is None:
        raise NotFound("Budget not found")
    await db.delete(budget)
    await audit.record(
        db,
        ctx,
        "ai.budget_deleted",
        target_type="budget",
        target_id=budget.id,
        changes={"scope": budget.scope},
    )


GROUPS = {
    "model": UsageRecord.model_name,
    "user": UsageRecord.user_id,
    "space": UsageRecord.space_id,
    "day": func.date_trunc("day", UsageRecord.created_at),
    "provider": UsageRecord.provider_type,
}


async def usage_summary(
    db: AsyncSession, ctx: Ctx, *, start: datetime, end: datetime, group_by: str
) -> tuple[dict, list[dict]]:
    """Tokens, cost and calls over a period, grouped by model, user, space, day or provider.

    Admins with the AI permission see the whole tenant; everyone else sees their own usage.
    """
    if end <= start:
        raise Invalid("The end must be after the start", field="end")
    key = GROUPS[group_by]
    scope = [UsageRecord.created_at >= start, UsageRecord.created_at < end]
    if not ctx.has("ai"):
        scope.append(UsageRecord.user_id == ctx.user_id)
    measures = (
        func.sum(UsageRecord.prompt_tokens),
        func.sum(UsageRecord.completion_tokens),
        func.sum(UsageRecord.cost),
        func.count(),
    )
    rows = (await db.execute(select(key, *measures).where(*scope).group_by(key).order_by(key))).all()
    total = (await db.execute(select(*measures).where(*scope))).one()
    labels = await _labels(db, group_by, [row[0] for row in rows])

    def as_row(key_value, prompt, completion, cost, calls) -> dict:
        text = (
            key_value.date().isoformat()
            if isinstance(key_value, datetime)
            else (str(key_value) if key_value is not None else None)
        )
        return {
            "key": text,
            "label": labels.get(key_value, text),
            "prompt_tokens": int(prompt or 0),
            "completion_tokens": int(completion or 0),
            "total_tokens": int((prompt or 0) + (completion or 0)),
            "cost": cost,
            "calls": int(calls or 0),
        }

    return as_row(None, *total), [as_row(*row) for row in rows]


async def _labels(db: AsyncSession, group_by: str, keys: list) -> dict:
    if group_by != "user":
        return {}
    from allting.users.models import User

    ids = [key for key in keys if key is not None]
    rows = await db.execute(select(User.id, User.email).where(User.id.in_(ids)))
    return dict(rows.all())
