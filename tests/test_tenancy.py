"""Tenant isolation over the HTTP API, proved for every route of the application.

Two organisations, A and B, each with people, a group, a custom role, an API key, a job, AI
providers, models and budgets, a space with a member, an assistant with a key, a file, a
conversation, a collection with a document, and the audit rows all of that left. For every
/api/v1 route with an id in its path (enumerated from the application, so a new route is covered
without anyone remembering it; sign-in and sysadmin routes aside), A's owner calls it with B's
real ids and with random ids: both answers must be a 404 and byte-identical apart from the
correlation id, so another organisation's object cannot even be told apart from one that does not
exist. Every list route is read by A's owner and must never show anything of B's. Finally many
interleaved requests of both organisations, over a connection pool smaller than the concurrency,
must never mix their data.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from allting.jobs.models import Job
from allting.main import create_app
from allting.platform.db import transaction
from allting.platform.tenancy import set_tenant

PASSWORD = "a-long-enough-password"

# Each path parameter that names a stored object, and the kind of object it names. A new route
# with a parameter missing here fails test_every_path_parameter_is_known: add the parameter, and
# to Tenant.build the creation of a real object of that kind in both organisations.
ID_KINDS = {
    "user_id": "user",
    "group_id": "group",
    "role_id": "role",
    "key_id": "api_key",
    "job_id": "job",
    "provider_id": "provider",
    "model_id": "model",
    "budget_id": "budget",
    "scope_id": "user",  # with scope=user below
    "space_id": "space",
    "member_id": "space_member",
    "assistant_id": "assistant",
    "conversation_id": "conversation",
    "session_id": "conversation",
    "message_id": "message",
    "file_id": "file",
    "collection_id": "collection",
    "document_id": "document",
    "website_id": "website",
}
# Routes outside tenant isolation: the operator's (X-API-Key, tests/sysadmin) and sign-in's, which
# run before anyone belongs to a tenant (tests/auth, tests/oidc).
PUBLIC_OR_OPERATOR = ("/api/v1/sysadmin/", "/api/v1/auth/")
# A parameter whose kind depends on where it is: (path prefix, parameter) -> kind.
ID_KINDS_BY_PATH = {
    ("/api/v1/assistants/", "key_id"): "assistant_key",
    ("/api/v1/groups/{group_id}/info-blobs/", "group_id"): "collection",  # the reference system's name
}
# Path parameters that are not ids, with the value to call the route with.
OTHER_PARAMS = {"scope": "user", "provider": "openai", "version": "1"}


# What a route needs besides its ids to get past validation to the lookup of its ids, as request
# arguments; the default is an empty JSON body.
def _json(body):
    return lambda a: {"json": body(a) if callable(body) else body}


def _file(a):
    return {"files": {"file": ("probe.txt", b"probe", "text/plain")}}


REQUESTS = {
    ("POST", "/api/v1/groups/{group_id}/members/"): _json(lambda a: {"user_id": str(a.ids["user"])}),
    ("PUT", "/api/v1/budgets/{scope}/{scope_id}"): _json({"monthly_tokens": 1000}),
    ("POST", "/api/v1/spaces/{space_id}/members/"): _json(
        lambda a: {"user_id": str(a.ids["user"]), "role": "viewer"}
    ),
    ("PATCH", "/api/v1/spaces/{space_id}/members/{member_id}"): _json({"role": "viewer"}),
    ("POST", "/api/v1/assistants/{assistant_id}/move"): _json(lambda a: {"space_id": str(a.ids["space"])}),
    ("POST", "/api/v1/assistants/{assistant_id}/api-keys/"): _json({"name": "probe"}),
    ("POST", "/api/v1/assistants/{assistant_id}/sessions/"): _json({"question": "probe"}),
    ("POST", "/api/v1/assistants/{assistant_id}/sessions/{session_id}/"): _json({"question": "probe"}),
    ("PATCH", "/api/v1/conversations/{conversation_id}/"): _json({"title": "probe"}),
    ("POST", "/api/v1/conversations/{conversation_id}/messages/{message_id}/feedback"): _json({"value": 1}),
    ("POST", "/api/v1/collections/{collection_id}/search/"): _json({"query": "probe"}),
    ("POST", "/api/v1/websites/{website_id}/search/"): _json({"query": "probe"}),
    ("POST", "/api/v1/spaces/{space_id}/websites/"): _json({"url": "https://www.probe.example/"}),
    ("POST", "/api/v1/collections/{collection_id}/documents/text"): _json(
        {"title": "probe", "text": "probe"}
    ),
    ("POST", "/api/v1/collections/{collection_id}/documents/"): _file,
    ("POST", "/api/v1/groups/{group_id}/info-blobs/upload/"): _file,
}


def kind_of(path: str, param: str) -> str:
    for (prefix, name), kind in ID_KINDS_BY_PATH.items():
        if name == param and path.startswith(prefix):
            return kind
    return ID_KINDS[param]


def _param_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every tenant API route with a path parameter."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = context.path or ""
        if not isinstance(route, APIRoute) or not path.startswith("/api/v1/"):
            continue
        if path.startswith(PUBLIC_OR_OPERATOR) or "{" not in path:
            continue
        found += [(method, path) for method in sorted(context.methods or ()) if method != "HEAD"]
    return sorted(set(found))


def _list_routes(app) -> list[str]:
    found = set()
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        if (
            isinstance(context.original_route, APIRoute)
            and path.startswith("/api/v1/")
            and not path.startswith(PUBLIC_OR_OPERATOR)
            and "{" not in path
            and "GET" in (context.methods or ())
        ):
            found.add(path)
    return sorted(found)


# The routes are read from an application built at collection time so that each is its own test
# case; test_routes_under_test_are_the_applications checks it matches the fixture's application.
_COLLECTED_APP = create_app(in_process_worker=False)
PARAM_ROUTES = _param_routes(_COLLECTED_APP)
ID_ROUTES = [(method, path) for method, path in PARAM_ROUTES if re.search(r"\{\w+_id\}", path)]
LIST_ROUTES = _list_routes(_COLLECTED_APP)


def _params(path: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", path)


def _client(app, **headers) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 40000)),
        base_url="http://testserver",
        headers=headers,
    )


@dataclass
class Tenant:
    """An organisation with one object of every kind, and what identifies them in responses."""

    id: uuid.UUID
    slug: str
    name: str
    owner: httpx.AsyncClient = None
    owner_id: uuid.UUID = None
    member: httpx.AsyncClient = None
    api_key: str = ""
    ids: dict[str, uuid.UUID] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)

    @classmethod
    async def build(cls, app, sysadmin: httpx.AsyncClient, clients: list, llm_url: str) -> Tenant:
        name = f"Tenancy {uuid.uuid4().hex[:10]}"
        created = (await sysadmin.post("/api/v1/sysadmin/tenants/", json={"name": name})).json()
        tenant = cls(id=uuid.UUID(created["id"]), slug=created["slug"], name=name)

        async def person(role: str) -> tuple[uuid.UUID, str, httpx.AsyncClient]:
            email = f"{role}-{uuid.uuid4().hex[:8]}@{tenant.slug}.example"
            user = await sysadmin.post(
                "/api/v1/sysadmin/users/",
                json={"email": email, "password": PASSWORD, "tenant_id": str(tenant.id), "role": role},
            )
            assert user.status_code == 201, user.text
            client = _client(app)
            clients.append(client)
            login = await client.post(
                "/api/v1/users/login/token/", data={"username": email, "password": PASSWORD}
            )
            client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            return uuid.UUID(user.json()["id"]), email, client

        tenant.owner_id, owner_email, tenant.owner = await person("owner")
        member_id, member_email, tenant.member = await person("member")
        owner = tenant.owner

        async def made(response: httpx.Response) -> dict:
            assert response.status_code in (200, 201, 202), response.text
            return response.json()

        group = await made(await owner.post("/api/v1/groups/", json={"name": f"Group of {tenant.slug}"}))
        await made(
            await owner.post(f"/api/v1/groups/{group['id']}/members/", json={"user_id": str(member_id)})
        )
        role = await made(
            await owner.post(
                "/api/v1/roles/", json={"name": f"Role of {tenant.slug}", "permissions": ["audit"]}
            )
        )
        key = await made(
            await tenant.member.post("/api/v1/users/me/api-keys/", json={"name": f"key {tenant.slug}"})
        )
        tenant.api_key = key["key"]
        provider = await made(
            await owner.post(
                "/api/v1/admin/model-providers/",
                json={
                    "name": f"Provider of {tenant.slug}",
                    "provider_type": "vllm",
                    "endpoint": llm_url,
                    "api_key": "sk-test-0123456789",
                },
            )
        )
        model = await made(
            await owner.post(
                "/api/v1/ai-models/",
                json={
                    "kind": "completion",
                    "name": "stub-chat",
                    "display_name": f"model-{tenant.slug}",
                    "provider_id": provider["id"],
                    "is_enabled": True,
                    "is_default": True,
                },
            )
        )
        embedding = await made(
            await owner.post(
                "/api/v1/ai-models/",
                json={
                    "kind": "embedding",
                    "name": "stub-embed",
                    "display_name": f"embedding-{tenant.slug}",
                    "provider_id": provider["id"],
                    "dimensions": 8,
                    "is_enabled": True,
                    "is_default": True,
                },
            )
        )
        budget = await made(
            await owner.put(f"/api/v1/budgets/user/{member_id}", json={"monthly_tokens": 5000})
        )
        space = await made(await owner.post("/api/v1/spaces/", json={"name": f"Space of {tenant.slug}"}))
        memberships = await made(
            await owner.post(
                f"/api/v1/spaces/{space['id']}/members/", json={"user_id": str(member_id), "role": "editor"}
            )
        )
        space_member = next(m for m in memberships if m["user_id"] == str(member_id))
        assistant = await made(
            await owner.post(
                "/api/v1/assistants/",
                json={
                    "space_id": space["id"],
                    "name": f"Assistant of {tenant.slug}",
                    "prompt": "Answer briefly.",
                    "model_id": model["id"],
                    "published": True,
                },
            )
        )
        collection = await made(
            await owner.post(
                "/api/v1/collections/",
                json={
                    "space_id": space["id"],
                    "name": f"Collection of {tenant.slug}",
                    "embedding_model_id": embedding["id"],
                },
            )
        )
        document = await made(
            await owner.post(
                f"/api/v1/collections/{collection['id']}/documents/text",
                json={"title": f"Document of {tenant.slug}", "text": "Opening hours are nine to five."},
            )
        )
        website = await made(
            await owner.post(
                f"/api/v1/spaces/{space['id']}/websites/",
                json={"url": f"https://www.{tenant.slug}.example/", "name": f"Website of {tenant.slug}"},
            )
        )
        assistant_key = await made(
            await owner.post(f"/api/v1/assistants/{assistant['id']}/api-keys/", json={"name": "integration"})
        )
        upload = await made(
            await owner.post("/api/v1/files/", files={"file": (f"{tenant.slug}.txt", b"notes", "text/plain")})
        )
        asked = await made(
            await owner.post(
                "/api/v1/conversations/", json={"question": "Hello?", "assistant_id": assistant["id"]}
            )
        )
        async with transaction() as db:
            await set_tenant(db, tenant.id)
            job = Job(user_id=tenant.owner_id, task="test.noop", name=f"Job of {tenant.slug}", payload={})
            db.add(job)
            await db.flush()
            job_id = job.id
        await tenant.member.get("/api/v1/users/")  # a permission.denied audit row

        tenant.ids = {
            "user": member_id,
            "group": uuid.UUID(group["id"]),
            "role": uuid.UUID(role["id"]),
            "api_key": uuid.UUID(key["id"]),
            "job": job_id,
            "provider": uuid.UUID(provider["id"]),
            "model": uuid.UUID(model["id"]),
            "budget": uuid.UUID(budget["id"]),
            "space": uuid.UUID(space["id"]),
            "space_member": uuid.UUID(space_member["id"]),
            "assistant": uuid.UUID(assistant["id"]),
            "assistant_key": uuid.UUID(assistant_key["id"]),
            "file": uuid.UUID(upload["id"]),
            "conversation": uuid.UUID(asked["conversation_id"]),
            "message": uuid.UUID(asked["message_id"]),
            "collection": uuid.UUID(collection["id"]),
            "document": uuid.UUID(document["id"]),
            "website": uuid.UUID(website["id"]),
        }
        tenant.markers = {str(value) for value in tenant.ids.values()} | {
            str(tenant.id),
            str(tenant.owner_id),
            tenant.slug,
            owner_email,
            member_email,
            key["prefix"],
            group["name"],
            role["name"],
            provider["name"],
            f"model-{tenant.slug}",
            space["name"],
            assistant["name"],
            assistant_key["prefix"],
            f"{tenant.slug}.txt",
            collection["name"],
            document["title"],
            website["name"],
            f"embedding-{tenant.slug}",
        }
        return tenant


@dataclass
class World:
    a: Tenant
    b: Tenant
    app: object


@pytest.fixture(scope="module")
async def world(app, settings, stub_llm):
    clients: list[httpx.AsyncClient] = []
    async with _client(app, **{"X-API-Key": settings.sysadmin_api_key}) as sysadmin:
        a = await Tenant.build(app, sysadmin, clients, stub_llm.url)
        b = await Tenant.build(app, sysadmin, clients, stub_llm.url)
        yield World(a=a, b=b, app=app)
        # Their websites' first crawls are queued and no worker ran here: with the tenants gone,
        # the next test's worker drops those jobs at once instead of crawling made-up sites.
        for tenant in (a, b):
            assert (await sysadmin.delete(f"/api/v1/sysadmin/tenants/{tenant.id}/")).status_code == 204
    for client in clients:
        await client.aclose()


def _comparable(response: httpx.Response) -> tuple:
    """Status, headers and body with the correlation id taken out."""
    cid = response.headers["x-correlation-id"]
    headers = sorted(
        (k, v) for k, v in response.headers.items() if k not in ("x-correlation-id", "content-length")
    )
    return response.status_code, headers, response.content.replace(cid.encode(), b"")


# --- lists ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", LIST_ROUTES)
async def test_lists_never_show_another_tenants_rows(world, path):
    a, b = world.a, world.b
    response = await a.owner.get(path)
    assert response.status_code == 200, response.text
    leaked = sorted(marker for marker in b.markers if marker in response.text)
    assert not leaked, f"{path} shows B's {leaked}"


async def test_the_list_probe_would_see_every_kind_of_object_in_its_own_tenant(world):
    """B's objects do appear in B's own lists, so the test above was able to fail."""
    b = world.b
    seen = set()
    for path in LIST_ROUTES:
        for client in (b.owner, b.member):
            response = await client.get(path)
            if response.status_code == 200:
                seen |= {marker for marker in b.markers if marker in response.text}
    expected = {
        str(b.ids[kind])
        for kind in (
            "user",
            "group",
            "role",
            "api_key",
            "job",
            "provider",
            "model",
            "budget",
            "space",
            "assistant",
            "conversation",
            "file",
        )
    }
    assert expected <= seen, expected - seen


async def test_the_api_key_of_one_tenant_reads_only_that_tenant(world):
    a, b = world.a, world.b
    response = await a.member.get("/api/v1/users/me/", headers={"Authorization": "", "X-API-Key": b.api_key})
    assert response.json()["tenant_id"] == str(b.id)
    assert not {marker for marker in a.markers if marker in response.text}


# --- every route with an id -------------------------------------------------------------------


def test_routes_under_test_are_the_applications(app):
    assert _param_routes(app) == PARAM_ROUTES
    assert _list_routes(app) == LIST_ROUTES
    assert len(ID_ROUTES) >= 15


@pytest.mark.parametrize(("method", "path"), PARAM_ROUTES)
def test_every_path_parameter_is_known(method, path):
    unknown = [p for p in _params(path) if p not in ID_KINDS and p not in OTHER_PARAMS]
    assert not unknown, (
        f"{method} {path} has path parameters {unknown} that the isolation suite does not know: add an id to "
        "ID_KINDS (and create a real object of that kind in Tenant.build), anything else to OTHER_PARAMS"
    )


def _url(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


@pytest.mark.parametrize(
    ("method", "path"),
    ID_ROUTES,
)
async def test_another_tenants_object_is_a_404_identical_to_a_random_id(world, method, path):
    a, b = world.a, world.b
    params = [p for p in _params(path) if p in ID_KINDS]
    fixed = {p: OTHER_PARAMS[p] for p in _params(path) if p in OTHER_PARAMS}
    arguments = REQUESTS.get((method, path), _json({}))(a)

    async def call(values: dict[str, str]) -> httpx.Response:
        return await a.owner.request(method, _url(path, {**fixed, **values}), **arguments)

    if method == "GET":  # the route does find A's own objects, so a 404 below means "not yours"
        own = await call({p: str(a.ids[kind_of(path, p)]) for p in params})
        assert own.status_code == 200, own.text
    # B's ids for every id parameter, then each parameter alone with A's own ids for the others.
    variants = [{p: str(b.ids[kind_of(path, p)]) for p in params}]
    if len(params) > 1:
        for chosen in params:
            own = {p: str(a.ids[kind_of(path, p)]) for p in params if p != chosen}
            variants.append({**own, chosen: str(b.ids[kind_of(path, chosen)])})
    for foreign in variants:
        randomised = {
            p: str(uuid.uuid4()) if v == str(b.ids[kind_of(path, p)]) else v for p, v in foreign.items()
        }
        cross_tenant, unknown = await call(foreign), await call(randomised)
        assert cross_tenant.status_code == 404, (foreign, cross_tenant.text)
        assert _comparable(cross_tenant) == _comparable(unknown), (foreign, cross_tenant.text, unknown.text)


async def test_tenant_b_is_untouched_by_tenant_a_calls(world):
    """Runs after the route calls above (file order): B's objects are all still there."""
    b = world.b
    users = (await b.owner.get("/api/v1/users/")).json()["items"]
    assert str(b.ids["user"]) in {user["id"] for user in users}
    assert (await b.owner.get(f"/api/v1/groups/{b.ids['group']}")).json()["member_ids"] == [
        str(b.ids["user"])
    ]
    assert str(b.ids["role"]) in {role["id"] for role in (await b.owner.get("/api/v1/roles/")).json()}
    assert (
        await b.member.get("/api/v1/users/me/", headers={"Authorization": "", "X-API-Key": b.api_key})
    ).status_code == 200
    assert (await b.owner.get(f"/api/v1/jobs/{b.ids['job']}/")).json()["status"] == "queued"
    assert (await b.owner.get(f"/api/v1/ai-models/{b.ids['model']}")).status_code == 200
    assert (await b.owner.get(f"/api/v1/admin/model-providers/{b.ids['provider']}")).status_code == 200
    assert str(b.ids["budget"]) in {budget["id"] for budget in (await b.owner.get("/api/v1/budgets/")).json()}
    assert (await b.owner.get(f"/api/v1/spaces/{b.ids['space']}/")).status_code == 200
    assistant = await b.owner.get(f"/api/v1/assistants/{b.ids['assistant']}/")
    assert (assistant.status_code, assistant.json()["space_id"]) == (200, str(b.ids["space"]))
    conversation = await b.owner.get(f"/api/v1/conversations/{b.ids['conversation']}/")
    assert conversation.json()["title"] != "probe"
    assert (await b.owner.get(f"/api/v1/files/{b.ids['file']}/download")).content == b"notes"
    assert (await b.owner.get(f"/api/v1/collections/{b.ids['collection']}")).status_code == 200
    document = await b.owner.get(f"/api/v1/documents/{b.ids['document']}")
    assert (document.status_code, document.json()["collection_id"]) == (200, str(b.ids["collection"]))
    keys = (await b.owner.get(f"/api/v1/assistants/{b.ids['assistant']}/api-keys/")).json()
    assert [(key["id"], key["revoked_at"]) for key in keys] == [(str(b.ids["assistant_key"]), None)]


# --- ids in request bodies and filters --------------------------------------------------------


async def test_another_tenants_ids_in_a_body_or_filter_are_as_unknown_as_random_ones(world):
    a, b = world.a, world.b
    cases = [
        ("POST", f"/api/v1/groups/{a.ids['group']}/members/", lambda v: {"json": {"user_id": v}}, "user"),
        (
            "POST",
            "/api/v1/users/",
            lambda v: {"json": {"email": f"x-{uuid.uuid4().hex[:6]}@a.example", "role_id": v}},
            "role",
        ),
        ("PATCH", f"/api/v1/users/{a.ids['user']}", lambda v: {"json": {"role_id": v}}, "role"),
        (
            "POST",
            "/api/v1/users/invitations/",
            lambda v: {"json": {"email": "y@a.example", "role_id": v}},
            "role",
        ),
        (
            "POST",
            "/api/v1/ai-models/",
            lambda v: {"json": {"kind": "completion", "name": "m", "provider_id": v}},
            "provider",
        ),
    ]
    for method, url, kwargs, kind in cases:
        cross_tenant = await a.owner.request(method, url, **kwargs(str(b.ids[kind])))
        unknown = await a.owner.request(method, url, **kwargs(str(uuid.uuid4())))
        assert cross_tenant.status_code in (404, 422), (url, cross_tenant.text)
        cross_body, unknown_body = cross_tenant.json(), unknown.json()
        cross_body.pop("correlation_id"), unknown_body.pop("correlation_id")
        assert (cross_tenant.status_code, cross_body) == (unknown.status_code, unknown_body), url
    for name in ("actor_id", "target_id"):
        rows = await a.owner.get("/api/v1/audit/logs", params={name: str(b.owner_id)})
        assert rows.json()["items"] == []


# --- jobs belong to the person who started them ------------------------------------------------


async def test_jobs_are_listed_read_and_cancelled_by_their_owner_only(world):
    a = world.a
    listed = (await a.owner.get("/api/v1/jobs/")).json()
    assert str(a.ids["job"]) in [job["id"] for job in listed["items"]]
    assert (await a.member.get("/api/v1/jobs/")).json()["items"] == []
    other_user = await a.member.get(f"/api/v1/jobs/{a.ids['job']}/")
    unknown = await a.member.get(f"/api/v1/jobs/{uuid.uuid4()}/")
    assert other_user.status_code == 404
    assert _comparable(other_user) == _comparable(unknown)
    assert (await a.member.post(f"/api/v1/jobs/{a.ids['job']}/cancel")).status_code == 404

    got = await a.owner.get(f"/api/v1/jobs/{a.ids['job']}/")
    assert (got.status_code, got.json()["status"], got.json()["reference_status"]) == (
        200,
        "queued",
        "queued",
    )
    cancelled = await a.owner.post(f"/api/v1/jobs/{a.ids['job']}/cancel")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    again = await a.owner.post(f"/api/v1/jobs/{a.ids['job']}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "job_finished"
    queued = (await a.owner.get("/api/v1/jobs/", params={"status": "queued"})).json()["items"]
    assert str(a.ids["job"]) not in {job["id"] for job in queued}
    bad = await a.owner.get("/api/v1/jobs/", params={"status": "sleeping"})
    assert bad.status_code == 422
    assert bad.json()["details"][0]["field"] == "status"


# --- concurrency ------------------------------------------------------------------------------


async def test_interleaved_requests_of_two_tenants_never_mix(world, settings):
    a, b = world.a, world.b
    pool = settings.db_pool_size + settings.db_max_overflow
    calls = []
    for tenant in (a, b):
        for _ in range(60):
            calls.append((tenant, "me", tenant.owner, {}))
            calls.append((tenant, "list", tenant.owner, {}))
        for _ in range(20):
            calls.append((tenant, "me", tenant.member, {"Authorization": "", "X-API-Key": tenant.api_key}))
    random.Random(7).shuffle(calls)
    assert len(calls) >= 5 * pool

    async def one(tenant, kind, client, headers):
        path = "/api/v1/users/me/" if kind == "me" else "/api/v1/users/"
        response = await client.get(path, headers=headers)
        return tenant, kind, headers, response

    results = await asyncio.gather(*(one(*call) for call in calls))
    for tenant, kind, headers, response in results:
        assert response.status_code == 200, response.text
        body = response.json()
        if kind == "me":
            assert body["tenant_id"] == str(tenant.id)
            assert body["id"] == str(tenant.ids["user"] if headers else tenant.owner_id)
        else:
            assert {user["tenant_id"] for user in body["items"]} == {str(tenant.id)}
            assert body["total"] == 2
