"""Time to first token through the AI gateway vs straight to the stub, at 1, 10 and 50 streams.

The stub runs in its own process so its CPU does not compete with the client being measured.
"Raw" is a plain httpx streaming POST that stops the clock at the first SSE chunk carrying text;
"gateway" is `stream_chat` stopping at the first TextDelta: the outbound guard, the typed-error,
retry and fallback machinery, and the OpenAI SDK client with its pinned transport (the stub is an
`openai_compatible` endpoint, so chat takes the gateway's direct OpenAI-protocol path, not LiteLLM).
Both read their streams to the end so connections are reused the same way.

"added" compares the percentiles of all samples of each path. On a shared machine whole rounds
are slowed by other processes, which swings those figures by tens of milliseconds at 50 streams;
"paired p50" is the median over rounds of (gateway p50 - raw p50) within the same round, which
cancels such drift, and is the steadier figure for small differences.

    .venv/bin/python bench/bench_gateway.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

import httpx

from allting.ai.gateway import GatewayConfig, ModelTarget, TextDelta, stream_chat

MESSAGES = [{"role": "user", "content": "Summarise the council decision in one sentence."}]
CONCURRENCY_LEVELS = (1, 10, 50)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_stub(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "allting.testing.stub_llm", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).raise_for_status()
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("stub did not start")


async def _raw_ttft(client: httpx.AsyncClient, base: str) -> float:
    body = {
        "model": "stub-chat",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", f"{base}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - started
    assert first is not None
    return first


async def _gateway_ttft(target: ModelTarget, config: GatewayConfig) -> float:
    started = time.perf_counter()
    first: float | None = None
    async for event in stream_chat(target, MESSAGES, config=config):
        if first is None and isinstance(event, TextDelta):
            first = time.perf_counter() - started
    assert first is not None
    return first


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def run(rounds: int) -> None:
    port = _free_port()
    stub = _start_stub(port)
    base = f"http://127.0.0.1:{port}/v1"
    target = ModelTarget(
        litellm_model="stub-chat", api_base=base, api_key="sk-bench", provider_type="openai_compatible"
    )
    config = GatewayConfig(allowed_networks="127.0.0.1")
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    try:
        async with httpx.AsyncClient(
            limits=limits, timeout=30, headers={"authorization": "Bearer sk-bench"}
        ) as raw:
            for _ in range(5):  # warm both paths: imports, connection pools, LiteLLM's lazy setup
                await _raw_ttft(raw, base)
                await _gateway_ttft(target, config)
            print(f"TTFT in ms, {rounds} rounds per level, stub in a separate process, delay_per_token=0")
            header = (
                f"{'streams':>7} | {'raw p50':>8} {'raw p95':>8} | {'gw p50':>8} {'gw p95':>8} | "
                f"{'added p50':>9} {'added p95':>9} | {'paired p50':>10} | {'ratio p50':>9}"
            )
            print(header)
            print("-" * len(header))
            for concurrency in CONCURRENCY_LEVELS:
                raw_samples: list[float] = []
                gateway_samples: list[float] = []
                paired: list[float] = []
                for round_number in range(rounds):
                    # Alternate which path goes first so slow drift affects both equally.
                    order = ("raw", "gw") if round_number % 2 == 0 else ("gw", "raw")
                    round_raw: list[float] = []
                    round_gateway: list[float] = []
                    for path in order:
                        if path == "raw":
                            round_raw = await asyncio.gather(
                                *(_raw_ttft(raw, base) for _ in range(concurrency))
                            )
                        else:
                            round_gateway = await asyncio.gather(
                                *(_gateway_ttft(target, config) for _ in range(concurrency))
                            )
                    raw_samples += round_raw
                    gateway_samples += round_gateway
                    paired.append(_percentile(round_gateway, 0.5) - _percentile(round_raw, 0.5))
                raw_p50, raw_p95 = (_percentile(raw_samples, q) * 1000 for q in (0.5, 0.95))
                gw_p50, gw_p95 = (_percentile(gateway_samples, q) * 1000 for q in (0.5, 0.95))
                print(
                    f"{concurrency:>7} | {raw_p50:>8.2f} {raw_p95:>8.2f} | {gw_p50:>8.2f} {gw_p95:>8.2f} | "
                    f"{gw_p50 - raw_p50:>9.2f} {gw_p95 - raw_p95:>9.2f} | "
                    f"{statistics.median(paired) * 1000:>10.2f} | {gw_p50 / raw_p50:>9.2f}"
                )
            print(f"samples per path and level: {', '.join(str(rounds * c) for c in CONCURRENCY_LEVELS)}")
    finally:
        stub.terminate()
        stub.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
