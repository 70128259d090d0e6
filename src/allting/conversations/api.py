"""Conversations over HTTP: our named-event SSE stream, and the reference system's session endpoints."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from allting.assistants import service as assistants_service
from allting.conversations import service
from allting.conversations.schemas import (
    AskRequest,
    AskResponse,
    CitationRead,
    ConversationDetail,
    ConversationPage,
    ConversationRead,
    ConversationRename,
    Feedback,
    MessageRead,
    ModelUsed,
    SessionAsk,
    Usage,
)
from allting.deps import Ctx, CurrentCtx, get_ctx
from allting.platform.db import DbSession
from allting.platform.pagination import Limit, Offset

router = APIRouter(tags=["conversations"])
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def sse(event: str | None, data: dict) -> str:
    """One server-sent event. The data is JSON on one line, so no model text can start a new event."""
    body = orjson.dumps(data, default=str).decode()
    return (f"event: {event}\n" if event else "") + f"data: {body}\n\n"


def _event_payload(event: service.AnswerEvent) -> tuple[str, dict]:
    match event:
        case service.Started():
            return "first_chunk", {
                "conversation_id": event.conversation_id,
                "session_id": event.conversation_id,
                "title": event.conversation_title,
                "question_id": event.message_id,
                "question": event.question,
                "assistant_id": event.assistant_id,
                "model": event.model,
            }
        case service.Delta():
            return "text", {"answer": event.text}
        case service.Cited():
            return "citations", {"citations": event.citations}
        case service.Finished():
            return "done", {
                "status": event.status,
                "usage": event.usage,
                "model": event.model,
                "fallback_used": event.fallback_used,
            }
        case service.Failed():
            return "error", {
                "code": event.code,
                "error": event.message,
                "partial": event.partial,
                "retry_after": event.retry_after,
            }


async def _named_events(prepared: service.PreparedQuestion) -> AsyncIterator[str]:
    async for event in service.stream_answer(prepared):
        yield sse(*_event_payload(event))


async def _store_question(db: DbSession, prepared: service.PreparedQuestion) -> None:
    """Commit the question before its answer streams (the answer is stored in its own transaction),
    stopping the already started provider call if the commit fails."""
    try:
        await db.commit()
    except BaseException:
        await service.abandon(prepared)
        raise


def _ask_response(prepared: service.PreparedQuestion, result: dict) -> AskResponse:
    model = result.get("model") or {}
    return AskResponse(
        conversation_id=prepared.conversation_id,
        session_id=prepared.conversation_id,
        message_id=prepared.message_id,
        question=prepared.question,
        answer=result["answer"],
        status=result["status"],
        citations=[CitationRead(**citation) for citation in result["citations"]],
        model=ModelUsed(id=model.get("id"), name=model.get("name"), provider_type=model.get("provider_type")),
        usage=Usage(
            prompt_tokens=result["usage"].get("prompt_tokens"),
            completion_tokens=result["usage"].get("completion_tokens"),
        ),
        fallback_used=result["fallback_used"],
    )


@router.post(
    "/conversations/",
    response_model=AskResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "With `stream: true`: events first_chunk, text, citations, done, "
            "error; each `data` is JSON",
        }
    },
)
async def ask(data: AskRequest, db: DbSession, ctx: CurrentCtx):
    """Ask an assistant (new conversation) or continue a conversation."""
    prepared = await service.prepare_question(
        db,
        ctx,
        question=data.question,
        assistant_id=data.assistant_id,
        conversation_id=data.conversation_id,
        file_ids=data.files,
        model_id=data.model_id,
    )
    await _store_question(db, prepared)
    if data.stream:
        return StreamingResponse(_named_events(prepared), media_type="text/event-stream", headers=SSE_HEADERS)
    return _ask_response(prepared, await service.answer_at_once(prepared))


def _conversation_read(conversation) -> ConversationRead:
    return ConversationRead(
        id=conversation.id,
        title=conversation.title,
        assistant_id=conversation.assistant_id,
        space_id=conversation.space_id,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
    )


@router.get("/conversations/", response_model=ConversationPage)
async def list_conversations(
    db: DbSession,
    ctx: CurrentCtx,
    limit: Limit = 30,
    offset: Offset = 0,
    search: str | None = None,
    assistant_id: uuid.UUID | None = None,
) -> ConversationPage:
    items, total = await service.list_conversations(
        db, ctx, limit=limit, offset=offset, search=search, assistant_id=assistant_id
    )
    return ConversationPage(
        items=[_conversation_read(item) for item in items], total=total, limit=limit, offset=offset
    )


def _message_read(message, citations) -> MessageRead:
    return MessageRead(
        id=message.id,
        question=message.question,
        answer=message.answer,
        status=message.status,
        error=message.error,
        created_at=message.created_at,
        completed_at=message.completed_at,
        model=ModelUsed(id=message.model_id, name=message.model_name, provider_type=message.provider_type),
        fallback_used=message.fallback_used,
        prompt_version=message.prompt_version,
        usage=Usage(prompt_tokens=message.prompt_tokens, completion_tokens=message.completion_tokens),
        file_ids=message.file_ids or [],
        citations=[CitationRead.model_validate(c) for c in citations],
        feedback_value=message.feedback_value,
        feedback_comment=message.feedback_comment,
    )


@router.get("/conversations/{conversation_id}/", response_model=ConversationDetail)
async def get_conversation(conversation_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> ConversationDetail:
    conversation, messages, citations = await service.get_messages(db, ctx, conversation_id)
    return ConversationDetail(
        **_conversation_read(conversation).model_dump(),
        messages=[_message_read(message, citations[message.id]) for message in messages],
    )


@router.patch("/conversations/{conversation_id}/", response_model=ConversationRead)
async def rename_conversation(
    conversation_id: uuid.UUID, data: ConversationRename, db: DbSession, ctx: CurrentCtx
) -> ConversationRead:
    return _conversation_read(await service.rename_conversation(db, ctx, conversation_id, data.title))


@router.delete("/conversations/{conversation_id}/", status_code=204)
async def delete_conversation(conversation_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_conversation(db, ctx, conversation_id)
    return Response(status_code=204)


@router.post("/conversations/{conversation_id}/messages/{message_id}/feedback", status_code=204)
async def give_feedback(
    conversation_id: uuid.UUID, message_id: uuid.UUID, data: Feedback, db: DbSession, ctx: CurrentCtx
) -> Response:
    await service.give_feedback(db, ctx, conversation_id, message_id, data.value, data.comment)
    return Response(status_code=204)


# The reference system's session endpoints (assistant API keys work here and only here).


async def get_session_ctx(request: Request, db: DbSession) -> Ctx:
    key = request.headers.get("x-api-key", "")
    if key.startswith(assistants_service.ASSISTANT_KEY_PREFIX):
        ctx = await assistants_service.authenticate_assistant_key(db, key)
        ctx.client_address = getattr(request.state, "client_address", None)
        ctx.correlation_id = getattr(request.state, "correlation_id", None)
        request.state.ctx = ctx
        return ctx
    return await get_ctx(request, db)


SessionCtx = Annotated[Ctx, Depends(get_session_ctx)]


def _reference_answer(
    prepared: service.PreparedQuestion, answer: str, citations: list[dict], model: dict | None
) -> dict:
    return {
        "session_id": str(prepared.conversation_id),
        "question": prepared.question,
        "answer": answer,
        "files": [],
        "generated_files": [],
        "tools": {"assistants": []},
        "web_search_references": [],
        "references": [
            {
                "id": citation["document_id"],
                "created_at": None,
                "updated_at": None,
                "group_id": None,
                "website_id": None,
                "score": citation["score"],
                "metadata": {
                    "url": citation["url"],
                    "title": citation["title"],
                    "embedding_model_id": None,
                    "size": len(citation["text"]),
                },
            }
            for citation in citations
        ],
        "model": {"id": model["id"], "name": model["name"], "nickname": model.get("display_name")}
        if model
        else None,
    }


async def _reference_events(prepared: service.PreparedQuestion) -> AsyncIterator[str]:
    model = None
    async for event in service.stream_answer(prepared):
        if isinstance(event, service.Started):
            model = event.model
        elif isinstance(event, service.Delta):
            yield sse(None, _reference_answer(prepared, event.text, [], model))
        elif isinstance(event, service.Cited):
            yield sse(None, _reference_answer(prepared, "", event.citations, model))
        elif isinstance(event, service.Failed):
            yield sse(
                "error",
                {
                    "session_id": str(prepared.conversation_id),
                    "error": event.message,
                    "error_code": event.code,
                },
            )


async def _ask_session(
    assistant_id: uuid.UUID, session_id: uuid.UUID | None, data: SessionAsk, db: DbSession, ctx: Ctx
):
    if session_id is not None:
        conversation = await service.get_conversation(db, ctx, session_id)
        if conversation.assistant_id != assistant_id:
            await service.get_conversation(db, ctx, uuid.uuid4())
    prepared = await service.prepare_question(
        db,
        ctx,
        question=data.question,
        assistant_id=None if session_id else assistant_id,
        conversation_id=session_id,
        file_ids=data.files,
    )
    await _store_question(db, prepared)
    if data.stream:
        return StreamingResponse(
            _reference_events(prepared), media_type="text/event-stream", headers=SSE_HEADERS
        )
    result = await service.answer_at_once(prepared)
    return _reference_answer(prepared, result["answer"], result["citations"], result["model"])


@router.post("/assistants/{assistant_id}/sessions/")
async def ask_assistant(assistant_id: uuid.UUID, data: SessionAsk, db: DbSession, ctx: SessionCtx):
    """Start a session with an assistant (reference wire format; `stream` sends unnamed SSE messages)."""
    return await _ask_session(assistant_id, data.session_id, data, db, ctx)


@router.post("/assistants/{assistant_id}/sessions/{session_id}/")
async def continue_session(
    assistant_id: uuid.UUID, session_id: uuid.UUID, data: SessionAsk, db: DbSession, ctx: SessionCtx
):
    return await _ask_session(assistant_id, session_id, data, db, ctx)
