"""Crawl throughput (pages per second) vs plain httpx GETs of the same pages, in one run.

The test site (tests/knowledge/site_server.py) runs in its own process with --pages N generated
pages under /gen/ (a binary tree of links, about 5 KB of HTML each). "crawl" is
`allting.knowledge.crawler.crawl` from /gen/0 in follow-links mode: robots.txt, the outbound
guard with pinned connections, per-hop checks, readable text extraction, hashing. "baseline" is
an httpx.AsyncClient GETting exactly the URLs the crawl fetched, with the same concurrency, and
reading each body. Rounds alternate between the two; medians are reported.

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


def _start_site(pages: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(SITE_SERVER), "--pages", str(pages)],
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


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    process, base = _start_site(args.pages)
    try:
        # Warm-up: imports, connection set-up, the server's first requests.
        _, urls, _ = await _crawl_once(base, args.pages, args.concurrency)
        await _baseline_once(urls, args.concurrency)
        crawl_rates, baseline_rates = [], []
        requests = 0
        for _ in range(args.rounds):
            elapsed, fetched, requests = await _crawl_once(base, args.pages, args.concurrency)
            assert len(fetched) == args.pages, (len(fetched), args.pages)
            crawl_rates.append(len(fetched) / elapsed)
            baseline_rates.append(len(urls) / await _baseline_once(urls, args.concurrency))

        crawler_module.extract_html = _links_only
        bare_rates = []
        try:
            for _ in range(args.rounds):
                elapsed, fetched, _ = await _crawl_once(base, args.pages, args.concurrency)
                bare_rates.append(len(fetched) / elapsed)
        finally:
            crawler_module.extract_html = extract_html

        # Where the difference goes: text extraction alone, on the same bodies.
        async with httpx.AsyncClient(trust_env=False) as client:
            bodies = [(await client.get(url)).content for url in urls[:100]]
        started = time.perf_counter()
        for url, body in zip(urls, bodies, strict=False):
            extract_html(body, url)
        extract_ms = (time.perf_counter() - started) / len(bodies) * 1000
    finally:
        process.terminate()
        process.wait(timeout=10)

    crawl_rate = statistics.median(crawl_rates)
    baseline_rate = statistics.median(baseline_rates)
    size = sum(len(b) for b in bodies) / len(bodies)
    print(
        f"site: {args.pages} pages of ~{size / 1024:.1f} KiB, concurrency {args.concurrency}, "
        f"{args.rounds} rounds (median)"
    )
    print(f"  crawl     {crawl_rate:8.1f} pages/s  ({requests} requests per crawl incl. robots.txt)")
    print(f"  baseline  {baseline_rate:8.1f} pages/s  (plain httpx GET of the same {len(urls)} URLs)")
    print(f"  ratio     {crawl_rate / baseline_rate:8.2f}")
    bare_rate = statistics.median(bare_rates)
    print(f"  crawl without text extraction {bare_rate:.1f} pages/s, ratio {bare_rate / baseline_rate:.2f}")
    print(f"  text extraction alone: {extract_ms:.2f} ms/page ({1000 / extract_ms:.0f} pages/s on one core)")
    print(f"  per round crawl:    {', '.join(f'{r:.0f}' for r in crawl_rates)}")
    print(f"  per round baseline: {', '.join(f'{r:.0f}' for r in baseline_rates)}")


if __name__ == "__main__":
    asyncio.run(main())
