"""Live job status over WS /api/v1/ws: across API processes, only to the job's owner, well authenticated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from allting.auth import service as auth_service
from allting.jobs import events


@contextlib.asynccontextmanager
async def _serve(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", ws="websockets"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def two_processes(runtime):
    """Two separate applications (as two API processes would be) on the same PostgreSQL and Redis."""
    from allting.main import create_app

    async with (
        _serve(create_app(runtime=runtime, in_process_worker=False)) as first,
        _serve(create_app(runtime=runtime, in_process_worker=False)) as second,
    ):
        yield first, second


async def _ticket(host: str, person) -> str:
    async with httpx.AsyncClient(base_url=f"http://{host}", headers=dict(person.client.headers)) as client:
        response = await client.post("/api/v1/ws/ticket")
    assert response.status_code == 200, response.text
    assert response.json()["expires_in"] == events.TICKET_SECONDS
    return response.json()["ticket"]


async def _next_job_event(ws, timeout: float = 10.0) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message["type"] == "job":
            return message["data"]


async def _silent(ws, seconds: float = 0.5) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return True
    return False


async def test_an_event_published_by_one_process_reaches_a_socket_on_another(
    org, other_org, collection, two_processes, knowledge
):
    first, second = two_processes
    colleague = await org.add_user("member")
    async with (
        connect(f"ws://{second}/api/v1/ws?ticket={await _ticket(first, org.owner)}") as owner_ws,
        connect(f"ws://{second}/api/v1/ws?ticket={await _ticket(second, colleague)}") as colleague_ws,
        connect(f"ws://{first}/api/v1/ws?ticket={await _ticket(first, other_org.owner)}") as stranger_ws,
    ):
        await owner_ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await owner_ws.recv()) == {"type": "pong"}

        # The job is created and cancelled through the first process; the socket is on the second.
        async with httpx.AsyncClient(
            base_url=f"http://{first}", headers=dict(org.owner.client.headers)
        ) as api:
            uploaded = await api.post(
                f"/api/v1/collections/{collection['id']}/documents/",
                files={"file": ("a.txt", b"Ett kort dokument om parkering.")},
            )
            assert uploaded.status_code == 202, uploaded.text
            job_id = uploaded.json()["job_id"]
            assert (await api.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
        event = await _next_job_event(owner_ws)
        assert (event["id"], event["status"], event["task"]) == (
            job_id,
            "cancelled",
            "knowledge.ingest_document",
        )
        assert await _silent(colleague_ws)  # same tenant, not their job
        assert await _silent(stranger_ws)  # another tenant


async def test_a_worker_reports_progress_and_completion_live(
    org, collection, worker, two_processes, local_model
):
    first, _ = two_processes
    async with connect(f"ws://{first}/api/v1/ws?ticket={await _ticket(first, org.owner)}") as ws:
        uploaded = await org.owner.client.post(
            f"/api/v1/collections/{collection['id']}/documents/",
            files={"file": ("b.txt", "Biblioteket har öppet nio till fem.".encode())},
        )
        job_id = uploaded.json()["job_id"]
        seen = []
        while not seen or seen[-1]["status"] not in ("succeeded", "failed"):
            event = await _next_job_event(ws, timeout=30)
            if event["id"] == job_id:
                seen.append(event)
    assert seen[0]["status"] == "running"
    assert any(0 < event["progress"] < 100 for event in seen)
    assert seen[-1]["status"] == "succeeded" and seen[-1]["progress"] == 100
    assert seen[-1]["result"]["location"].startswith("/api/v1/documents/")


async def test_tickets_are_single_use_and_short_lived_and_cookies_need_this_site(
    org, two_processes, monkeypatch
):
    first, _ = two_processes
    ticket = await _ticket(first, org.owner)
    async with connect(f"ws://{first}/api/v1/ws?ticket={ticket}"):
        pass
    for url in (
        f"ws://{first}/api/v1/ws?ticket={ticket}",
        f"ws://{first}/api/v1/ws?ticket=made-up",
        f"ws://{first}/api/v1/ws",
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 403

    monkeypatch.setattr(events, "TICKET_SECONDS", 1)
    ticket = await _ticket(first, org.owner)
    await asyncio.sleep(1.2)
    with pytest.raises(InvalidStatus):  # expired
        async with connect(f"ws://{first}/api/v1/ws?ticket={ticket}"):
            pass

    issued = await auth_service.login(
        org.owner.email,
        org.owner.password,
        tenant_slug=None,
        client_address=None,
        user_agent=None,
        correlation_id=None,
        kind="web",
    )
    cookie = {"Cookie": f"allting_session={issued.access_token}"}
    async with connect(f"ws://{first}/api/v1/ws", additional_headers=cookie, origin=f"http://{first}") as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv()) == {"type": "pong"}
    with pytest.raises(InvalidStatus):  # a page of another site cannot use the visitor's cookie
        async with connect(
            f"ws://{first}/api/v1/ws", additional_headers=cookie, origin="https://evil.example"
        ):
            pass
    with pytest.raises(InvalidStatus):  # an access token is not a web session
        bearer = org.owner.client.headers["Authorization"].split()[1]
        async with connect(
            f"ws://{first}/api/v1/ws", additional_headers={"Cookie": f"allting_session={bearer}"}
        ):
            pass


async def test_a_socket_closes_when_its_session_is_revoked(org, two_processes, monkeypatch):
    first, _ = two_processes
    monkeypatch.setattr(events, "RECHECK_SECONDS", 0.2)
    async with connect(f"ws://{first}/api/v1/ws?ticket={await _ticket(first, org.owner)}") as ws:
        assert (await org.owner.client.post("/api/v1/auth/logout")).status_code == 204
        with pytest.raises(Exception) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1008


async def _next_of(ws, kinds: tuple[str, ...], timeout: float = 10.0) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message["type"] in kinds:
            return message


async def _watch(ws, space_id: str) -> dict:
    await ws.send(json.dumps({"type": "watch", "space_id": space_id}))
    return await _next_of(ws, ("watching", "error"))


async def _upload_and_cancel(host: str, person, collection_id: str, text: str) -> str:
    """A queued ingestion job (no worker runs here) cancelled at once: one event, published by the API."""
    async with httpx.AsyncClient(base_url=f"http://{host}", headers=dict(person.client.headers)) as api:
        uploaded = await api.post(
            f"/api/v1/collections/{collection_id}/documents/", files={"file": ("doc.txt", text.encode())}
        )
        assert uploaded.status_code == 202, uploaded.text
        job_id = uploaded.json()["job_id"]
        assert (await api.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
    return job_id


async def test_every_member_watching_a_space_sees_its_document_jobs_and_no_one_else_does(
    org, other_org, space, collection, two_processes, monkeypatch
):
    first, second = two_processes
    owner = org.owner
    editor = await org.add_user("member")
    through_group = await org.add_user("member")
    viewer = await org.add_user("member")
    outsider = await org.add_user("member")  # same organisation, not in the space
    group = (await owner.client.post("/api/v1/groups/", json={"name": "Redaktionen"})).json()
    await owner.client.post(f"/api/v1/groups/{group['id']}/members/", json={"user_id": str(through_group.id)})
    members = f"/api/v1/spaces/{space['id']}/members/"
    for body in (
        {"user_id": str(editor.id), "role": "editor"},
        {"group_id": group["id"], "role": "editor"},
        {"user_id": str(viewer.id), "role": "viewer"},
    ):
        assert (await owner.client.post(members, json=body)).status_code == 201

    async with contextlib.AsyncExitStack() as stack:
        sockets = {}
        for name, person, host in (
            ("owner", owner, first),
            ("editor", editor, second),
            ("group", through_group, first),
            ("viewer", viewer, second),
            ("outsider", outsider, first),
            ("stranger", other_org.owner, second),
        ):
            url = f"ws://{host}/api/v1/ws?ticket={await _ticket(host, person)}"
            sockets[name] = await stack.enter_async_context(connect(url))

        for name in ("owner", "editor", "group"):
            assert await _watch(sockets[name], space["id"]) == {
                "type": "watching",
                "data": {"space_id": space["id"]},
            }
        # A viewer cannot read the space's knowledge; a non-member and another tenant cannot tell
        # the space exists.
        assert (await _watch(sockets["viewer"], space["id"]))["data"]["code"] == "forbidden"
        for name in ("outsider", "stranger"):
            refused = await _watch(sockets[name], space["id"])
            assert refused["type"] == "error" and refused["data"]["code"] == "not_found"
        assert (await _watch(sockets["outsider"], "not-an-id"))["data"]["code"] == "invalid"

        job_id = await _upload_and_cancel(first, owner, collection["id"], "Ett dokument om snöröjning.")
        for name in ("owner", "editor", "group"):
            event = await _next_job_event(sockets[name])
            assert event["id"] == job_id and event["status"] == "cancelled"
            assert (event["space_id"], event["collection_id"]) == (space["id"], collection["id"])
            assert event["document_id"]
        # The uploader hears it on their own channel and the space's, and gets it once.
        for name in ("owner", "viewer", "outsider", "stranger"):
            assert await _silent(sockets[name]), name

        # A member who is removed stops receiving at the next event after the re-check.
        monkeypatch.setattr(events, "MEMBERSHIP_SECONDS", 0.0)
        listed = (await owner.client.get(members)).json()
        editor_member = next(m for m in listed if m["user_id"] == str(editor.id))
        assert (await owner.client.delete(f"{members}{editor_member['id']}")).status_code == 204
        # So does a member of a group that is removed from the group.
        removed = await owner.client.delete(f"/api/v1/groups/{group['id']}/members/{through_group.id}")
        assert removed.status_code == 204
        job_id = await _upload_and_cancel(second, owner, collection["id"], "Ett dokument om sandning.")
        assert (await _next_job_event(sockets["owner"]))["id"] == job_id
        for name in ("editor", "group"):
            message = await _next_of(sockets[name], ("job", "unwatched"))
            assert message == {"type": "unwatched", "data": {"space_id": space["id"], "reason": "access"}}
            assert await _silent(sockets[name]), name
        # Watching again is refused now.
        assert (await _watch(sockets["editor"], space["id"]))["data"]["code"] == "not_found"


async def test_a_colleague_watching_the_space_sees_a_worker_s_progress_live(
    org, space, collection, worker, two_processes, local_model
):
    first, second = two_processes
    colleague = await org.add_user("member")
    await org.owner.client.post(
        f"/api/v1/spaces/{space['id']}/members/", json={"user_id": str(colleague.id), "role": "editor"}
    )
    async with connect(f"ws://{second}/api/v1/ws?ticket={await _ticket(first, colleague)}") as ws:
        assert (await _watch(ws, space["id"]))["type"] == "watching"
        uploaded = await org.owner.client.post(
            f"/api/v1/collections/{collection['id']}/documents/",
            files={"file": ("c.txt", "Simhallen har öppet sju till nio.".encode())},
        )
        job_id = uploaded.json()["job_id"]
        seen = []
        while not seen or seen[-1]["status"] not in ("succeeded", "failed"):
            event = await _next_job_event(ws, timeout=30)
            if event["id"] == job_id:
                seen.append(event)
    assert seen[0]["status"] == "running"
    assert seen[-1]["status"] == "succeeded"
    assert all(event["document_id"] == uploaded.json()["id"] for event in seen)
