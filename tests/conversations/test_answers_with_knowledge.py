"""An assistant over a collection: the question is searched, passages go to the model, answers cite them."""

from __future__ import annotations

import asyncio

import pytest
from sse_client import read_sse

from allting.worker import build_worker

DOCUMENT = (
    "# Library services\n\n"
    "The city library on Stortorget opens at nine in the morning on weekdays and at ten on Saturdays.\n\n"
    "## Borrowing\n\nA library card is free for everyone who lives in the municipality. "
    "Books may be borrowed for four weeks and renewed twice.\n"
)


@pytest.fixture
async def worker(runtime):
    running = build_worker(in_process=True)
    task = asyncio.create_task(running.start())
    yield running
    running.event.set()
    await task


async def _wait_ready(client, document_id: str) -> dict:
    for _ in range(600):
        document = (await client.get(f"/api/v1/documents/{document_id}")).json()
        if document["status"] in ("ready", "failed"):
            return document
        await asyncio.sleep(0.1)
    raise AssertionError(document)


async def test_answer_cites_the_passages_of_the_assistants_collection(chat_org, llm, worker):
    client = chat_org.owner.client
    space = (await client.post("/api/v1/spaces/", json={"name": "Culture"})).json()
    collection = await client.post("/api/v1/collections/", json={"space_id": space["id"], "name": "Library"})
    assert collection.status_code == 201, collection.text
    upload = await client.post(
        f"/api/v1/collections/{collection.json()['id']}/documents/",
        files={"file": ("library.md", DOCUMENT.encode(), "text/markdown")},
    )
    assert upload.status_code in (201, 202), upload.text
    document_id = upload.json().get("id") or upload.json()["document"]["id"]
    document = await _wait_ready(client, document_id)
    assert document["status"] == "ready", document
    assistant = (
        await client.post(
            "/api/v1/assistants/",
            json={
                "space_id": space["id"],
                "name": "Library helper",
                "published": True,
                "collection_ids": [collection.json()["id"]],
            },
        )
    ).json()

    llm.script(answer="The library opens at nine on weekdays [1].")
    async with client.stream(
        "POST",
        "/api/v1/conversations/",
        json={"question": "When does the library open?", "assistant_id": assistant["id"], "stream": True},
    ) as response:
        events = await read_sse(response)
    names = [name for name, _ in events]
    assert names[-2:] == ["citations", "done"], names
    [citation] = events[-2][1]["citations"]
    assert citation["ref"] == 1 and citation["document_id"] == document_id
    assert "opens at nine" in citation["text"]
    system_prompt = llm.requests[-1].json["messages"][0]["content"]
    assert "[1]" in system_prompt and "opens at nine" in system_prompt

    conversation = (await client.get(f"/api/v1/conversations/{events[0][1]['conversation_id']}/")).json()
    stored = conversation["messages"][0]["citations"]
    assert [c["document_id"] for c in stored] == [document_id]


async def test_attaching_another_spaces_collection_is_refused(chat_org):
    client = chat_org.owner.client
    first = (await client.post("/api/v1/spaces/", json={"name": "One"})).json()
    second = (await client.post("/api/v1/spaces/", json={"name": "Two"})).json()
    collection = (
        await client.post("/api/v1/collections/", json={"space_id": first["id"], "name": "C"})
    ).json()
    response = await client.post(
        "/api/v1/assistants/",
        json={"space_id": second["id"], "name": "x", "collection_ids": [collection["id"]]},
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "collection_ids"
