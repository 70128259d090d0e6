"""Every page router, in one list (the API routers are in allting.routes)."""

from __future__ import annotations

import importlib

from fastapi import APIRouter

PAGE_MODULES = (
    "allting.web.web",
    "allting.conversations.web",
    "allting.spaces.web",
    "allting.assistants.web",
    "allting.ai.web",
    "allting.users.web",
    "allting.audit.web",
)


def page_routers() -> list[APIRouter]:
    routers = []
    for name in PAGE_MODULES:
        try:
            routers.append(importlib.import_module(name).router)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return routers
