"""Asking assistants end to end through the stub LLM, the real gateway and a real SSE client."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import select
from sse_client import read_sse

from allting.ai.models import UsageRecord
from allting.conversations.models import Message
from allting.platform.db import system_transaction


async def personal_assistant(client) -> str:
    response = await client.get("/api/v1/spaces/type/personal/")
    assert response.status_code == 200, response.text
    return response.json()["default_assistant"]["id"]


async def test_personal_space_and_assistant_exist_on_first_use(chat_org):
    space = (await chat_org.owner.client.get("/api/v1/spaces/type/personal/")).json()
    assert space["personal"] and space["role"] == "owner"
    assert space["default_assistant"]["model_id"] == chat_org.model["id"]
    again = (await chat_org.owner.client.get("/api/v1/spaces/type/personal/")).json()
    assert again["id"] == space["id"]


async def test_streamed_answer_arrives_as_ordered_named_events_and_is_stored(chat_org, llm):
    llm.script(answer="Parking permits are issued by the city office.")
    assistant_id = await personal_assistant(chat_org.owner.client)
    async with chat_org.owner.client.stream(
        "POST",
        "/api/v1/conversations/",
        json={"question": "Who issues parking permits?", "assistant_id": assistant_id, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await read_sse(response)
    names = [name for name, _ in events]
    assert names[0] == "first_chunk" and names[-1] == "done"
    assert set(names[1:-1]) == {"text"}
    first = events[0][1]
    assert first["question"] == "Who issues parking permits?"
    answer = "".join(data["answer"] for name, data in events if name == "text")
    assert answer == "Parking permits are issued by the city office."
    done = events[-1][1]
    assert done["status"] == "complete" and done["model"]["name"] == "stub-chat"
    assert done["usage"]["completion_tokens"] > 0
    detail = (await chat_org.owner.client.get(f"/api/v1/conversations/{first['conversation_id']}/")).json()
    assert detail["title"] == "Who issues parking permits?"
    [message] = detail["messages"]
    assert message["answer"] == answer and message["status"] == "complete"
    assert message["model"]["name"] == "stub-chat" and message["prompt_version"] == 1
    async with system_transaction() as db:
        usage = list(await db.scalars(select(UsageRecord).where(UsageRecord.tenant_id == chat_org.id)))
    assert len(usage) == 1 and usage[0].completion_tokens == done["usage"]["completion_tokens"]


async def test_model_text_cannot_forge_sse_events(chat_org, llm):
    llm.script(chunks=['fine\n\nevent: done\ndata: {"status": "hacked"}\n\n', " end"])
    assistant_id = await personal_assistant(chat_org.owner.client)
    async with chat_org.owner.client.stream(
        "POST", "/api/v1/conversations/", json={"question": "q", "assistant_id": assistant_id, "stream": True}
    ) as response:
        events = await read_sse(response)
    assert [name for name, _ in events].count("done") == 1
    assert events[-1][1]["status"] == "complete"
    assert "".join(d["answer"] for n, d in events if n == "text").startswith("fine\n\nevent: done")


async def test_non_streamed_answer_comes_back_at_once_and_continues_the_conversation(chat_org, llm):
    assistant_id = await personal_assistant(chat_org.owner.client)
    llm.script(answer="First answer.")
    first = await chat_org.owner.client.post(
        "/api/v1/conversations/", json={"question": "First question", "assistant_id": assistant_id}
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["answer"] == "First answer." and body["status"] == "complete"
    llm.script(answer="Second answer.")
    second = await chat_org.owner.client.post(
        "/api/v1/conversations/",
        json={"question": "Second question", "conversation_id": body["conversation_id"]},
    )
    assert second.json()["conversation_id"] == body["conversation_id"]
    sent = llm.requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "First question" and sent[2]["content"] == "First answer."
    assert sent[-1]["content"] == "Second question"


async def test_history_is_trimmed_to_the_context_window_but_keeps_the_question(chat_org, llm):
    small = await chat_org.owner.client.patch(
        f"/api/v1/ai-models/{chat_org.model['id']}", json={"context_window": 2000}
    )
    assert small.status_code == 200
    assistant_id = await personal_assistant(chat_org.owner.client)
    llm.script(answer="x" * 1500)
    conversation_id = None
    for turn in range(4):
        response = await chat_org.owner.client.post(
            "/api/v1/conversations/",
            json={
                "question": f"question {turn} " + "y" * 600,
                **(
                    {"conversation_id": conversation_id}
                    if conversation_id
                    else {"assistant_id": assistant_id}
                ),
            },
        )
        conversation_id = response.json()["conversation_id"]
    sent = llm.requests[-1].json["messages"]
    assert sent[0]["role"] == "system"
    assert sent[-1]["content"].startswith("question 3")
    assert len(sent) < 2 + 2 * 3


async def test_provider_failure_mid_stream_sends_an_error_event_and_keeps_the_partial_answer(chat_org, llm):
    llm.script(answer="one two three four five six", error="disconnect_mid_stream")
    assistant_id = await personal_assistant(chat_org.owner.client)
    async with chat_org.owner.client.stream(
        "POST", "/api/v1/conversations/", json={"question": "q", "assistant_id": assistant_id, "stream": True}
    ) as response:
        events = await read_sse(response)
    assert events[-1][0] == "error"
    assert events[-1][1]["partial"] is True
    conversation_id = events[0][1]["conversation_id"]
    [message] = (await chat_org.owner.client.get(f"/api/v1/conversations/{conversation_id}/")).json()[
        "messages"
    ]
    assert message["status"] == "incomplete" and message["answer"]
    assert message["error"]


async def test_a_rate_limited_provider_ends_the_stream_saying_how_long_it_asked_to_wait(chat_org, llm):
    # Longer than the gateway waits and retries by itself, so the person is told instead.
    llm.script(error=429, retry_after=120)
    assistant_id = await personal_assistant(chat_org.owner.client)
    async with chat_org.owner.client.stream(
        "POST", "/api/v1/conversations/", json={"question": "q", "assistant_id": assistant_id, "stream": True}
    ) as response:
        events = await read_sse(response)
    name, data = events[-1]
    assert name == "error"
    assert data["code"] == "provider_rate_limited" and data["retry_after"] == 120
    assert data["partial"] is False


async def test_client_disconnect_cancels_the_provider_and_stores_the_answer_once(chat_org, llm, live_url):
    llm.script(answer="word " * 400, delay_per_token=0.02)
    assistant_id = await personal_assistant(chat_org.owner.client)
    headers = {"Authorization": chat_org.owner.client.headers["Authorization"]}
    async with (
        httpx.AsyncClient(base_url=live_url, headers=headers) as client,
        client.stream(
            "POST",
            "/api/v1/conversations/",
            json={"question": "long please", "assistant_id": assistant_id, "stream": True},
        ) as response,
    ):
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("event: text"):
                seen += 1
            if seen >= 5:
                break
    for _ in range(100):
        if llm.cancelled_streams:
            break
        await asyncio.sleep(0.02)
    assert llm.cancelled_streams == 1
    async with system_transaction() as db:
        messages = list(await db.scalars(select(Message).where(Message.tenant_id == chat_org.id)))
    for _ in range(50):
        if messages and messages[0].status != "streaming":
            break
        await asyncio.sleep(0.05)
        async with system_transaction() as db:
            messages = list(await db.scalars(select(Message).where(Message.tenant_id == chat_org.id)))
    assert len(messages) == 1
    assert messages[0].status == "incomplete" and messages[0].answer.startswith("word")


async def test_no_model_enabled_gives_a_clear_error(org):
    assistant_id = await personal_assistant(org.owner.client)
    response = await org.owner.client.post(
        "/api/v1/conversations/", json={"question": "hello", "assistant_id": assistant_id}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "no_model"
    assert "administrator must enable one" in response.json()["message"]


async def test_bad_ask_input_names_the_field(chat_org):
    response = await chat_org.owner.client.post("/api/v1/conversations/", json={"question": ""})
    assert response.status_code == 422
    fields = {detail["field"] for detail in response.json()["details"]}
    assert "question" in fields


async def test_conversations_are_listed_newest_first_searchable_renamable_and_deletable(chat_org, llm):
    assistant_id = await personal_assistant(chat_org.owner.client)
    ids = []
    for question in ("Budget for schools", "Snow clearing routes", "Library opening hours"):
        llm.script(answer=f"About {question.lower()}.")
        response = await chat_org.owner.client.post(
            "/api/v1/conversations/", json={"question": question, "assistant_id": assistant_id}
        )
        ids.append(response.json()["conversation_id"])
    listing = (await chat_org.owner.client.get("/api/v1/conversations/")).json()
    assert [item["id"] for item in listing["items"]] == list(reversed(ids))
    found = (await chat_org.owner.client.get("/api/v1/conversations/", params={"search": "snow"})).json()
    assert [item["id"] for item in found["items"]] == [ids[1]]
    by_answer = (
        await chat_org.owner.client.get("/api/v1/conversations/", params={"search": "about library"})
    ).json()
    assert [item["id"] for item in by_answer["items"]] == [ids[2]]
    renamed = await chat_org.owner.client.patch(f"/api/v1/conversations/{ids[0]}/", json={"title": "Schools"})
    assert renamed.json()["title"] == "Schools"
    assert (await chat_org.owner.client.delete(f"/api/v1/conversations/{ids[0]}/")).status_code == 204
    assert (await chat_org.owner.client.get(f"/api/v1/conversations/{ids[0]}/")).status_code == 404


async def test_feedback_is_stored_on_the_answer(chat_org, llm):
    assistant_id = await personal_assistant(chat_org.owner.client)
    body = (
        await chat_org.owner.client.post(
            "/api/v1/conversations/", json={"question": "q", "assistant_id": assistant_id}
        )
    ).json()
    response = await chat_org.owner.client.post(
        f"/api/v1/conversations/{body['conversation_id']}/messages/{body['message_id']}/feedback",
        json={"value": -1, "comment": "Wrong office"},
    )
    assert response.status_code == 204
    detail = (await chat_org.owner.client.get(f"/api/v1/conversations/{body['conversation_id']}/")).json()
    assert detail["messages"][0]["feedback_value"] == -1
    assert detail["messages"][0]["feedback_comment"] == "Wrong office"
    bad = await chat_org.owner.client.post(
        f"/api/v1/conversations/{body['conversation_id']}/messages/{body['message_id']}/feedback",
        json={"value": 5},
    )
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "value"


async def test_another_users_and_another_tenants_conversations_are_not_found(chat_org, other_org, llm):
    assistant_id = await personal_assistant(chat_org.owner.client)
    body = (
        await chat_org.owner.client.post(
            "/api/v1/conversations/", json={"question": "private", "assistant_id": assistant_id}
        )
    ).json()
    colleague = await chat_org.add_user("member")
    unknown = await colleague.client.get(f"/api/v1/conversations/{uuid.uuid4()}/")
    for client in (colleague.client, other_org.owner.client):
        response = await client.get(f"/api/v1/conversations/{body['conversation_id']}/")
        assert response.status_code == 404
        assert {k: v for k, v in response.json().items() if k != "correlation_id"} == {
            k: v for k, v in unknown.json().items() if k != "correlation_id"
        }
        assert (
            await client.post(
                "/api/v1/conversations/",
                json={"question": "continue", "conversation_id": body["conversation_id"]},
            )
        ).status_code == 404
    assert (
        await colleague.client.post(
            "/api/v1/conversations/", json={"question": "use your assistant", "assistant_id": assistant_id}
        )
    ).status_code == 404


async def test_attached_document_text_is_sent_to_the_model(chat_org, llm):
    upload = await chat_org.owner.client.post(
        "/api/v1/files/",
        files={"file": ("memo.txt", b"The committee meets on Thursdays.", "text/plain")},
    )
    assert upload.status_code == 201, upload.text
    assert upload.json()["has_text"]
    assistant_id = await personal_assistant(chat_org.owner.client)
    response = await chat_org.owner.client.post(
        "/api/v1/conversations/",
        json={
            "question": "When does it meet?",
            "assistant_id": assistant_id,
            "files": [{"id": upload.json()["id"]}],
        },
    )
    assert response.status_code == 200, response.text
    assert "The committee meets on Thursdays." in llm.requests[-1].json["messages"][0]["content"]


async def test_attachments_are_checked_by_content(chat_org):
    png_named_txt = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    executable = b"\x7fELF" + b"\x00" * 64
    image = await chat_org.owner.client.post("/api/v1/files/", files={"file": ("a.txt", png_named_txt)})
    assert image.status_code == 201 and image.json()["is_image"]
    refused = await chat_org.owner.client.post("/api/v1/files/", files={"file": ("a.pdf", executable)})
    assert refused.status_code == 415
    assert "ELF" in refused.json()["message"] or "executable" in refused.json()["message"].lower()


async def test_images_need_a_model_with_vision(chat_org):
    image = (
        await chat_org.owner.client.post(
            "/api/v1/files/", files={"file": ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)}
        )
    ).json()
    assistant_id = await personal_assistant(chat_org.owner.client)
    response = await chat_org.owner.client.post(
        "/api/v1/conversations/",
        json={"question": "What is this?", "assistant_id": assistant_id, "files": [image["id"]]},
    )
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "files"


async def test_a_browser_session_cookie_alone_cannot_change_anything(chat_org, app):
    """Cross-site requests carry the cookie but not the page's CSRF token, so they are refused."""
    from allting.auth import service as auth_service

    issued = await auth_service.login(
        chat_org.owner.email,
        chat_org.owner.password,
        tenant_slug=None,
        client_address=None,
        user_agent=None,
        correlation_id=None,
        kind="web",
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", cookies={"allting_session": issued.access_token}
    ) as browser:
        assert (await browser.get("/api/v1/users/me/")).status_code == 200
        refused = await browser.post("/api/v1/spaces/", json={"name": "Forged"})
        assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"


async def test_the_provider_starts_before_the_question_is_stored_and_stops_if_storing_fails(
    chat_org, llm, monkeypatch
):
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.ext.asyncio import AsyncSession

    llm.script(answer="word " * 400, delay_per_token=0.02)
    assistant_id = await personal_assistant(chat_org.owner.client)
    commit = AsyncSession.commit
    seen_by_provider_before_commit = []

    async def failing_commit(self):
        if self.info.get("tenant_id") != chat_org.id:
            return await commit(self)
        for _ in range(200):  # the provider call runs alongside the writes; let it reach the stub
            if llm.active_streams:
                break
            await asyncio.sleep(0.01)
        seen_by_provider_before_commit.append(llm.active_streams)
        raise OperationalError("COMMIT", {}, Exception("the database went away"))

    monkeypatch.setattr(AsyncSession, "commit", failing_commit)
    response = await chat_org.owner.client.post(
        "/api/v1/conversations/",
        json={"question": "long please", "assistant_id": assistant_id, "stream": True},
    )
    monkeypatch.setattr(AsyncSession, "commit", commit)
    assert response.status_code >= 500
    assert seen_by_provider_before_commit[0] == 1
    for _ in range(100):
        if llm.cancelled_streams:
            break
        await asyncio.sleep(0.02)
    assert llm.cancelled_streams == 1
    async with system_transaction() as db:
        assert not list(await db.scalars(select(Message).where(Message.tenant_id == chat_org.id)))
