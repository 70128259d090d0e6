"""A local website for crawler tests and the crawl benchmark, served by uvicorn on 127.0.0.1.

Layout (depth from "/"):
  /                      0  home: navigation, script, style, footer and links of every kind
  /about /docs/ /blog/   1  /private/secret (robots.txt disallows /private/), /members/ (basic auth),
                            /files/report.pdf and /files/report (PDF bytes), /huge (2 MB, declared),
                            /huge-chunked (2 MB, streamed), /go/internal (302 to /landing),
                            /go/private (302 to 10.255.255.1), /go/metadata (302 to 169.254.169.254),
                            /go/trap (307 to a second server on 127.0.0.2),
                            /flaky (503 `flaky_failures` times, then 200)
  /docs/intro /docs/guide/ /news /noindex /blog/2024/...   2
  /docs/guide/advanced /hidden-gem                          3
  /docs/guide/deep/                                         4
  /docs/guide/deeper                                        5
/slow answers after 3 s and /go/flaky redirects to /flaky (both linked from nowhere).
/sitemap-only is listed in the sitemaps and linked from nowhere. robots.txt (503 the first
`robots_failures` times) names /sitemap_index.xml, which lists /sitemap-pages.xml,
/sitemap-blog.xml.gz (gzip) and /sitemap-evil.xml (an entity-expansion bomb that must be refused).
/sitemap.xml is a plain urlset.

`SiteServer.requests` logs every request (path with query, headers) so tests can prove what was
never fetched. `generated_pages=N` adds /gen/0 … /gen/N-1 (a binary tree of links) for the
benchmark. Run as a script to serve in a separate process: `python site_server.py --pages 300`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import html
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from allting.testing.background_server import BackgroundServer

AUTH_USER = "editor"
AUTH_PASSWORD = "s3cret-pass"
PDF_BYTES = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
HUGE_BYTES = 2 * 1024 * 1024
SCRIPT_MARKER = "SCRIPT-MARKER-9f2c"
NAV_MARKER = "NAV-MARKER-71ab"
FOOTER_MARKER = "FOOTER-MARKER-44d0"
COOKIE_MARKER = "COOKIE-MARKER-0c3e"

_LOREM = (
    "Kommunen erbjuder service till invånare och företag. The municipality offers services to "
    "residents and businesses, with opening hours, forms and guidance for every department. "
)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    at: float


@dataclass
class SiteState:
    generated_pages: int = 0
    generated_delay: float = 0.0  # server time per /gen/ page, like a CMS rendering it
    trap_url: str = "http://127.0.0.2:9/"
    crawl_delay: float | None = None
    robots_status: int = 200
    robots_sitemap: bool = True
    news_version: int = 1
    flaky_failures: int = 0  # how many times /flaky answers 503 before it works
    robots_failures: int = 0  # how many times robots.txt answers 503 before it works
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _flaky_seen: int = 0
    _robots_seen: int = 0

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self._flaky_seen = 0
            self._robots_seen = 0
        self.crawl_delay = None
        self.robots_status = 200
        self.robots_sitemap = True
        self.news_version = 1
        self.flaky_failures = 0
        self.robots_failures = 0


def _page(title: str, body: str, *, head: str = "") -> str:
    return f"""<!doctype html>
<html lang="sv"><head><meta charset="utf-8"><title>{html.escape(title)}</title>{head}
<style>body {{ font-family: sans-serif }} .x::after {{ content: "STYLE-TEXT" }}</style>
<script>window.tracking = "{SCRIPT_MARKER}";</script></head>
<body>
<header class="site-header"><a href="/">Test Site</a> <span>Header tagline</span></header>
<nav><ul><li><a href="/">{NAV_MARKER} Home</a></li><li><a href="/about">About us</a></li>
<li><a href="/docs/">Docs</a></li></ul></nav>
<div class="cookie-banner">{COOKIE_MARKER} We use cookies.</div>
<main>
<h1>{html.escape(title)}</h1>
{body}
</main>
<footer>{FOOTER_MARKER} Contact: info@example.org</footer>
<script>console.log("{SCRIPT_MARKER} at end")</script>
</body></html>"""


def _links(*paths: str) -> str:
    return (
        "<ul>" + "".join(f'<li><a href="{html.escape(p)}">{html.escape(p)}</a></li>' for p in paths) + "</ul>"
    )


STATIC_PAGES: dict[str, tuple[str, str]] = {
    "/about": (
        "About",
        "<p>We are a test municipality.</p>"
        + _links("/news", "/noindex", "/docs/../about", "/about?b=2&a=1#x"),
    ),
    "/docs/": ("Docs", "<p>Documentation index.</p>" + _links("intro", "guide/", "/docs/intro#part")),
    "/docs/intro": (
        "Introduction",
        "<p>Start here.</p><h2>Installing</h2><p>Run the installer.</p><h3>On Linux</h3>"
        "<p>Use the package.</p><table><tr><td>Cell A</td><td>Cell B</td></tr></table>",
    ),
    "/docs/guide/": ("Guide", "<p>The guide.</p>" + _links("advanced")),
    "/docs/guide/advanced": ("Advanced", "<p>Advanced topics.</p>" + _links("deep/")),
    "/docs/guide/deep/": ("Deep", "<p>Deep page.</p>" + _links("../deeper")),
    "/docs/guide/deeper": ("Deeper", "<p>Deeper page.</p>"),
    "/blog/": ("Blog", "<p>News from us.</p>" + _links("2024/first", "2024/second")),
    "/blog/2024/first": ("First post", "<p>First blog post.</p>"),
    "/blog/2024/second": ("Second post", "<p>Second blog post.</p>"),
    "/private/secret": ("Secret", "<p>PRIVATE-MARKER never crawl this.</p>"),
    "/private/": ("Private index", "<p>Private index.</p>"),
    "/landing": ("Landing", "<p>Reached through a redirect.</p>"),
    "/sitemap-only": ("Sitemap only", "<p>Only the sitemap knows this page.</p>"),
    "/hidden-gem": ("Hidden gem", "<p>Linked only from a noindex page.</p>"),
    "/members/": ("Members", "<p>MEMBERS-MARKER for editors.</p>" + _links("handbook")),
    "/members/handbook": ("Handbook", "<p>The members handbook.</p>"),
    "/flaky": ("Flaky", "<p>Works on the second try.</p>"),
    "/caught": ("Caught", "<p>The trap server's page.</p>"),
}

HOME_LINKS = (
    "/about",
    "/docs/",
    "/blog/",
    "/private/secret",
    "/members/",
    "/files/report.pdf",
    "/files/report",
    "/huge",
    "/huge-chunked",
    "/go/internal",
    "/go/private",
    "/go/metadata",
    "/go/trap",
    "/flaky",
    "https://example.org/elsewhere",
    "mailto:someone@example.org",
    "javascript:void(0)",
    "#top",
)


def _sitemap(urls: list[str]) -> bytes:
    entries = "".join(f"<url><loc>{html.escape(u)}</loc></url>" for u in urls)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'
    ).encode()


EVIL_SITEMAP = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>http://x/&lol3;</loc></url></urlset>"""


def create_app(state: SiteState) -> Starlette:
    async def handle(request: Request) -> Response:
        path = request.url.path
        full = path + (f"?{request.url.query}" if request.url.query else "")
        with state.lock:
            state.requests.append(
                RecordedRequest(full, {k.lower(): v for k, v in request.headers.items()}, time.monotonic())
            )
        base = str(request.base_url).rstrip("/")

        if path == "/robots.txt":
            with state.lock:
                state._robots_seen += 1
                failing = state._robots_seen <= state.robots_failures
            if failing:
                return PlainTextResponse("robots.txt briefly unavailable", 503)
            if state.robots_status != 200:
                return PlainTextResponse("robots.txt unavailable", state.robots_status)
            lines = ["User-agent: *", "Disallow: /private/"]
            if state.crawl_delay is not None:
                lines.append(f"Crawl-delay: {state.crawl_delay}")
            lines += ["", "User-agent: EvilBot", "Disallow: /"]
            if state.robots_sitemap:
                lines.append(f"Sitemap: {base}/sitemap_index.xml")
            return PlainTextResponse("\n".join(lines) + "\n")
        if path == "/sitemap_index.xml":
            children = ["/sitemap-pages.xml", "/sitemap-blog.xml.gz", "/sitemap-evil.xml"]
            entries = "".join(f"<sitemap><loc>{base}{c}</loc></sitemap>" for c in children)
            body = (
                f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</sitemapindex>'
            )
            return Response(body, media_type="application/xml")
        if path == "/sitemap-pages.xml":
            urls = [f"{base}{p}" for p in ("/", "/about", "/docs/intro", "/sitemap-only", "/private/secret")]
            urls += ["https://other.example/page", f"{base}/about#again"]
            return Response(_sitemap(urls), media_type="application/xml")
        if path == "/sitemap-blog.xml.gz":
            urls = [f"{base}/blog/2024/first", f"{base}/blog/2024/second"]
            return Response(gzip.compress(_sitemap(urls)), media_type="application/gzip")
        if path == "/sitemap-evil.xml":
            return Response(EVIL_SITEMAP, media_type="application/xml")
        if path == "/sitemap.xml":
            urls = [f"{base}{p}" for p in ("/about", "/sitemap-only")]
            return Response(_sitemap(urls), media_type="application/xml")

        if path == "/":
            links = list(HOME_LINKS)
            if state.generated_pages:
                links.append("/gen/0")
            body = (
                "<p>Welcome to the <b>test</b> site.<br>Second line of the welcome.</p>"
                '<div style="display: none">HIDDEN-MARKER</div>'
                "<h2>Services</h2><p>Service one.</p><p>Service two.</p>"
                + _links(*links)
                + f'<a href="{base}/about#team">About (absolute)</a> <a href="HTTP://127.0.0.1:{request.url.port}/about">x</a>'
            )
            return Response(_page("Home", body), media_type="text/html; charset=utf-8")
        if path == "/news":
            body = f"<p>News version {state.news_version}.</p>"
            return Response(_page("News", body), media_type="text/html")
        if path == "/noindex":
            body = "<p>Do not index me.</p>" + _links("/hidden-gem")
            head = '<meta name="robots" content="noindex, follow">'
            return Response(_page("Noindex", body, head=head), media_type="text/html")
        if path.startswith("/members/"):
            expected = "Basic " + base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
            if request.headers.get("authorization") != expected:
                return PlainTextResponse(
                    "login required", 401, headers={"WWW-Authenticate": 'Basic realm="m"'}
                )
        if path in ("/files/report.pdf", "/files/report"):
            return Response(PDF_BYTES, media_type="application/pdf")
        if path == "/huge":
            body = _page("Huge", "<p>" + "x" * HUGE_BYTES + "</p>")
            return Response(body, media_type="text/html")
        if path == "/huge-chunked":

            async def chunks():
                yield b"<!doctype html><html><body><p>"
                for _ in range(HUGE_BYTES // 65536):
                    yield b"y" * 65536
                yield b"</p></body></html>"

            return StreamingResponse(chunks(), media_type="text/html")
        if path == "/slow":
            await asyncio.sleep(3)
            return Response(_page("Slow", "<p>Too late.</p>"), media_type="text/html")
        if path == "/go/internal":
            return RedirectResponse("/landing", 302)
        if path == "/go/flaky":
            return RedirectResponse("/flaky", 302)
        if path == "/go/private":
            return RedirectResponse("http://10.255.255.1/", 302)
        if path == "/go/metadata":
            return RedirectResponse("http://169.254.169.254/latest/meta-data", 302)
        if path == "/go/trap":
            return RedirectResponse(state.trap_url, 307)
        if path == "/flaky":
            with state.lock:
                state._flaky_seen += 1
                failing = state._flaky_seen <= state.flaky_failures
            if failing:
                return PlainTextResponse("try again", 503)
        if path.startswith("/gen/"):
            try:
                index = int(path.removeprefix("/gen/"))
            except ValueError:
                index = -1
            if 0 <= index < state.generated_pages:
                if state.generated_delay:
                    await asyncio.sleep(state.generated_delay)
                children = [f"/gen/{c}" for c in (2 * index + 1, 2 * index + 2) if c < state.generated_pages]
                text = "".join(f"<p>Paragraph {n} of page {index}. {_LOREM * 3}</p>" for n in range(4))
                return Response(_page(f"Generated {index}", text + _links(*children)), media_type="text/html")
        if path in STATIC_PAGES:
            title, body = STATIC_PAGES[path]
            return Response(_page(title, body), media_type="text/html; charset=utf-8")
        return PlainTextResponse("not found", 404)

    return Starlette(routes=[Route("/{path:path}", handle)])


class SiteServer(BackgroundServer):
    """The test site in a uvicorn thread on `host` (a free port by default)."""

    label = "test site"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, generated_pages: int = 0) -> None:
        self.state = SiteState(generated_pages=generated_pages)
        super().__init__(host=host, port=port)
        self._serve(create_app(self.state))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def reset(self) -> None:
        self.state.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the crawler test site.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pages", type=int, default=300, help="generated pages under /gen/")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="server time per generated page")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"http://{host}:{port}", flush=True)
    config = uvicorn.Config(
        create_app(SiteState(generated_pages=args.pages, generated_delay=args.delay_ms / 1000)),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
