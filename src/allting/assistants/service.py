"""Assistants in spaces: prompt with version history, model and parameters, knowledge, keys."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from allting.ai import service as ai_service
from allting.ai.models import AiModel
from allting.assistants.models import Assistant, AssistantApiKey, AssistantPromptVersion
from allting.assistants.schemas import AssistantCreate, AssistantUpdate
from allting.audit import service as audit
from allting.deps import Ctx
from allting.platform.db import utcnow
from allting.platform.errors import Forbidden, Invalid, NotFound
from allting.platform.security import digest, generate_api_key
from allting.spaces import permissions
from allting.spaces import service as spaces_service
from allting.spaces.models import Space

ASSISTANT_KEY_PREFIX = "ina_"


async def get_assistant_for(
    db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID, action: str = "read"
) -> tuple[Assistant, Space, str]:
    """The assistant, its space and the caller's role there, if they may take `action` on it.

    Viewers see published assistants only; anything the caller cannot see answers 404.
    """
    row = (
        await db.execute(
            select(Assistant, Space)
            .join(Space, Space.id == Assistant.space_id)
            .where(Assistant.id == assistant_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound("Assistant not found")
    assistant, space = row
    role = await permissions.space_role(db, ctx, space)
    check_access(assistant, role, action)
    return assistant, space, role


def check_access(assistant: Assistant, role: str | None, action: str) -> None:
    """Whether someone of this role in the assistant's space may take `action` on it.

    Viewers see published assistants only; anything the caller cannot see answers 404."""
    visible = permissions.allowed(role, "assistant", "read") and (
        assistant.published or assistant.is_default or permissions.allowed(role, "assistant", "edit")
    )
    if not visible:
        raise NotFound("Assistant not found")
    if not permissions.allowed(role, "assistant", action):
        raise Forbidden(
            f"Your role in this space ({role}) does not allow this", code="space_permission_denied"
        )


async def _check_model(db: AsyncSession, space: Space, model_id: uuid.UUID | None) -> None:
    if model_id is None:
        return
    model = await db.get(AiModel, model_id)
    if model is None or model.kind != "completion":
        raise Invalid("No such completion model", field="model_id")
    await spaces_service.check_model_allowed(db, space, model)


async def _check_knowledge(
    db: AsyncSession, space: Space, collection_ids: list[uuid.UUID], website_ids: list[uuid.UUID]
) -> None:
    if not collection_ids and not website_ids:
        return
    from allting.knowledge import service as knowledge_service

    await knowledge_service.check_attachable(
        db, space, collection_ids=collection_ids, website_ids=website_ids
    )


async def _effective_model(db: AsyncSession, model_id: uuid.UUID | None) -> AiModel | None:
    """The model an assistant answers with: its own, else the organisation's default."""
    return await db.get(AiModel, model_id) if model_id else await ai_service.default_model(db, "completion")


def _check_params(model: AiModel | None, params: dict) -> None:
    if params.get("reasoning_effort") and model is not None and not model.reasoning:
        raise Invalid(
            f"{model.display_name} does not support a reasoning effort", field="model_params.reasoning_effort"
        )


async def create_default_assistant(db: AsyncSession, ctx: Ctx, space: Space, *, name: str) -> Assistant:
    """The assistant a space starts with, on the organisation's default completion model."""
    model = await ai_service.default_model(db, "completion")
    assistant = Assistant(
        space_id=space.id,
        name=name,
        prompt="",
        prompt_version=1,
        model_id=model.id if model else None,
        model_params={},
        collection_ids=[],
        website_ids=[],
        allow_attachments=True,
        published=True,
        is_default=True,
        created_by=ctx.user_id,
    )
    db.add(assistant)
    await db.flush()
    db.add(
        AssistantPromptVersion(
            assistant_id=assistant.id, version=1, text="", note="Created", created_by=ctx.user_id
        )
    )
    await db.flush()
    return assistant


async def list_assistants(
    db: AsyncSession, ctx: Ctx, *, space_id: uuid.UUID | None = None
) -> list[tuple[Assistant, str]]:
    """Assistants the caller can use or edit, optionally in one space."""
    if space_id is not None:
        space_ids = [(await spaces_service.get_space_for(db, ctx, space_id))[0].id]
    else:
        space_ids = await permissions.accessible_space_ids(db, ctx)
    assistants = await db.scalars(
        select(Assistant)
        .where(Assistant.space_id.in_(space_ids))
        .order_by(Assistant.is_default.desc(), func.lower(Assistant.name))
    )
    roles: dict[uuid.UUID, str | None] = {}
    visible = []
    for assistant in assistants:
        if assistant.space_id not in roles:
            roles[assistant.space_id] = await permissions.space_role(
                db, ctx, await db.get(Space, assistant.space_id)
            )
        role = roles[assistant.space_id]
        if assistant.published or assistant.is_default or permissions.allowed(role, "assistant", "edit"):
            visible.append((assistant, role))
    return visible


async def create_assistant(db: AsyncSession, ctx: Ctx, data: AssistantCreate) -> Assistant:
    ctx.require("assistants")
    space, _ = await spaces_service.get_space_for(db, ctx, data.space_id, "assistant", "create")
    await _check_model(db, space, data.model_id)
    _check_params(await _effective_model(db, data.model_id), data.model_params.model_dump())
    await _check_knowledge(db, space, data.collection_ids, data.website_ids)
    assistant = Assistant(
        space_id=space.id,
        name=data.name,
        description=data.description,
        prompt=data.prompt,
        prompt_version=1,
        model_id=data.model_id,
        model_params=data.model_params.model_dump(exclude_none=True),
        collection_ids=data.collection_ids,
        website_ids=data.website_ids,
        allow_attachments=data.allow_attachments,
        published=data.published,
        is_default=False,
        retention_days=data.retention_days,
        created_by=ctx.user_id,
    )
    db.add(assistant)
    await db.flush()
    db.add(
        AssistantPromptVersion(
            assistant_id=assistant.id, version=1, text=data.prompt, note="Created", created_by=ctx.user_id
        )
    )
    await audit.record(
        db,
        ctx,
        "assistant.created",
        target_type="assistant",
        target_id=assistant.id,
        changes={"name": assistant.name, "space_id": str(space.id)},
    )
    await db.flush()
    return assistant


async def _new_prompt_version(
    db: AsyncSession, ctx: Ctx, assistant: Assistant, text: str, note: str | None
) -> None:
    assistant.prompt_version += 1
    assistant.prompt = text
    db.add(
        AssistantPromptVersion(
            assistant_id=assistant.id,
            version=assistant.prompt_version,
            text=text,
            note=note,
            created_by=ctx.user_id,
        )
    )


async def update_assistant(
    db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID, data: AssistantUpdate
) -> Assistant:
    assistant, space, role = await get_assistant_for(db, ctx, assistant_id, "edit")
    values = data.model_dump(exclude_unset=True, exclude={"prompt_note"})
    changes = {}
    if "name" in values and values["name"] is None:
        raise Invalid("The name cannot be empty", field="name")
    if "model_id" in values:
        await _check_model(db, space, values["model_id"])
    model_id = values.get("model_id", assistant.model_id)
    if "model_params" in values:
        values["model_params"] = {k: v for k, v in (values["model_params"] or {}).items() if v is not None}
    _check_params(await _effective_model(db, model_id), values.get("model_params", assistant.model_params))
    if "collection_ids" in values or "website_ids" in values:
        values["collection_ids"] = values.get("collection_ids") or []
        values["website_ids"] = values.get("website_ids") or []
        await _check_knowledge(db, space, values["collection_ids"], values["website_ids"])
    publishing = "published" in values and values["published"] != assistant.published
    if publishing and not permissions.allowed(role, "assistant", "publish"):
        raise Forbidden("Your role cannot publish assistants", code="space_permission_denied")
    if values.pop("is_default", None):
        await db.execute(
            update(Assistant)
            .where(Assistant.space_id == space.id, Assistant.is_default)
            .values(is_default=False)
        )
        assistant.is_default = True
        changes["is_default"] = True
    if "prompt" in values:
        text = values.pop("prompt") or ""
        if text != assistant.prompt:
            await _new_prompt_version(db, ctx, assistant, text, data.prompt_note)
            changes["prompt_version"] = assistant.prompt_version
    for name, value in values.items():
        if getattr(assistant, name) != value:
            changes[name] = {"from": _plain(getattr(assistant, name)), "to": _plain(value)}
            setattr(assistant, name, value)
    await db.flush()
    await audit.record(
        db, ctx, "assistant.updated", target_type="assistant", target_id=assistant.id, changes=changes
    )
    return assistant


def _plain(value):
    return [str(item) for item in value] if isinstance(value, list) else value


async def delete_assistant(db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID) -> None:
    assistant, space, _ = await get_assistant_for(db, ctx, assistant_id, "delete")
    if assistant.is_default and space.kind == "personal":
        raise Invalid("The personal assistant cannot be deleted", field="assistant_id")
    await db.delete(assistant)
    await audit.record(
        db,
        ctx,
        "assistant.deleted",
        target_type="assistant",
        target_id=assistant.id,
        changes={"name": assistant.name},
    )


async def move_assistant(
    db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID, space_id: uuid.UUID
) -> Assistant:
    """Move an assistant to another space the caller may create assistants in; its knowledge stays behind."""
    assistant, source, _ = await get_assistant_for(db, ctx, assistant_id, "delete")
    target, _ = await spaces_service.get_space_for(db, ctx, space_id, "assistant", "create")
    if target.id == source.id:
        return assistant
    await _check_model(db, target, assistant.model_id)
    assistant.space_id = target.id
    assistant.is_default = False
    assistant.collection_ids = []
    assistant.website_ids = []
    await db.flush()
    await audit.record(
        db,
        ctx,
        "assistant.moved",
        target_type="assistant",
        target_id=assistant.id,
        changes={"from": str(source.id), "to": str(target.id)},
    )
    return assistant


async def list_prompt_versions(
    db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID
) -> list[AssistantPromptVersion]:
    assistant, _, _ = await get_assistant_for(db, ctx, assistant_id, "edit")
    return list(
        await db.scalars(
            select(AssistantPromptVersion)
            .where(AssistantPromptVersion.assistant_id == assistant.id)
            .order_by(AssistantPromptVersion.version.desc())
        )
    )


async def restore_prompt_version(
    db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID, version: int
) -> Assistant:
    """Make an older prompt current again, as a new version (history is never rewritten)."""
    assistant, _, _ = await get_assistant_for(db, ctx, assistant_id, "edit")
    old = await db.scalar(
        select(AssistantPromptVersion).where(
            AssistantPromptVersion.assistant_id == assistant.id, AssistantPromptVersion.version == version
        )
    )
    if old is None:
        raise NotFound("Prompt version not found")
    await _new_prompt_version(db, ctx, assistant, old.text, f"Restored version {version}")
    await db.flush()
    await audit.record(
        db,
        ctx,
        "assistant.prompt_restored",
        target_type="assistant",
        target_id=assistant.id,
        changes={"restored": version, "new_version": assistant.prompt_version},
    )
    return assistant


async def create_key(
    db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID, name: str
) -> tuple[AssistantApiKey, str]:
    """A key that can only ask this assistant; shown once."""
    assistant, _, _ = await get_assistant_for(db, ctx, assistant_id, "edit")
    new_key = generate_api_key()
    secret = ASSISTANT_KEY_PREFIX + new_key.secret.removeprefix("alt_")
    key = AssistantApiKey(
        assistant_id=assistant.id,
        name=name,
        prefix=secret[:10],
        key_hash=digest(secret),
        created_by=ctx.user_id,
    )
    db.add(key)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "assistant.key_created",
        target_type="assistant",
        target_id=assistant.id,
        changes={"prefix": key.prefix, "name": name},
    )
    return key, secret


async def list_keys(db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID) -> list[AssistantApiKey]:
    assistant, _, _ = await get_assistant_for(db, ctx, assistant_id, "edit")
    return list(
        await db.scalars(
            select(AssistantApiKey)
            .where(AssistantApiKey.assistant_id == assistant.id)
            .order_by(AssistantApiKey.created_at.desc())
        )
    )


async def revoke_key(
    db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID, key_id: uuid.UUID
) -> AssistantApiKey:
    assistant, _, _ = await get_assistant_for(db, ctx, assistant_id, "edit")
    key = await db.scalar(
        select(AssistantApiKey).where(
            AssistantApiKey.id == key_id, AssistantApiKey.assistant_id == assistant.id
        )
    )
    if key is None:
        raise NotFound("Key not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await audit.record(
            db,
            ctx,
            "assistant.key_revoked",
            target_type="assistant",
            target_id=assistant.id,
            changes={"prefix": key.prefix},
        )
    await db.flush()
    return key


async def authenticate_assistant_key(db: AsyncSession, secret: str) -> Ctx:
    """An assistant key: it may only ask its own assistant, in its tenant."""
    from allting.platform.db import system_transaction
    from allting.platform.errors import Unauthorized
    from allting.platform.tenancy import set_tenant

    async with system_transaction() as system_db:
        key = await system_db.scalar(
            select(AssistantApiKey).where(AssistantApiKey.key_hash == digest(secret))
        )
        if key is None or key.revoked_at is not None:
            raise Unauthorized("Invalid assistant key", code="invalid_api_key")
        key.last_used_at = utcnow()
    await set_tenant(db, key.tenant_id)
    return Ctx(
        tenant_id=key.tenant_id,
        user_id=None,
        actor_type="assistant_key",
        email=f"assistant key {key.prefix}",
        api_key_id=key.id,
        assistant_id=key.assistant_id,
    )
