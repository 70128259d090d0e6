from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Response, UploadFile
from fastapi.params import File as FileParam

from allting.deps import CurrentCtx
from allting.files import service
from allting.files.models import File
from allting.files.schemas import FileRead
from allting.platform.db import DbSession

router = APIRouter(tags=["files"])


def file_read(file: File) -> FileRead:
    return FileRead(
        id=file.id,
        name=file.name,
        mime_type=file.mime_type,
        size=file.size,
        created_at=file.created_at,
        has_text=bool(file.text),
        is_image=service.is_image(file),
    )


@router.post("/files/", response_model=FileRead, status_code=201)
async def upload_file(
    upload: Annotated[UploadFile, FileParam(alias="file")], db: DbSession, ctx: CurrentCtx
) -> FileRead:
    """Upload a file to use in a question (documents up to 20 MB, images up to 10 MB)."""
    data = await upload.read(service.MAX_ATTACHMENT_BYTES + 1)
    return file_read(await service.upload_file(db, ctx, upload.filename or "attachment", data))


@router.get("/files/", response_model=list[FileRead])
async def list_files(db: DbSession, ctx: CurrentCtx) -> list[FileRead]:
    return [file_read(file) for file in await service.list_files(db, ctx)]


@router.get("/files/{file_id}/", response_model=FileRead)
async def get_file(file_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> FileRead:
    return file_read(await service.get_file(db, ctx, file_id))


@router.get("/files/{file_id}/download")
async def download_file(file_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    file, data = await service.read_original(db, ctx, file_id)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(file.name)}",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.delete("/files/{file_id}/", status_code=204)
async def delete_file(file_id: uuid.UUID, db: DbSession, ctx: CurrentCtx) -> Response:
    await service.delete_file(db, ctx, file_id)
    return Response(status_code=204)
