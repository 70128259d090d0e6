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
