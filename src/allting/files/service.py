"""Files attached to questions: checked by content, text extracted once, original kept in storage."""

from __future__ import annotations

import hashlib
import uuid

import anyio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from allting.audit import service as audit
from allting.deps import Ctx
from allting.files.models import File
from allting.files.storage import get_storage, new_key
from allting.knowledge import parsing
from allting.platform.errors import Forbidden, NotFound, PayloadTooLarge, UnsupportedMediaType

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
MAX_IMAGE_BYTES = 10 * 1024 * 1024
ATTACHMENT_LIMITS = parsing.ParseLimits(
    max_bytes=MAX_ATTACHMENT_BYTES, max_pages=500, max_rows=20_000, max_seconds=30
)


def is_image(file: File) -> bool:
    return file.mime_type in IMAGE_TYPES


async def upload_file(db: AsyncSession, ctx: Ctx, name: str, data: bytes) -> File:
    """Store an attachment; documents get their text extracted now so questions stay fast."""
    if ctx.user_id is None:
        raise Forbidden("Files are uploaded by signed-in people", code="user_required")
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise PayloadTooLarge(
            f"Attachments can be at most {MAX_ATTACHMENT_BYTES // 1024**2} MB",
            details=[{"field": "file", "message": "too large"}],
        )
    mime = parsing.detect_type(data, name)
    text = None
    if mime in IMAGE_TYPES:
        if len(data) > MAX_IMAGE_BYTES:
            raise PayloadTooLarge(f"Images can be at most {MAX_IMAGE_BYTES // 1024**2} MB")
    elif mime in parsing.AUDIO_TYPES:
        raise UnsupportedMediaType(
            "Audio cannot be attached to a question; add it to a collection to have it transcribed",
            details={"found_type": mime},
        )
    else:
        parsing.require_allowed(mime)
        document = await anyio.to_thread.run_sync(lambda: parsing.parse(data, mime, limits=ATTACHMENT_LIMITS))
        text = "\n\n".join(section.text for section in document.sections)
    key = new_key(ctx.tenant_id, "attachments")
    await get_storage().put(key, data)
    file = File(
        user_id=ctx.user_id,
        name=name[:255] or "attachment",
        mime_type=mime,
        size=len(data),
        checksum=hashlib.sha256(data).hexdigest(),
        storage_key=key,
        text=text,
    )
    db.add(file)
    await db.flush()
    await audit.record(
        db,
        ctx,
        "file.uploaded",
        target_type="file",
        target_id=file.id,
        changes={"name": file.name, "type": mime, "size": file.size},
    )
    return file


async def get_file(db: AsyncSession, ctx: Ctx, file_id: uuid.UUID) -> File:
    file = await db.scalar(select(File).where(File.id == file_id, File.user_id == ctx.user_id))
    if file is None:
        raise NotFound("File not found")
    return file


async def get_files(db: AsyncSession, ctx: Ctx, file_ids: list[uuid.UUID]) -> list[File]:
    """The caller's own files, in the order asked; any unknown id is a 404 for the whole request."""
    files = {
        file.id: file
        for file in await db.scalars(select(File).where(File.id.in_(file_ids), File.user_id == ctx.user_id))
    }
    missing = [file_id for file_id in file_ids if file_id not in files]
    if missing:
        raise NotFound(f"File not found: {missing[0]}")
    return [files[file_id] for file_id in file_ids]


async def list_files(db: AsyncSession, ctx: Ctx) -> list[File]:
    return list(
        await db.scalars(
            select(File).where(File.user_id == ctx.user_id).order_by(File.created_at.desc()).limit(200)
        )
    )


async def read_original(db: AsyncSession, ctx: Ctx, file_id: uuid.UUID) -> tuple[File, bytes]:
    file = await get_file(db, ctx, file_id)
    return file, await get_storage().get(file.storage_key)


async def delete_file(db: AsyncSession, ctx: Ctx, file_id: uuid.UUID) -> None:
    file = await get_file(db, ctx, file_id)
    await db.delete(file)
    await db.flush()
    await get_storage().delete(file.storage_key)
    await audit.record(
        db, ctx, "file.deleted", target_type="file", target_id=file.id, changes={"name": file.name}
    )
