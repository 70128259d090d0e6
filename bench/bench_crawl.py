"""Crawl throughput (pages per second) vs plain httpx GETs of the same pages, in one run.

The test site (tests/knowledge/site_server.py) runs in its own process with --pages N generated
pages under /gen/ (a binary tree of links, about 5 KB of HTML each). "crawl" is
`allting.knowledge.crawler.crawl` from /gen/0 in follow-links mode: robots.txt, the outbound
guard with pinned connections, per-hop checks, readable text extraction, hashing. "baseline" is
an httpx.AsyncClient GETting exactly the URLs the crawl fetched, with the same concurrency, and
reading each body. Rounds alternate between the two; medians are reported. This runs twice: with
pages served as fast as the local server can (0 ms), where the crawler's own CPU time is all that
shows, and with 20 ms of server time per page, closer to a real CMS across a network.

A third figure, "crawl without text extraction", replaces the BeautifulSoup extractor with a
regular expression that only finds the /gen/ links: it separates the cost of the fetching
machinery (guard, pinning, robots, scope, hashing) from the cost of turning HTML into text.

    .venv/bin/python bench/bench_crawl.py [--pages 300] [--rounds 5] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from allting.knowledge import crawler as crawler_module
from allting.knowledge.crawler import (
    CrawlFinished,
    CrawlSettings,
    HtmlDocument,
    PageFetched,
    crawl,
    extract_html,
    normalize_url,
)

SITE_SERVER = Path(__file__).resolve().parent.parent / "tests" / "knowledge" / "site_server.py"


def _start_site(pages: int, delay_ms: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(SITE_SERVER), "--pages", str(pages), "--delay-ms", str(delay_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = process.stdout.readline().strip()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/gen/0", timeout=1).raise_for_status()
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("test site did not start")


async def _crawl_once(base: str, pages: int, concurrency: int) -> tuple[float, list[str], int]:
    settings = CrawlSettings(
        f"{base}/gen/0",
        include_patterns=("/gen/*",),  # "/gen/0" alone would scope the crawl to "/gen/0/"
        max_depth=64,
        max_pages=pages + 10,
        concurrency=concurrency,
        allowed_networks=("127.0.0.1/32",),
        per_page_timeout=10,
        max_crawl_seconds=300,
    )
    fetched: list[str] = []
    started = time.perf_counter()
    requests = 0
    async for event in crawl(settings):
        if isinstance(event, PageFetched):
            fetched.append(event.final_url)
        elif isinstance(event, CrawlFinished):
            requests = event.stats.requests
    return time.perf_counter() - started, fetched, requests


async def _baseline_once(urls: list[str], concurrency: int) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            response = await client.get(queue.get_nowait())
            response.raise_for_status()
            _ = response.content

    started = time.perf_counter()
    async with httpx.AsyncClient(trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return time.perf_counter() - started


def _links_only(data: bytes, url: str, *, charset: str | None = None) -> HtmlDocument:
    links = tuple(normalize_url(m.decode(), url) for m in re.findall(rb'href="(/gen/[0-9]+)"', data))
    return HtmlDocument("t", "x", (), links, False, False)


@dataclass
class Figures:
    delay_ms: float
    crawl: list[float]
    baseline: list[float]
    bare: list[float]
    requests: int
    urls: list[str]
    bodies: list[bytes]


async def _measure(pages: int, rounds: int, concurrency: int, delay_ms: float, bare: bool) -> Figures:
    process, base = _start_site(pages, delay_ms)
    try:
        # Warm-up: imports, connection set-up, the server's first requests.
        _, urls, _ = await _crawl_once(base, pages, concurrency)
        await _baseline_once(urls, concurrency)
        async with httpx.AsyncClient(trust_env=False) as client:
            bodies = [(await client.get(url)).content for url in urls[:100]]
        figures = Figures(delay_ms, [], [], [], 0, urls, bodies)
        for _ in range(rounds):
            elapsed, fetched, figures.requests = await _crawl_once(base, pages, concurrency)
            assert len(fetched) == pages, (len(fetched), pages)
            figures.crawl.append(len(fetched) / elapsed)
            figures.baseline.append(len(urls) / await _baseline_once(urls, concurrency))
        if bare:
            crawler_module.extract_html = _links_only
            try:
                for _ in range(rounds):
                    elapsed, fetched, _ = await _crawl_once(base, pages, concurrency)
                    figures.bare.append(len(fetched) / elapsed)
            finally:
                crawler_module.extract_html = extract_html
        return figures
    finally:
        process.terminate()
        process.wait(timeout=10)


def _extraction_ms(urls: list[str], bodies: list[bytes]) -> float:
    started = time.perf_counter()
    for url, body in zip(urls, bodies, strict=False):
        extract_html(body, url)
    return (time.perf_counter() - started) / len(bodies) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--delays-ms", default="0,20", help="server time per page, comma-separated (0 = local file speed)"
    )
    args = parser.parse_args()
    delays = [float(d) for d in args.delays_ms.split(",")]

    results = [
        await _measure(args.pages, args.rounds, args.concurrency, delay, bare=index == 0)
        for index, delay in enumerate(delays)
    ]
    extract_ms = _extraction_ms(results[0].urls, results[0].bodies)
    size = sum(len(b) for b in results[0].bodies) / len(results[0].bodies)

    print(
        f"site: {args.pages} pages of ~{size / 1024:.1f} KiB, concurrency {args.concurrency}, "
        f"{args.rounds} rounds each (medians); {results[0].requests} requests per crawl incl. robots.txt"
    )
    print(f"{'server time/page':>18} {'crawl p/s':>10} {'httpx GET p/s':>14} {'ratio':>6}")
    for figures in results:
        crawl_rate = statistics.median(figures.crawl)
        baseline_rate = statistics.median(figures.baseline)
        print(
            f"{figures.delay_ms:>15.0f} ms {crawl_rate:>10.1f} {baseline_rate:>14.1f} "
            f"{crawl_rate / baseline_rate:>6.2f}"
        )
        print(f"{'':>18} per round crawl {', '.join(f'{r:.0f}' for r in figures.crawl)}")
        print(f"{'':>18} per round GET   {', '.join(f'{r:.0f}' for r in figures.baseline)}")
    first = results[0]
    bare_rate = statistics.median(first.bare)
    print(
        f"crawl without text extraction ({first.delay_ms:.0f} ms): {bare_rate:.1f} pages/s, "
        f"ratio {bare_rate / statistics.median(first.baseline):.2f}"
    )
    print(f"text extraction alone: {extract_ms:.2f} ms/page ({1000 / extract_ms:.0f} pages/s on one core)")


if __name__ == "__main__":
    asyncio.run(main())
