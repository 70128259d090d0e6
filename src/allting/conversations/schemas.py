from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FileRef(BaseModel):
    id: uuid.UUID


def _file_ids(value: list) -> list:
    return [item["id"] if isinstance(item, dict) else item for item in value or []]


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=100_000)
    assistant_id: uuid.UUID | None = None
    conversation_id: uuid.UUID | None = Field(default=None, validation_alias="conversation_id")
    session_id: uuid.UUID | None = Field(
        default=None, description="Reference-compatible alias of conversation_id"
    )
    files: list[uuid.UUID] = Field(default_factory=list, max_length=10)
    model_id: uuid.UUID | None = Field(
        default=None, description="A model allowed in the space, for this question"
    )
    stream: bool = False

    _files = field_validator("files", mode="before")(_file_ids)

    @model_validator(mode="after")
    def _one_target(self) -> AskRequest:
        self.conversation_id = self.conversation_id or self.session_id
        if (self.assistant_id is None) == (self.conversation_id is None):
            raise ValueError("give exactly one of assistant_id and conversation_id")
        return self


class SessionAsk(BaseModel):
    """The reference system's AskAssistant body."""

    question: str = Field(min_length=1, max_length=100_000)
    session_id: uuid.UUID | None = None
    files: list[uuid.UUID] = Field(default_factory=list, max_length=10)
    stream: bool = False

    _files = field_validator("files", mode="before")(_file_ids)


class CitationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    ref: int
    chunk_id: uuid.UUID | None
    document_id: uuid.UUID | None
    title: str | None
    url: str | None
    location: str | None
    text: str
    score: float | None


class ModelUsed(BaseModel):
    id: uuid.UUID | None
    name: str | None
    provider_type: str | None


class Usage(BaseModel):
    prompt_tokens: int | None
    completion_tokens: int | None


class MessageRead(BaseModel):
    id: uuid.UUID
    question: str
    answer: str
    status: Literal["streaming", "complete", "incomplete", "error"]
    error: str | None
    created_at: datetime
    completed_at: datetime | None
    model: ModelUsed
    fallback_used: bool
    prompt_version: int | None
    usage: Usage
    file_ids: list[uuid.UUID]
    citations: list[CitationRead]
    feedback_value: int | None
    feedback_comment: str | None


class AskResponse(BaseModel):
    conversation_id: uuid.UUID
    session_id: uuid.UUID
    message_id: uuid.UUID
    question: str
    answer: str
    status: str
    citations: list[CitationRead]
    model: ModelUsed
    usage: Usage
    fallback_used: bool


class ConversationRead(BaseModel):
    id: uuid.UUID
    title: str | None
    assistant_id: uuid.UUID
    space_id: uuid.UUID
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationRead):
    messages: list[MessageRead]


class ConversationPage(BaseModel):
    items: list[ConversationRead]
    total: int
    limit: int
    offset: int


class ConversationRename(BaseModel):
    title: str = Field(min_length=1, max_length=200)


class Feedback(BaseModel):
    value: Literal[-1, 1]
    comment: str | None = Field(default=None, max_length=2000)
