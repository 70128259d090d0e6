from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

_REFERENCE_STATUS = {
    "queued": "queued",
    "running": "in progress",
    "succeeded": "complete",
    "failed": "failed",
    "cancelled": "failed",
}


class JobRead(BaseModel):
    """A job; `status` is ours, the reference system's JobPublic fields are included for its clients."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    task: str
    name: str | None
    status: str
    progress: int
    attempts: int
    max_attempts: int
    error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @computed_field
    def result_location(self) -> str | None:
        return (self.result or {}).get("location")

    @computed_field
    def reference_status(self) -> str:
        return _REFERENCE_STATUS[self.status]


class JobList(BaseModel):
    items: list[JobRead]
    count: int
