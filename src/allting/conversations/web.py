"""The chat pages: the start page with the personal (or a chosen) assistant and the conversation list."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from allting.ai.errors import ProviderError
from allting.assistants import service as assistants_service
from allting.conversations import service
from allting.platform.db import DbSession
from allting.spaces import service as spaces_service
from allting.web.errors import translate_error
from allting.web.rendering import gettext_for, parse_uuid, render
from allting.web.web import Csrf, SignedIn, form_change

router = APIRouter(include_in_schema=False)
# A failed answer keeps the provider error's message; its code finds the message in the page language.
_PROVIDER_CODES = {cls.default_message: cls.code for cls in (ProviderError, *ProviderError.__subclasses__())}


_STOPPED = "The answer was stopped before it was finished"


def _failure_texts(language: str, messages: list) -> dict:
    """Why answers failed (wholly, or part-way through), in the page's language; stopped ones are not failures."""
    return {
        message.id: translate_error(language, _PROVIDER_CODES.get(message.error), message.error)
        for message in messages
        if message.error
        and (
            message.status in ("error", "failed")
            or (message.status == "incomplete" and message.error != _STOPPED)
        )
    }


@router.get("/", response_class=HTMLResponse)
async def chat_page(
    request: Request,
    db: DbSession,
    page: SignedIn,
    assistant: str | None = None,
    c: str | None = None,
    q: str | None = None,
):
    ctx = page.ctx
    conversation = None
    messages, citations = [], {}
    conversation_id = parse_uuid(c)
    if conversation_id is not None:
        conversation, messages, citations = await service.get_messages(db, ctx, conversation_id)
    assistant_id = conversation.assistant_id if conversation else parse_uuid(assistant)
    if assistant_id is not None:
        chosen, space, _role = await assistants_service.get_assistant_for(db, ctx, assistant_id)
    else:
        space = await spaces_service.ensure_personal_space(db, ctx)
        chosen = await spaces_service.default_assistant(db, space)
    models = await spaces_service.allowed_models(db, space, kind="completion")
    conversations, total = await service.list_conversations(
        db, ctx, limit=50, offset=0, search=(q or "").strip()[:200] or None
    )
    return render(
        request,
        "conversations/chat.html",
        {
            "nav": "chat",
            "assistant": chosen,
            "space": space,
            "models": models,
            "conversation": conversation,
            "messages": messages,
            "citations": citations,
            "failures": _failure_texts(page.language, messages),
            # "Answered by" names a model as the model list does.
            "model_names": {model.id: model.display_name or model.name for model in models},
            "conversations": conversations,
            "total": total,
            "search": q or "",
        },
    )


@router.post("/conversations/{conversation_id}/rename", dependencies=[Csrf])
async def rename_conversation_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    conversation_id: uuid.UUID,
    title: Annotated[str, Form(max_length=200)] = "",
):
    _ = gettext_for(page.language)
    return await form_change(
        request,
        db,
        f"/?c={conversation_id}",
        lambda: service.rename_conversation(db, page.ctx, conversation_id, title.strip() or _("Untitled")),
        _("The conversation is renamed."),
    )


@router.post("/conversations/{conversation_id}/delete", dependencies=[Csrf])
async def delete_conversation_form(
    request: Request, db: DbSession, page: SignedIn, conversation_id: uuid.UUID
):
    _ = gettext_for(page.language)
    return await form_change(
        request,
        db,
        "/",
        lambda: service.delete_conversation(db, page.ctx, conversation_id),
        _("The conversation is deleted."),
    )
