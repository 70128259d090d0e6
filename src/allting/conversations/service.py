"""Asking assistants: building the request, streaming the answer, storing it once with what produced it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy import Integer, Uuid, bindparam, delete, func, insert, inspect, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from allting.ai import gateway
from allting.ai import service as ai_service
from allting.ai.errors import ProviderError, ProviderRateLimited
from allting.ai.models import AiModel, ModelProvider
from allting.assistants import service as assistants_service
from allting.assistants.models import Assistant
from allting.audit import service as audit
from allting.conversations import prompting
from allting.conversations.models import Citation, Conversation, Message
from allting.deps import Ctx
from allting.files import service as files_service
from allting.files.storage import get_storage
from allting.platform.db import DriverStatement, column_parameters, transaction, utcnow
from allting.platform.errors import Invalid, NotFound
from allting.platform.logging import get_logger
from allting.platform.tenancy import set_tenant
from allting.spaces import permissions as spaces_permissions
from allting.spaces import service as spaces_service
from allting.spaces.models import Space, SpaceMember

log = get_logger(__name__)
HISTORY_TURNS = 50
SOURCES_PER_QUESTION = 8


@dataclass
class PreparedQuestion:
    """Everything decided before the model is called; the stream only runs and records."""

    ctx: Ctx
    conversation_id: uuid.UUID
    conversation_title: str | None
    message_id: uuid.UUID
    question: str
    assistant_id: uuid.UUID
    space_id: uuid.UUID
    prompt_version: int
    messages: list[dict]
    call: ai_service.PreparedCall
    sources: list
    created_conversation: bool
    # The provider call, started before the question is stored so that its time to first token
    # overlaps the writes; `stream_answer` reads it, `abandon` stops it.
    opening: asyncio.Future[gateway.ChatStream]


@dataclass(frozen=True)
class Started:
    conversation_id: uuid.UUID
    conversation_title: str | None
    message_id: uuid.UUID
    question: str
    assistant_id: uuid.UUID
    model: dict


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Cited:
    citations: list[dict]


@dataclass(frozen=True)
class Finished:
    status: str
    usage: dict
    model: dict
    fallback_used: bool


@dataclass(frozen=True)
class Failed:
    code: str
    message: str
    partial: bool
    retry_after: float | None = None  # seconds the provider asked to wait, when it said


AnswerEvent = Started | Delta | Cited | Finished | Failed


# ---------------------------------------------------------------------------------------------
# Access


def _labelled(model, prefix: str) -> list:
    return [attribute.columns[0].label(prefix + attribute.key) for attribute in inspect(model).column_attrs]


def _detached(model, row, prefix: str):
    """An instance of `model` from the columns labelled with `prefix`, in no session: read only."""
    return model(**{attribute.key: row[prefix + attribute.key] for attribute in inspect(model).column_attrs})


_DefaultModel = aliased(AiModel)
# The assistant, its space, the caller's roles there as a member and the model that will answer
# (the one asked for, else the assistant's, else the tenant's default) with its provider account,
# in one statement compiled once: each of these was an ORM query of its own, together about 2 ms
# of CPU per question. Row-level security keeps all of it in the caller's tenant.
_ASKING = DriverStatement(
    select(
        *_labelled(Assistant, "assistant_"),
        *_labelled(Space, "space_"),
        *_labelled(AiModel, "model_"),
        *_labelled(ModelProvider, "provider_"),
        func.array(
            spaces_permissions.member_roles(bindparam("user_id", type_=Uuid()))
            .where(SpaceMember.space_id == Space.id)
            .scalar_subquery()
        ).label("member_roles"),
    )
    .select_from(Assistant)
    .join(Space, Space.id == Assistant.space_id)
    .outerjoin(
        AiModel,
        AiModel.id
        == func.coalesce(
            bindparam("model_id", type_=Uuid()),
            Assistant.model_id,
            select(_DefaultModel.id)
            .where(_DefaultModel.kind == "completion", _DefaultModel.is_default, _DefaultModel.is_enabled)
            .limit(1)
            .scalar_subquery(),
        ),
    )
    .outerjoin(ModelProvider, ModelProvider.id == AiModel.provider_id)
    .where(
        Assistant.tenant_id == bindparam("tenant", type_=Uuid()), Assistant.id == bindparam("assistant_id")
    )
)


async def _asking(
    db: AsyncSession, ctx: Ctx, assistant_id: uuid.UUID, model_id: uuid.UUID | None
) -> tuple[Assistant, Space, AiModel]:
    """The assistant to ask, if the caller may, its space, and the model that will answer."""
    if ctx.actor_type == "assistant_key" and ctx.assistant_id != assistant_id:
        raise NotFound("Assistant not found")
    row = await _ASKING.fetchrow(
        db, tenant=ctx.tenant_id, assistant_id=assistant_id, model_id=model_id, user_id=ctx.user_id
    )
    if row is None:
        raise NotFound("Assistant not found")
    assistant, space = _detached(Assistant, row, "assistant_"), _detached(Space, row, "space_")
    if ctx.actor_type != "assistant_key":  # an assistant's own key may ask it, whatever it is
        assistants_service.check_access(
            assistant, spaces_permissions.role_in(ctx, space, row["member_roles"]), "read"
        )
    model = _detached(AiModel, row, "model_") if row["model_id"] is not None else None
    if model is None or model.kind != "completion":
        raise Invalid(
            "No AI model is available for this assistant: an administrator must enable one under AI models",
            field="model_id",
            code="no_model",
        )
    model.provider = _detached(ModelProvider, row, "provider_") if row["provider_id"] is not None else None
    await spaces_service.check_model_allowed(db, space, model)
    return assistant, space, model


def _own_conversations(ctx: Ctx):
    if ctx.actor_type == "assistant_key":
        return select(Conversation).where(Conversation.api_key_id == ctx.api_key_id)
    return select(Conversation).where(Conversation.user_id == ctx.user_id)


async def get_conversation(db: AsyncSession, ctx: Ctx, conversation_id: uuid.UUID) -> Conversation:
    """One of the caller's own conversations; anyone else's answers 404."""
    conversation = await db.scalar(_own_conversations(ctx).where(Conversation.id == conversation_id))
    if conversation is None:
        raise NotFound("Conversation not found")
    return conversation


# ---------------------------------------------------------------------------------------------
# Preparing a question


async def _sources(db: AsyncSession, ctx: Ctx, assistant: Assistant, question: str) -> list:
    if not assistant.collection_ids and not assistant.website_ids:
        return []
    from allting.knowledge import retrieval

    return await retrieval.search(
        db,
        ctx,
        collection_ids=list(assistant.collection_ids),
        website_ids=list(assistant.website_ids),
        query=question,
        limit=SOURCES_PER_QUESTION,
    )


def _location(passage) -> str | None:
    parts = []
    if getattr(passage, "page", None):
        parts.append(f"page {passage.page}")
    if getattr(passage, "heading", None):
        parts.append(passage.heading)
    return ", ".join(parts) or getattr(passage, "url", None)


async def _history(db: AsyncSession, conversation_id: uuid.UUID) -> list[prompting.Turn]:
    rows = await db.execute(
        select(Message.question, Message.answer)
        .where(Message.conversation_id == conversation_id, Message.answer != "")
        .order_by(Message.created_at.desc())
        .limit(HISTORY_TURNS)
    )
    return [prompting.Turn(question, answer) for question, answer in rows]


async def _image_parts(files) -> list[dict]:
    parts = []
    for file in files:
        data = await get_storage().get(file.storage_key)
        encoded = base64.b64encode(data).decode()
        parts.append({"type": "image_url", "image_url": {"url": f"data:{file.mime_type};base64,{encoded}"}})
    return parts


_QUESTION_FIELDS = (
    "id",
    "tenant_id",
    "created_at",
    "updated_at",
    "question",
    "answer",
    "status",
    "model_id",
    "model_name",
    "provider_type",
    "fallback_used",
    "prompt_version",
    "file_ids",
)
_CONVERSATION_FIELDS = ("user_id", "assistant_id", "space_id", "api_key_id", "title")


# A new conversation and its first question in one statement (one round trip, no unit of work),
# compiled once. The conversation shares the question's tenant and timestamps; row-level security
# checks the tenant as for any other write.
_NEW_CONVERSATION_AND_QUESTION = DriverStatement(
    insert(Message.__table__)
    .values(
        conversation_id=bindparam("conversation_id"), **column_parameters(Message.__table__, _QUESTION_FIELDS)
    )
    .add_cte(
        insert(Conversation.__table__)
        .values(
            id=bindparam("conversation_id"),
            tenant_id=bindparam("tenant_id"),
            created_at=bindparam("created_at"),
            updated_at=bindparam("updated_at"),
            **column_parameters(Conversation.__table__, _CONVERSATION_FIELDS, "conversation_"),
        )
        .cte("new_conversation")
    )
)


async def prepare_question(
    db: AsyncSession,
    ctx: Ctx,
    *,
    question: str,
    assistant_id: uuid.UUID | None = None,
    conversation_id: uuid.UUID | None = None,
    file_ids: list[uuid.UUID] = (),
    model_id: uuid.UUID | None = None,
) -> PreparedQuestion:
    """Check access, model, budget and files, build the request, and record the question."""
    conversation = None
    if conversation_id is not None:
        conversation = await get_conversation(db, ctx, conversation_id)
        assistant_id = conversation.assistant_id
    assistant, space, model = await _asking(db, ctx, assistant_id, model_id)
    files = await files_service.get_files(db, ctx, list(file_ids)) if file_ids else []
    if files and not assistant.allow_attachments:
        raise Invalid("This assistant does not accept attached files", field="files")
    images = [file for file in files if files_service.is_image(file)]
    if images and not model.vision:
        raise Invalid(f"{model.display_name} cannot read images; choose a model with vision", field="files")

    params = dict(assistant.model_params or {})
    context_window = model.context_window or prompting.DEFAULT_CONTEXT_WINDOW
    answer_reserve = min(params.get("max_tokens") or prompting.DEFAULT_ANSWER_RESERVE, context_window // 4)
    budget = context_window - answer_reserve - prompting.estimate_tokens(question)
    if budget <= 0:
        raise Invalid("The question is too long for this model", field="question", code="context_too_long")
    passages = await _sources(db, ctx, assistant, question)
    sources = [
        prompting.Source(number, passage.title or "Untitled", _location(passage), passage.text)
        for number, passage in enumerate(passages, start=1)
    ]
    attachments = [prompting.Attachment(file.name, file.text) for file in files if file.text]
    system, used_sources = prompting.system_prompt(assistant.prompt, sources, attachments, budget * 2 // 3)
    budget -= prompting.estimate_tokens(system)
    history = prompting.trimmed_history(await _history(db, conversation.id), budget) if conversation else []
    messages = prompting.build_messages(
        system=system,
        history=history,
        question=question,
        image_parts=await _image_parts(images) if images else None,
    )
    estimated = sum(prompting.estimate_tokens(str(message["content"])) for message in messages)
    call = await ai_service.prepare_call(
        db, ctx, model, kind="completion", space_id=space.id, estimated_tokens=estimated
    )
    opening = asyncio.ensure_future(
        gateway.open_chat(
            call.target,
            messages,
            params={key: value for key, value in params.items() if value is not None},
            fallbacks=call.fallbacks,
        )
    )
    try:
        created = conversation is None
        now = utcnow()
        message_values = {
            "id": uuid.uuid4(),
            "tenant_id": ctx.tenant_id,
            "created_at": now,
            "updated_at": now,
            "question": question,
            "answer": "",
            "status": "streaming",
            "model_id": model.id,
            "model_name": model.name,
            "provider_type": model.provider_type,
            "fallback_used": False,
            "prompt_version": assistant.prompt_version,
            "file_ids": [file.id for file in files],
        }
        if created:
            conversation_id = uuid.uuid4()
            title = prompting.automatic_title(question)
            await _NEW_CONVERSATION_AND_QUESTION.execute(
                db,
                conversation_id=conversation_id,
                conversation_user_id=ctx.user_id,
                conversation_assistant_id=assistant.id,
                conversation_space_id=space.id,
                conversation_api_key_id=ctx.api_key_id if ctx.actor_type == "assistant_key" else None,
                conversation_title=title,
                **message_values,
            )
        else:
            conversation_id, title = conversation.id, conversation.title
            db.add(Message(conversation_id=conversation_id, **message_values))
            conversation.updated_at = now
            await db.flush()
    except BaseException:
        await asyncio.shield(_stop(opening))
        raise
    return PreparedQuestion(
        ctx=ctx,
        conversation_id=conversation_id,
        conversation_title=title,
        message_id=message_values["id"],
        question=question,
        assistant_id=assistant.id,
        space_id=space.id,
        prompt_version=assistant.prompt_version,
        messages=messages,
        call=call,
        sources=[(source, passages[source.number - 1]) for source in used_sources],
        created_conversation=created,
        opening=opening,
    )


async def _stop(opening: asyncio.Future[gateway.ChatStream]) -> None:
    """Stop a provider call whose answer will not be read, whether or not it has answered yet."""
    opening.cancel()
    await asyncio.wait([opening])
    if not opening.cancelled() and opening.exception() is None:
        await opening.result().aclose()


async def abandon(prepared: PreparedQuestion) -> None:
    """The question was not stored after all (its transaction failed): stop its provider call."""
    await _stop(prepared.opening)


# ---------------------------------------------------------------------------------------------
# Answering


def _model_info(model: AiModel) -> dict:
    return {
        "id": str(model.id),
        "name": model.name,
        "display_name": model.display_name,
        "provider_type": model.provider_type,
    }


def _citations(prepared: PreparedQuestion, answer: str) -> list[dict]:
    by_number = {source.number: (source, passage) for source, passage in prepared.sources}
    cited = []
    for number in prompting.cited_numbers(answer, len(prepared.sources)):
        source, passage = by_number[number]
        cited.append(
            {
                "ref": number,
                "chunk_id": str(passage.chunk_id),
                "document_id": str(passage.document_id),
                "title": source.title,
                "url": getattr(passage, "url", None),
                "location": source.location,
                "text": passage.text,
                "score": passage.score,
            }
        )
    return cited


@dataclass
class _Outcome:
    answer: str = ""
    status: str = "incomplete"
    error: str | None = None
    usage: gateway.Usage | None = None
    served_by_index: int = 0
    citations: list[dict] = field(default_factory=list)
    recorded: bool = False


_FINISHED_FIELDS = (
    "answer",
    "status",
    "error",
    "model_id",
    "model_name",
    "provider_type",
    "fallback_used",
    "prompt_tokens",
    "completion_tokens",
    "completed_at",
    "updated_at",
)
# The answer and its usage in one statement (one round trip), compiled once.
_FINISH_MESSAGE_AND_RECORD_USAGE = DriverStatement(
    ai_service.USAGE_INSERT.add_cte(
        update(Message.__table__)
        .where(Message.__table__.c.id == bindparam("message_id"))
        .values(column_parameters(Message.__table__, _FINISHED_FIELDS))
        .cte("finished_message")
    )
)


async def _record(prepared: PreparedQuestion, outcome: _Outcome, latency_ms: int) -> None:
    """Store the answer, its citations and its usage in one transaction, exactly once."""
    if outcome.recorded:
        return
    outcome.recorded = True
    model = prepared.call.model_for(outcome.served_by_index)
    target = (
        prepared.call.target
        if outcome.served_by_index == 0
        else prepared.call.fallbacks[outcome.served_by_index - 1]
    )
    usage = outcome.usage or gateway.Usage(
        sum(prompting.estimate_tokens(str(m["content"])) for m in prepared.messages),
        prompting.estimate_tokens(outcome.answer),
        estimated=True,
    )
    finished_at = utcnow()
    async with transaction() as db:
        await set_tenant(db, prepared.ctx.tenant_id)
        for citation in outcome.citations:
            db.add(
                Citation(
                    message_id=prepared.message_id,
                    ref=citation["ref"],
                    chunk_id=uuid.UUID(citation["chunk_id"]),
                    document_id=uuid.UUID(citation["document_id"]),
                    title=citation["title"],
                    url=citation["url"],
                    location=citation["location"],
                    text=citation["text"],
                    score=citation["score"],
                )
            )
        await _FINISH_MESSAGE_AND_RECORD_USAGE.execute(
            db,
            message_id=prepared.message_id,
            answer=outcome.answer,
            status=outcome.status,
            error=outcome.error,
            model_id=model.id,
            model_name=model.name,
            provider_type=model.provider_type,
            fallback_used=outcome.served_by_index > 0,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            completed_at=finished_at,
            updated_at=finished_at,
            **ai_service.usage_row(
                prepared.ctx,
                model,
                usage,
                target=target,
                latency_ms=latency_ms,
                space_id=prepared.space_id,
                assistant_id=prepared.assistant_id,
                outcome="success" if outcome.status == "complete" else outcome.status,
            ),
        )


async def stream_answer(prepared: PreparedQuestion) -> AsyncIterator[AnswerEvent]:
    """Yield the answer as it is written. Stopping early (client gone) cancels the provider request;
    whatever happens, the answer is stored exactly once, partial answers marked incomplete."""
    started = time.perf_counter()
    outcome = _Outcome()
    chat = None
    try:
        yield Started(
            prepared.conversation_id,
            prepared.conversation_title,
            prepared.message_id,
            prepared.question,
            prepared.assistant_id,
            _model_info(prepared.call.model),
        )
        chat = await prepared.opening
        async with contextlib.aclosing(chat.events()) as stream:
            async for event in stream:
                if isinstance(event, gateway.TextDelta):
                    outcome.answer += event.text
                    yield Delta(event.text)
                else:
                    outcome.usage = event.usage
                    outcome.served_by_index = event.served_by_index
        outcome.status = "complete"
        outcome.citations = _citations(prepared, outcome.answer)
        if outcome.citations:
            yield Cited(outcome.citations)
        await _record(prepared, outcome, int((time.perf_counter() - started) * 1000))
        model = prepared.call.model_for(outcome.served_by_index)
        yield Finished(
            "complete",
            {
                "prompt_tokens": outcome.usage.prompt_tokens,
                "completion_tokens": outcome.usage.completion_tokens,
            },
            _model_info(model),
            outcome.served_by_index > 0,
        )
    except ProviderError as exc:
        outcome.status = "incomplete" if outcome.answer else "error"
        outcome.error = exc.message
        await _record(prepared, outcome, int((time.perf_counter() - started) * 1000))
        retry_after = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
        yield Failed(exc.code, exc.message, partial=bool(outcome.answer), retry_after=retry_after)
    finally:
        if chat is None:
            await asyncio.shield(_stop(prepared.opening))
        if not outcome.recorded:
            outcome.error = outcome.error or "The answer was stopped before it was finished"
            await asyncio.shield(_record(prepared, outcome, int((time.perf_counter() - started) * 1000)))


async def answer_at_once(prepared: PreparedQuestion) -> dict:
    """Run the whole answer and return it with its citations, model and usage."""
    result = {
        "answer": "",
        "citations": [],
        "status": "error",
        "usage": {},
        "model": None,
        "fallback_used": False,
    }
    async for event in stream_answer(prepared):
        if isinstance(event, Delta):
            result["answer"] += event.text
        elif isinstance(event, Cited):
            result["citations"] = event.citations
        elif isinstance(event, Finished):
            result.update(
                status=event.status, usage=event.usage, model=event.model, fallback_used=event.fallback_used
            )
        elif isinstance(event, Failed):
            result.update(
                status="incomplete" if event.partial else "error", error=event.message, code=event.code
            )
    return result


# ---------------------------------------------------------------------------------------------
# Finding conversations again


async def list_conversations(
    db: AsyncSession,
    ctx: Ctx,
    *,
    limit: int,
    offset: int,
    search: str | None = None,
    assistant_id: uuid.UUID | None = None,
) -> tuple[list[Conversation], int]:
    """The caller's conversations, newest activity first; `search` matches titles and message text."""
    query = _own_conversations(ctx)
    if assistant_id:
        query = query.where(Conversation.assistant_id == assistant_id)
    if search:
        pattern = f"%{search.lower()}%"
        in_messages = select(Message.conversation_id).where(
            or_(func.lower(Message.question).like(pattern), func.lower(Message.answer).like(pattern))
        )
        query = query.where(
            or_(func.lower(Conversation.title).like(pattern), Conversation.id.in_(in_messages))
        )
    total = await db.scalar(select(func.count()).select_from(query.subquery()))
    rows = await db.scalars(query.order_by(Conversation.updated_at.desc()).limit(limit).offset(offset))
    return list(rows), total or 0


async def get_messages(
    db: AsyncSession, ctx: Ctx, conversation_id: uuid.UUID
) -> tuple[Conversation, list, dict]:
    conversation = await get_conversation(db, ctx, conversation_id)
    messages = list(
        await db.scalars(
            select(Message).where(Message.conversation_id == conversation.id).order_by(Message.created_at)
        )
    )
    citations: dict[uuid.UUID, list[Citation]] = {message.id: [] for message in messages}
    for citation in await db.scalars(
        select(Citation).where(Citation.message_id.in_(citations)).order_by(Citation.ref)
    ):
        citations[citation.message_id].append(citation)
    return conversation, messages, citations


async def rename_conversation(
    db: AsyncSession, ctx: Ctx, conversation_id: uuid.UUID, title: str
) -> Conversation:
    conversation = await get_conversation(db, ctx, conversation_id)
    conversation.title = title
    await db.flush()
    return conversation


async def delete_conversation(db: AsyncSession, ctx: Ctx, conversation_id: uuid.UUID) -> None:
    conversation = await get_conversation(db, ctx, conversation_id)
    await db.delete(conversation)
    await audit.record(db, ctx, "conversation.deleted", target_type="conversation", target_id=conversation.id)


async def give_feedback(
    db: AsyncSession,
    ctx: Ctx,
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    value: int,
    comment: str | None,
) -> Message:
    conversation = await get_conversation(db, ctx, conversation_id)
    message = await db.scalar(
        select(Message).where(Message.id == message_id, Message.conversation_id == conversation.id)
    )
    if message is None:
        raise NotFound("Message not found")
    message.feedback_value = value
    message.feedback_comment = comment
    await db.flush()
    return message


# ---------------------------------------------------------------------------------------------
# Retention


async def purge_expired(db: AsyncSession) -> int:
    """Delete conversations idle longer than their assistant's, else space's, else tenant's retention.

    Runs on a system session across tenants; every deletion is audited in its tenant.
    """
    from allting.tenants.models import Tenant

    tenant_days = Tenant.settings["retention_days"].astext.cast(Integer)
    days = func.coalesce(Assistant.retention_days, Space.retention_days, tenant_days)
    expired = (
        await db.execute(
            select(Conversation.id, Conversation.tenant_id, Conversation.user_id, days)
            .join(Assistant, Assistant.id == Conversation.assistant_id)
            .join(Space, Space.id == Conversation.space_id)
            .join(Tenant, Tenant.id == Conversation.tenant_id)
            .where(
                days.is_not(None), Conversation.updated_at < func.now() - func.make_interval(0, 0, 0, days)
            )
            .limit(10_000)
        )
    ).all()
    for conversation_id, tenant_id, user_id, retention in expired:
        await audit.record_event(
            db,
            tenant_id=tenant_id,
            actor_type="system",
            action="conversation.expired",
            target_type="conversation",
            target_id=conversation_id,
            changes={"retention_days": retention, "user_id": str(user_id) if user_id else None},
        )
    if expired:
        await db.execute(delete(Conversation).where(Conversation.id.in_([row[0] for row in expired])))
    return len(expired)
