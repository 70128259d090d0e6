"""Collections and documents over the HTTP API: lifecycle, upload checks, roles and tenant isolation."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from allting.files.storage import get_storage
from allting.knowledge.models import Document
from allting.platform.db import system_transaction

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def _without_cid(response) -> tuple:
    body = response.json()
    body.pop("correlation_id", None)
    return response.status_code, body


async def test_collection_lifecycle_with_the_default_embedding_model(org, space, knowledge):
    client = org.owner.client
    created = await knowledge.create_collection(client, space["id"], "Policyer", description="Styrande")
    assert created["embedding_model"]["name"] == "all-MiniLM-L6-v2"
    assert created["embedding_model"]["dimensions"] == 384
    assert created["metadata"] == {"num_documents": 0, "num_info_blobs": 0, "num_chunks": 0, "size": 0}
    assert created["permissions"] == ["create", "delete", "edit", "read"]
    assert (created["chunk_tokens"], created["overlap_tokens"]) == (200, 40)

    listed = (await client.get(f"/api/v1/spaces/{space['id']}/collections/")).json()
    assert [item["id"] for item in listed["items"]] == [created["id"]]

    renamed = await client.patch(
        f"/api/v1/collections/{created['id']}", json={"name": "Riktlinjer", "chunk_tokens": 120}
    )
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["chunk_tokens"]) == ("Riktlinjer", 120)
    assert (await client.get(f"/api/v1/collections/{created['id']}")).json()["name"] == "Riktlinjer"

    assert (await client.delete(f"/api/v1/collections/{created['id']}")).status_code == 204
    assert (await client.get(f"/api/v1/collections/{created['id']}")).status_code == 404


async def test_collection_needs_an_enabled_embedding_model_and_sane_chunk_sizes(org, space):
    client = org.owner.client
    models = (await client.get("/api/v1/ai-models/?kind=completion")).json()
    completion = (models.get("items") or models)[0]["id"]
    for body, field in (
        ({"embedding_model_id": str(uuid.uuid4())}, "embedding_model_id"),
        ({"embedding_model_id": completion}, "embedding_model_id"),
        ({"chunk_tokens": 100, "overlap_tokens": 80}, None),
    ):
        response = await client.post(
            "/api/v1/collections/", json={"space_id": space["id"], "name": "X", **body}
        )
        assert response.status_code == 422, response.text
        if field:
            assert response.json()["details"][0]["field"] == field


async def test_roles_decide_who_reads_and_edits_collections(org, space, collection, knowledge, files):
    viewer = await org.add_user("member")
    editor = await org.add_user("member")
    outsider = await org.add_user("member")
    for person, role in ((viewer, "viewer"), (editor, "editor")):
        added = await org.owner.client.post(
            f"/api/v1/spaces/{space['id']}/members/", json={"user_id": str(person.id), "role": role}
        )
        assert added.status_code == 201, added.text
    url = f"/api/v1/collections/{collection['id']}"
    assert (await viewer.client.get(url)).status_code == 403
    assert (await outsider.client.get(url)).status_code == 404
    as_editor = await editor.client.get(url)
    assert as_editor.status_code == 200
    assert as_editor.json()["permissions"] == ["create", "delete", "edit", "read"]
    uploaded = await knowledge.upload(
        editor.client, collection["id"], "a.txt", b"Text om parkering i staden."
    )
    assert (await outsider.client.get(f"/api/v1/documents/{uploaded['id']}")).status_code == 404
    assert (await viewer.client.delete(f"/api/v1/documents/{uploaded['id']}")).status_code == 403


async def test_upload_is_refused_by_size_type_and_quota_with_clear_reasons(
    org, collection, knowledge, files, settings, monkeypatch
):
    client = org.owner.client
    url = f"/api/v1/collections/{collection['id']}/documents/"
    refused = await client.post(url, files={"file": ("bild.pdf", PNG, "application/pdf")})
    assert refused.status_code == 415
    assert "PNG image" in refused.json()["message"]

    monkeypatch.setattr(settings, "max_upload_bytes", 1000)
    too_big = await client.post(url, files={"file": ("stor.txt", b"ord " * 400)})
    assert too_big.status_code == 413
    assert too_big.json()["code"] == "payload_too_large"
    monkeypatch.undo()

    quota = await org.sysadmin.patch(f"/api/v1/sysadmin/tenants/{org.id}/", json={"quota_limit": 100})
    assert quota.status_code == 200, quota.text
    over = await client.post(
        url, files={"file": ("b.txt", "Det här dokumentet är lite för stort. ".encode() * 5)}
    )
    assert over.status_code == 413
    assert over.json()["code"] == "quota_exceeded"
    assert "storage quota" in over.json()["message"]


async def test_the_same_content_twice_is_a_conflict_naming_the_first(org, collection, knowledge):
    client = org.owner.client
    first = await knowledge.upload(client, collection["id"], "regler.txt", b"Regler for skolskjuts.")
    again = await client.post(
        f"/api/v1/collections/{collection['id']}/documents/",
        files={"file": ("kopia.txt", b"Regler for skolskjuts.")},
    )
    assert again.status_code == 409
    assert again.json()["code"] == "duplicate_document"
    assert again.json()["details"]["document_id"] == first["id"]


async def test_text_documents_download_as_attachments_and_delete_removes_the_original(
    org, collection, knowledge
):
    client = org.owner.client
    created = await client.post(
        f"/api/v1/collections/{collection['id']}/documents/text",
        json={"title": "Öppettider", "text": "Biblioteket har öppet <b>9–17</b>."},
    )
    assert created.status_code == 202, created.text
    document = created.json()
    assert (document["title"], document["mime_type"], document["status"]) == (
        "Öppettider",
        "text/plain",
        "queued",
    )
    assert document["job_id"]

    download = await client.get(f"/api/v1/documents/{document['id']}/download")
    assert download.status_code == 200
    assert download.content == "Biblioteket har öppet <b>9–17</b>.".encode()
    assert download.headers["content-disposition"].startswith("attachment;")
    assert "UTF-8''%C3%96ppettider.txt" in download.headers["content-disposition"]
    assert download.headers["x-content-type-options"] == "nosniff"

    listed = (await client.get(f"/api/v1/collections/{collection['id']}/documents/")).json()
    assert [item["id"] for item in listed["items"]] == [document["id"]]

    async with system_transaction() as db:
        key = await db.scalar(select(Document.storage_key).where(Document.id == uuid.UUID(document["id"])))
    assert await get_storage().get(key)
    assert (await client.delete(f"/api/v1/documents/{document['id']}")).status_code == 204
    assert (await client.get(f"/api/v1/documents/{document['id']}")).status_code == 404
    for _ in range(50):
        if not (get_storage().root / key).exists():
            break
        import asyncio

        await asyncio.sleep(0.02)
    assert not (get_storage().root / key).exists()


async def test_reference_upload_answers_202_with_a_job_public(org, collection, files):
    response = await org.owner.client.post(
        f"/api/v1/groups/{collection['id']}/info-blobs/upload/",
        files={"file": ("budget.xlsx", files.xlsx())},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert set(job) == {
        "id",
        "name",
        "status",
        "task",
        "result_location",
        "finished_at",
        "created_at",
        "updated_at",
    }
    assert (job["status"], job["task"], job["name"]) == ("queued", "upload_info_blob", "budget")
    audio = await org.owner.client.post(
        f"/api/v1/groups/{collection['id']}/info-blobs/upload/", files={"file": ("m.wav", files.wav())}
    )
    assert audio.status_code == 202
    assert audio.json()["task"] == "transcription"


async def test_another_tenants_collections_and_documents_are_unknown_ids(org, other_org, knowledge):
    theirs_space = await knowledge.create_space(other_org.owner.client)
    theirs = await knowledge.create_collection(other_org.owner.client, theirs_space["id"])
    document = await knowledge.upload(other_org.owner.client, theirs["id"], "hemligt.txt", b"Hemlig text.")
    client = org.owner.client
    for path in (
        "/api/v1/collections/{}",
        "/api/v1/collections/{}/documents/",
        "/api/v1/spaces/{}/collections/",
    ):
        real = path.format(theirs["id"] if "spaces" not in path else theirs_space["id"])
        assert _without_cid(await client.get(real))[0] == 404
    for method, path in (
        ("GET", "/api/v1/documents/{}"),
        ("GET", "/api/v1/documents/{}/download"),
        ("POST", "/api/v1/documents/{}/reprocess"),
        ("DELETE", "/api/v1/documents/{}"),
    ):
        real = await client.request(method, path.format(document["id"]))
        random = await client.request(method, path.format(uuid.uuid4()))
        assert real.status_code == 404
        assert _without_cid(real) == _without_cid(random)
    for method, path, kwargs in (
        ("POST", "/api/v1/collections/{}/search/", {"json": {"query": "hemlig"}}),
        ("PATCH", "/api/v1/collections/{}", {"json": {"name": "Mitt"}}),
        ("DELETE", "/api/v1/collections/{}", {}),
        ("POST", "/api/v1/collections/{}/documents/", {"files": {"file": ("a.txt", b"abc")}}),
        ("POST", "/api/v1/groups/{}/info-blobs/upload/", {"files": {"file": ("a.txt", b"abc")}}),
    ):
        real = await client.request(method, path.format(theirs["id"]), **kwargs)
        random = await client.request(method, path.format(uuid.uuid4()), **kwargs)
        assert real.status_code == 404, (path, real.text)
        assert _without_cid(real) == _without_cid(random)
    still = await other_org.owner.client.get(f"/api/v1/documents/{document['id']}")
    assert still.status_code == 200
