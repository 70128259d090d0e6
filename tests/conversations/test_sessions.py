"""The reference system's session endpoints and assistant API keys."""

from __future__ import annotations

import json

import httpx


async def _assistant(org) -> str:
    return (await org.owner.client.get("/api/v1/spaces/type/personal/")).json()["default_assistant"]["id"]


async def test_session_endpoints_answer_in_the_reference_format(chat_org, llm):
    llm.script(answer="Reference answer.")
    assistant_id = await _assistant(chat_org)
    first = await chat_org.owner.client.post(
        f"/api/v1/assistants/{assistant_id}/sessions/", json={"question": "Hi"}
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert {
        "session_id",
        "question",
        "answer",
        "files",
        "generated_files",
        "references",
        "tools",
        "web_search_references",
        "model",
    } <= body.keys()
    assert body["answer"] == "Reference answer." and body["model"]["name"] == "stub-chat"
    follow = await chat_org.owner.client.post(
        f"/api/v1/assistants/{assistant_id}/sessions/{body['session_id']}/", json={"question": "And?"}
    )
    assert follow.json()["session_id"] == body["session_id"]


async def test_streamed_session_sends_unnamed_events_each_a_full_object(chat_org, llm):
    llm.script(answer="one two three")
    assistant_id = await _assistant(chat_org)
    async with chat_org.owner.client.stream(
        "POST", f"/api/v1/assistants/{assistant_id}/sessions/", json={"question": "Count", "stream": True}
    ) as response:
        lines = [line async for line in response.aiter_lines()]
    assert not any(line.startswith("event:") for line in lines)
    payloads = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert "".join(p["answer"] for p in payloads) == "one two three"
    assert all({"session_id", "question", "references", "model"} <= p.keys() for p in payloads)


async def test_assistant_key_asks_only_its_own_assistant(chat_org, app, llm):
    assistant_id = await _assistant(chat_org)
    created = await chat_org.owner.client.post(
        f"/api/v1/assistants/{assistant_id}/api-keys/", json={"name": "Intranet widget"}
    )
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("ina_")
    listed = (await chat_org.owner.client.get(f"/api/v1/assistants/{assistant_id}/api-keys/")).json()
    assert "key" not in listed[0] and listed[0]["prefix"] == key[:10]
    other = (
        await chat_org.owner.client.post(
            "/api/v1/assistants/",
            json={
                "space_id": (await chat_org.owner.client.get("/api/v1/spaces/type/personal/")).json()["id"],
                "name": "Other",
            },
        )
    ).json()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers={"X-API-Key": key}
    ) as widget:
        ok = await widget.post(f"/api/v1/assistants/{assistant_id}/sessions/", json={"question": "Hello"})
        assert ok.status_code == 200, ok.text
        assert (
            await widget.post(f"/api/v1/assistants/{other['id']}/sessions/", json={"question": "x"})
        ).status_code == 404
        assert (await widget.get("/api/v1/users/me/")).status_code == 401
        assert (await widget.get("/api/v1/conversations/")).status_code == 401
        await chat_org.owner.client.delete(f"/api/v1/assistants/{assistant_id}/api-keys/{listed[0]['id']}")
        assert (
            await widget.post(f"/api/v1/assistants/{assistant_id}/sessions/", json={"question": "again"})
        ).status_code == 401
