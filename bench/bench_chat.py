"""Time to first token added by Allting over calling the stub LLM directly, and throughput.

Starts the stub LLM and `allting serve` (embedded PostgreSQL and Redis in a temporary data
directory) as separate processes, configures a provider on the stub and a default model, then,
at 1, 10 and 50 concurrent streams:
  - direct:  a streaming POST to the stub's /v1/chat/completions, clock stopped at the first chunk
             with answer text (not the role-only chunk before it);
  - allting: a streaming POST to /api/v1/conversations/ as a signed-in user, stopped at the first
             `text` event — authentication, access checks, request building, budget check,
             storing the question, the gateway, and SSE re-encoding.
Both read their streams to the end, with aiohttp: a load generator built on httpx spent about
8 ms of CPU per stream and took most of a core at 50 streams, which slowed the direct calls as
much as Allting and hid what Allting adds; aiohttp's C parser costs a fraction of that, and each
line prints the load generator's CPU per stream so it can be checked. "paired p50" is the median
over rounds of the per-round difference of p50s, which cancels drift from other load on this
shared machine.
The same levels are then measured for a second assistant whose collection holds --passages
passages (default 10,000; written straight into the database with random unit vectors, since
embedding them would take minutes): each question is also embedded and runs the hybrid search.
"knowledge adds" is its paired p50 minus the one without knowledge. This is measured twice: with
the question embedded by the built-in local model, which competes for this machine's cores with
everything else, and by an embedding model the stub serves, as a provider (OpenAI, Azure, a
self-hosted embedding server) would, like the stub serves the answers.
Last, the CPU the API spends per question (200 questions one at a time) is compared with the
stub's for the same answers, and the API's memory is sampled while 200 streams are open at once.

    .venv/bin/python bench/bench_chat.py [--rounds 10] [--passages 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import httpx

LEVELS = (1, 10, 50)
HELD_STREAMS = 200
CPU_QUESTIONS = 200
# Common domain words (most passages contain one) and a rarer one: full-text search has work to do.
QUESTION = "Hur ansöker jag om bygglov för en altan vid skolan?"
PASSWORD = "benchmark password 1"
EMAIL = "bench@example.org"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _api_processes(pid: int) -> list[int]:
    """The `allting serve` process and the API processes uvicorn spawned for it (with --processes),
    not the embedded Redis or a model export it may also have started."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                spawned = b"spawn_main" in (entry / "cmdline").read_bytes()
                if spawned and int(_stat(int(entry.name))[1]) == pid:
                    children.append(int(entry.name))
            except OSError:
                continue
    return [pid, *children]


def _cpu_seconds(pids: list[int]) -> float:
    return sum(int(_stat(pid)[11]) + int(_stat(pid)[12]) for pid in pids) / os.sysconf("SC_CLK_TCK")


def _wait_until_idle(pids: list[int], timeout: float = 120) -> None:
    """Wait for the server's background start-up work (LiteLLM is imported after it is ready) to
    finish, so it does not compete with the first measurements."""
    deadline = time.monotonic() + timeout
    last = _cpu_seconds(pids)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _cpu_seconds(pids)
        if now - last < 0.05:
            return
        last = now


def _rss_mib(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


async def _direct(client: aiohttp.ClientSession, stub_url: str) -> float:
    started = time.perf_counter()
    first = None
    body = {"model": "stub-chat", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    async with client.post(f"{stub_url}/chat/completions", json=body) as response:
        async for line in response.content:
            if first is None and line.startswith(b"data:") and _has_text(line[5:]):
                first = time.perf_counter() - started
    return first


def _has_text(payload: bytes) -> bool:
    """Whether an OpenAI stream chunk carries answer text (the role-only first chunk does not)."""
    if payload.strip() == b"[DONE]":
        return False
    choices = json.loads(payload).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


async def _allting(client: aiohttp.ClientSession, base: str, assistant_id: str) -> float:
    started = time.perf_counter()
    first = None
    body = {"question": QUESTION, "assistant_id": assistant_id, "stream": True}
    async with client.post(f"{base}/api/v1/conversations/", json=body) as response:
        async for line in response.content:
            if first is None and line.startswith(b"event: text"):
                first = time.perf_counter() - started
    return first


async def _round(level: int, call) -> tuple[list[float], float, float]:
    """First-token times of `level` concurrent calls, the round's wall time, and the CPU this
    process (the load generator) spent on it."""
    started, cpu = time.perf_counter(), time.process_time()
    samples = await asyncio.gather(*(call() for _ in range(level)))
    return list(samples), time.perf_counter() - started, time.process_time() - cpu


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _setup(base: str, stub_url: str) -> tuple[str, str, str, str]:
    """The admin's token, personal assistant and space, and an embedding model served by the stub."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        token = (
            await client.post("/api/v1/users/login/token/", data={"username": EMAIL, "password": PASSWORD})
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        provider = (
            await client.post(
                "/api/v1/admin/model-providers/",
                json={
                    "name": "stub",
                    "provider_type": "vllm",
                    "endpoint": stub_url,
                    "api_key": "sk-bench-key",
                },
            )
        ).json()
        await client.post(
            "/api/v1/ai-models/",
            json={
                "kind": "completion",
                "name": "stub-chat",
                "provider_id": provider["id"],
                "context_window": 8192,
                "is_enabled": True,
                "is_default": True,
            },
        )
        embedding_model = (
            await client.post(
                "/api/v1/ai-models/",
                json={
                    "kind": "embedding",
                    "name": "stub-embed",
                    "provider_id": provider["id"],
                    "dimensions": 384,
                    "is_enabled": True,
                },
            )
        ).json()
        personal = (await client.get("/api/v1/spaces/type/personal/")).json()
        return token, personal["default_assistant"]["id"], personal["id"], embedding_model["id"]


async def _knowledge_assistant(
    base: str, token: str, space_id: str, data_dir: Path, passages: int, embedding_model_id: str | None = None
) -> str:
    """An assistant over a collection of `passages` passages in the caller's personal space, embedded
    by the given model (by default the tenant's default, the built-in local model)."""
    import numpy as np
    from pgvector.asyncpg import register_vector

    from bench_retrieval import _vocabulary

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client:
        collection = (
            await client.post(
                "/api/v1/collections/",
                json={"space_id": space_id, "name": "Bench", "embedding_model_id": embedding_model_id},
            )
        ).json()
    socket_dir = next(data_dir.rglob("postmaster.pid")).read_text().splitlines()[4]
    connection = await asyncpg.connect(f"postgresql://postgres@/allting?host={socket_dir}")
    try:
        await register_vector(connection)
        tenant_id, model_id, dims = await connection.fetchrow(
            "SELECT tenant_id, embedding_model_id, embedding_dims FROM collections WHERE id = $1",
            uuid.UUID(collection["id"]),
        )
        document_id = uuid.uuid4()
        await connection.execute(
            "INSERT INTO documents (id, tenant_id, collection_id, title, mime_type, size, content_hash, "
            "status, chunk_count, token_count, embedding_model_id) VALUES ($1, $2, $3, 'Bench handbook', "
            "'text/plain', $4, $5, 'ready', $6, $6 * 80, $7)",
            document_id,
            tenant_id,
            uuid.UUID(collection["id"]),
            passages * 400,
            uuid.uuid4().hex,
            passages,
            model_id,
        )
        rng = np.random.default_rng(7)
        vocabulary = _vocabulary(rng)
        weights = 1.0 / np.arange(1, len(vocabulary) + 1)  # Zipf, as in bench_retrieval.py
        words = rng.choice(len(vocabulary), size=(passages, 60), p=weights / weights.sum())
        vectors = rng.normal(0, 1, (passages, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [uuid.uuid4() for _ in range(passages)]
        chunk_rows = [
            (
                ids[i],
                tenant_id,
                document_id,
                uuid.UUID(collection["id"]),
                i,
                " ".join(vocabulary[word] for word in words[i]) + ".",
                80,
            )
            for i in range(passages)
        ]
        await connection.copy_records_to_table(
            "chunks",
            records=chunk_rows,
            columns=["id", "tenant_id", "document_id", "collection_id", "chunk_index", "text", "token_count"],
        )
        await connection.copy_records_to_table(
            "chunk_vectors",
            records=[
                (ids[i], tenant_id, uuid.UUID(collection["id"]), model_id, dims, vectors[i])
                for i in range(passages)
            ],
            columns=["id", "tenant_id", "source_id", "embedding_model_id", "dims", "embedding"],
        )
        # As autovacuum leaves them once ingestion is done: statistics gathered, and the full-text
        # index's pending list (every row of the COPY, scanned by each search until then) merged.
        await connection.execute("VACUUM ANALYZE chunks")
        await connection.execute("VACUUM ANALYZE chunk_vectors")
    finally:
        await connection.close()
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as client:
        assistant = await client.post(
            "/api/v1/assistants/",
            json={"space_id": space_id, "name": "Bench knowledge", "collection_ids": [collection["id"]]},
        )
        assistant.raise_for_status()
        return assistant.json()["id"]


async def _levels(direct_client, api_client, stub_url, base, assistant_id, rounds) -> dict[int, float]:
    """Print one line per level; return the paired p50 per level."""
    paired_by_level = {}
    for level in LEVELS:
        direct_all, api_all, paired, direct_time, api_time = [], [], [], 0.0, 0.0
        direct_cpu, api_cpu = 0.0, 0.0
        for _ in range(rounds):
            d, d_elapsed, d_cpu = await _round(level, lambda: _direct(direct_client, stub_url))
            a, a_elapsed, a_cpu = await _round(level, lambda: _allting(api_client, base, assistant_id))
            direct_all += d
            api_all += a
            direct_time += d_elapsed
            api_time += a_elapsed
            direct_cpu += d_cpu
            api_cpu += a_cpu
            paired.append(statistics.median(a) * 1000 - statistics.median(d) * 1000)
        paired_by_level[level] = statistics.median(paired)
        print(
            f"{level:>7} {_p(direct_all, 0.5):10.1f} {_p(api_all, 0.5):11.1f} "
            f"{_p(api_all, 0.5) - _p(direct_all, 0.5):9.1f} {paired_by_level[level]:10.1f} "
            f"{_p(direct_all, 0.95):10.1f} {_p(api_all, 0.95):11.1f} {direct_time / api_time:9.2f} "
            f"{direct_cpu / len(direct_all) * 1000:>6.2f} / {api_cpu / len(api_all) * 1000:.2f}"
        )
    return paired_by_level


HEADER = (
    f"{'streams':>7} {'direct p50':>10} {'allting p50':>11} {'added p50':>9} {'paired p50':>10} "
    f"{'direct p95':>10} {'allting p95':>11} {'thr ratio':>9} load generator CPU/stream (direct / allting, ms)"
)


async def main(rounds: int, passages: int, processes: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="allting-bench-chat-"))
    stub_port, api_port = _free_port(), _free_port()
    stub_url = f"http://127.0.0.1:{stub_port}/v1"
    base = f"http://127.0.0.1:{api_port}"
    stub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "allting.testing.stub_llm",
            "--port",
            str(stub_port),
            "--delay-per-token",
            "0.005",
            "--answer",
            " ".join(["word"] * 40),
        ]
    )
    env = {
        **os.environ,
        "ALLTING_DATA_DIR": str(tmp / "data"),
        "ALLTING_ADMIN_EMAIL": EMAIL,
        "ALLTING_ADMIN_PASSWORD": PASSWORD,
        "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",
        "LOG_LEVEL": "WARNING",
        "LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
    }
    api = subprocess.Popen(
        [
            *(sys.executable, "-m", "allting", "serve", "--port", str(api_port), "--no-worker"),
            *("--processes", str(processes)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(f"{stub_url}/models")
        _wait(f"{base}/api/readyz")
        api_pids = _api_processes(api.pid)
        token, assistant_id, space_id, stub_embedding_id = await _setup(base, stub_url)
        knowledge_id = await _knowledge_assistant(base, token, space_id, tmp / "data", passages)
        provider_knowledge_id = await _knowledge_assistant(
            base, token, space_id, tmp / "data", passages, stub_embedding_id
        )
        timeout = aiohttp.ClientTimeout(total=60)
        # Idle connections are dropped before the servers' own 5 s keep-alive ends, so none is
        # reused just as the server closes it.
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=HELD_STREAMS, keepalive_timeout=3), timeout=timeout
            ) as direct_client,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=HELD_STREAMS, keepalive_timeout=3),
                timeout=timeout,
                headers={"Authorization": f"Bearer {token}"},
            ) as api_client,
        ):
            for _ in range(3):
                await _direct(direct_client, stub_url)
                await _allting(api_client, base, assistant_id)
                await _allting(api_client, base, knowledge_id)
                await _allting(api_client, base, provider_knowledge_id)
            _wait_until_idle(api_pids)
            print(f"rounds per level: {rounds}, API processes: {processes}")
            print("without knowledge")
            print(HEADER)
            plain = await _levels(direct_client, api_client, stub_url, base, assistant_id, rounds)
            for label, knowledge_assistant_id in (
                ("the built-in local embedding model, on this machine's cores", knowledge_id),
                ("an embedding model served by the stub, as a provider", provider_knowledge_id),
            ):
                print(f"with a collection of {passages:,} passages, questions embedded by {label}")
                print(HEADER)
                knowledge = await _levels(
                    direct_client, api_client, stub_url, base, knowledge_assistant_id, rounds
                )
                print(
                    "knowledge adds (paired p50): "
                    + ", ".join(f"{knowledge[level] - plain[level]:.1f} ms at {level}" for level in LEVELS)
                )
            # CPU per question, one question at a time: the API's against the stub's, which
            # generates and streams the same answer.
            api_cpu, stub_cpu = _cpu_seconds(api_pids), _cpu_seconds([stub.pid])
            for _ in range(CPU_QUESTIONS):
                await _allting(api_client, base, assistant_id)
            api_cpu, stub_cpu = _cpu_seconds(api_pids) - api_cpu, _cpu_seconds([stub.pid]) - stub_cpu
            print(
                f"CPU per question without knowledge: API {api_cpu / CPU_QUESTIONS * 1000:.1f} ms, "
                f"stub {stub_cpu / CPU_QUESTIONS * 1000:.1f} ms ({CPU_QUESTIONS} questions one at a time)"
            )
            idle = _rss_mib(api_pids)
            slow = {"question": "Hello", "assistant_id": assistant_id, "stream": True}

            async def hold() -> None:
                async with api_client.post(f"{base}/api/v1/conversations/", json=slow) as response:
                    async for _ in response.content:
                        pass

            # More streams than any round above opened at once, so the figure is not hidden by
            # memory the process already holds from those rounds; the peak is sampled throughout.
            tasks = [asyncio.create_task(hold()) for _ in range(HELD_STREAMS)]
            peak = idle
            while not all(task.done() for task in tasks):
                peak = max(peak, _rss_mib(api_pids))
                await asyncio.sleep(0.01)
            await asyncio.gather(*tasks)
            print(
                f"API RSS idle {idle:.1f} MiB, peak with {HELD_STREAMS} open streams {peak:.1f} MiB: "
                f"{(peak - idle) * 1024 / HELD_STREAMS:.0f} KiB per open stream"
            )
    finally:
        for process in (api, stub):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=1, help="API processes (allting serve --processes)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.passages, arguments.processes))
