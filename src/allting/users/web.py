"""Administration of people: list, create with a role, disable and enable."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from allting.platform.db import DbSession
from allting.platform.errors import AppError
from allting.users import service
from allting.users.schemas import UserCreate, UserUpdate
from allting.web.rendering import gettext_for, render
from allting.web.web import Csrf, SignedIn, done, error_text

router = APIRouter(include_in_schema=False)


@router.get("/admin/users", response_class=HTMLResponse)
async def users_page(request: Request, db: DbSession, page: SignedIn, q: str | None = None):
    page.ctx.require("admin")
    users, total = await service.list_users(
        db, page.ctx, limit=200, offset=0, search=(q or "").strip()[:200] or None
    )
    return render(
        request,
        "users/admin.html",
        {
            "nav": "admin",
            "admin_tab": "users",
            "users": users,
            "total": total,
            "search": q or "",
            "created": None,
        },
    )


@router.post("/admin/users", dependencies=[Csrf])
async def create_user_form(
    request: Request,
    db: DbSession,
    page: SignedIn,
    email: Annotated[str, Form(max_length=320)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form()] = "member",
):
    _ = gettext_for(page.language)
    try:
        data = UserCreate(email=email.strip(), name=name.strip() or None, role=role)
        async with db.begin_nested():
            user, password = await service.create_user(db, page.ctx, data)
    except AppError as exc:
        return done(request, "/admin/users", error_text(request, exc), "error")
    except ValueError:
        return done(request, "/admin/users", _("Check the e-mail address."), "error")
    users, total = await service.list_users(db, page.ctx, limit=200, offset=0)
    # The generated password is shown once, in this response only.
    return render(
        request,
        "users/admin.html",
        {
            "nav": "admin",
            "admin_tab": "users",
            "users": users,
            "total": total,
            "search": "",
            "created": {"email": user.email, "password": password},
        },
    )


@router.post("/admin/users/{user_id}/state", dependencies=[Csrf])
async def set_user_state_form(
    request: Request, db: DbSession, page: SignedIn, user_id: uuid.UUID, state: Annotated[str, Form()] = ""
):
    _ = gettext_for(page.language)
    if state not in ("active", "disabled"):
        return done(request, "/admin/users", _("Check the values and try again."), "error")
    try:
        async with db.begin_nested():
            await service.update_user(db, page.ctx, user_id, UserUpdate(state=state))
    except AppError as exc:
        return done(request, "/admin/users", error_text(request, exc), "error")
    message = _("The account is disabled.") if state == "disabled" else _("The account is enabled.")
    return done(request, "/admin/users", message)
