"""The crawler core against a local site (tests/knowledge/site_server.py) on 127.0.0.1.

Loopback is refused by the outbound guard unless listed, so every crawl here passes
allowed_networks=("127.0.0.1/32",) explicitly; production passes OUTBOUND_ALLOWED_NETWORKS. A
second server on 127.0.0.2 (a "trap") proves that refused redirects never open a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from site_server import (
    AUTH_PASSWORD,
    AUTH_USER,
    COOKIE_MARKER,
    FOOTER_MARKER,
    NAV_MARKER,
    SCRIPT_MARKER,
    SiteServer,
)

from allting.knowledge.crawler import (
    CrawlFinished,
    CrawlSettings,
    CrawlStats,
    PageFailed,
    PageFetched,
    PageSkipped,
    PageUnchanged,
    crawl,
    extract_html,
    normalize_url,
    parse_sitemap,
)

LOOPBACK = ("127.0.0.1/32",)


@pytest.fixture(scope="module")
def trap():
    with SiteServer(host="127.0.0.2") as server:
        yield server


@pytest.fixture(scope="module")
def site_server(trap):
    with SiteServer() as server:
        server.state.trap_url = f"{trap.url}/caught"
        yield server


@pytest.fixture
def site(site_server, trap):
    site_server.reset()
    trap.reset()
    return site_server


@dataclasses.dataclass
class Result:
    events: list
    stats: CrawlStats

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def fetched(self) -> dict[str, PageFetched]:
        return {e.final_url: e for e in self.of(PageFetched)}

    def skipped(self, reason: str) -> set[str]:
        return {e.url for e in self.of(PageSkipped) if e.reason == reason}

    def failed(self) -> dict[str, PageFailed]:
        return {e.url: e for e in self.of(PageFailed)}


def settings_for(site: SiteServer, path: str = "/", **overrides) -> CrawlSettings:
    values = dict(
        mode="crawl",
        max_depth=10,
        max_pages=200,
        allowed_networks=LOOPBACK,
        per_page_timeout=5,
        max_page_bytes=1_000_000,
        max_crawl_seconds=20,
    )
    values.update(overrides)
    return CrawlSettings(site.url + path, **values)


async def run(settings: CrawlSettings, known: dict[str, str] | None = None) -> Result:
    events = [event async for event in crawl(settings, known_hashes=known or {})]
    assert isinstance(events[-1], CrawlFinished)
    assert not any(isinstance(e, CrawlFinished) for e in events[:-1])
    return Result(events[:-1], events[-1].stats)


def page_paths(site: SiteServer) -> list[str]:
    return [p for p in site.paths() if p != "/robots.txt"]


# --------------------------------------------------------------------------------------------
# Following links


async def test_follow_links_breadth_first_up_to_max_depth(site):
    result = await run(settings_for(site, max_depth=2))
    fetched = result.fetched()
    u = site.url
    depths = {url.removeprefix(u): event.depth for url, event in fetched.items()}
    assert depths["/"] == 0
    assert depths["/about"] == depths["/docs/"] == depths["/blog/"] == 1
    assert depths["/docs/intro"] == depths["/docs/guide/"] == depths["/news"] == 2
    assert max(depths.values()) == 2
    # One hop too deep: reported, never requested.
    assert f"{u}/docs/guide/advanced" in result.skipped("depth")
    assert f"{u}/hidden-gem" in result.skipped("depth")
    assert "/docs/guide/advanced" not in site.paths()
    # Breadth first: every depth-1 page is requested before any depth-2 page.
    order = page_paths(site)
    assert max(order.index(p) for p in ("/about", "/docs/", "/blog/")) < order.index("/docs/intro")
    # URL normalisation: fragments, absolute links, upper-case scheme and dot segments collapse
    # into one /about; a reordered query is its own (sorted) URL.
    assert page_paths(site).count("/about") == 1
    assert f"{u}/about?a=1&b=2" in fetched
    # Links that are not http(s) are ignored, other hosts are off site.
    assert result.skipped("off_site") == {"https://example.org/elsewhere"}
    assert result.stats.stopped_reason == "completed"
    assert result.stats.pages_crawled == len(fetched)
    assert result.stats.skipped == len(result.of(PageSkipped))


async def test_full_depth_reaches_the_deepest_page(site):
    result = await run(settings_for(site, max_depth=5))
    assert result.fetched()[f"{site.url}/docs/guide/deeper"].depth == 5
    assert not result.skipped("depth")


async def test_max_pages_bounds_the_pages_downloaded(site):
    known = {f"{site.url}/gone": "0" * 64}
    result = await run(settings_for(site, max_pages=3, concurrency=4), known)
    assert len(result.of(PageFetched)) == 3
    assert result.stats.stopped_reason == "max_pages"
    assert len(page_paths(site)) <= 3 + len(result.of(PageFailed)) + len(result.of(PageSkipped))
    # A crawl cut short reports nothing as disappeared.
    assert result.stats.disappeared == frozenset()


async def test_start_path_is_the_default_scope(site):
    result = await run(settings_for(site, "/docs/"))
    paths = {url.removeprefix(site.url) for url in result.fetched()}
    assert paths == {
        "/docs/",
        "/docs/intro",
        "/docs/guide/",
        "/docs/guide/advanced",
        "/docs/guide/deep/",
        "/docs/guide/deeper",
    }
    # The navigation links to / and /about are outside /docs/: skipped, not fetched.
    assert {f"{site.url}/", f"{site.url}/about"} <= result.skipped("off_site")
    assert "/about" not in site.paths()


# --------------------------------------------------------------------------------------------
# Sitemaps


async def test_sitemap_mode_reads_robots_sitemaps_index_and_gzip(site):
    result = await run(settings_for(site, mode="sitemap"))
    u = site.url
    paths = {url.removeprefix(u) for url in result.fetched()}
    assert paths == {"/", "/about", "/docs/intro", "/sitemap-only", "/blog/2024/first", "/blog/2024/second"}
    assert all(e.depth == 0 for e in result.of(PageFetched))
    # No link following in sitemap mode.
    assert "/docs/" not in site.paths()
    assert "/docs/guide/" not in site.paths()
    # robots.txt still applies to sitemap URLs, and off-site entries are skipped.
    assert f"{u}/private/secret" in result.skipped("robots")
    assert "/private/secret" not in site.paths()
    assert "https://other.example/page" in result.skipped("off_site")
    # The entity-expansion sitemap is refused by the XML parser, the others still count.
    evil = result.failed()[f"{u}/sitemap-evil.xml"]
    assert "DTD" in evil.reason
    assert result.stats.stopped_reason == "completed"
    assert site.paths()[:2] == ["/robots.txt", "/sitemap_index.xml"]
    # One sitemap could not be read, so nothing is reported as disappeared.
    known = {f"{u}/gone": "0" * 64}
    site.reset()
    assert (await run(settings_for(site, mode="sitemap"), known)).stats.disappeared == frozenset()


async def test_sitemap_mode_limits_pages(site):
    result = await run(settings_for(site, mode="sitemap", max_pages=2))
    assert len(result.of(PageFetched)) == 2
    assert result.stats.stopped_reason == "max_pages"


async def test_sitemap_mode_falls_back_to_sitemap_xml(site):
    site.state.robots_sitemap = False
    result = await run(settings_for(site, mode="sitemap"))
    assert {url.removeprefix(site.url) for url in result.fetched()} == {"/about", "/sitemap-only"}
    assert "/sitemap.xml" in site.paths()


async def test_sitemap_given_as_start_url(site):
    result = await run(settings_for(site, "/sitemap-blog.xml.gz", mode="sitemap"))
    assert {url.removeprefix(site.url) for url in result.fetched()} == {
        "/blog/2024/first",
        "/blog/2024/second",
    }


async def test_sitemap_missing_ends_as_sitemap_failed(site):
    result = await run(settings_for(site, "/nothing/here.xml", mode="sitemap"))
    assert result.failed()[f"{site.url}/nothing/here.xml"].reason == "HTTP 404"
    assert result.stats.stopped_reason == "sitemap_failed"


def test_sitemap_parser_refuses_entities_and_gzip_bombs(monkeypatch):
    import gzip

    from allting.knowledge import crawler

    monkeypatch.setattr(crawler, "SITEMAP_MAX_BYTES", 100_000)

    with pytest.raises(crawler._Fail, match="DTD"):
        parse_sitemap(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><urlset/>')
    bomb = gzip.compress(b"<urlset>" + b" " * (crawler.SITEMAP_MAX_BYTES + 10) + b"</urlset>")
    with pytest.raises(crawler._Fail, match="larger than"):
        parse_sitemap(bomb)
    assert parse_sitemap(b"https://a.example/1\nhttps://a.example/2\n") == (
        "urlset",
        ["https://a.example/1", "https://a.example/2"],
    )


# --------------------------------------------------------------------------------------------
# robots.txt


async def test_robots_disallowed_pages_are_never_requested(site):
    result = await run(settings_for(site))
    assert f"{site.url}/private/secret" in result.skipped("robots")
    assert not any(p.startswith("/private/") for p in site.paths())
    assert site.paths()[0] == "/robots.txt"
    assert site.paths().count("/robots.txt") == 1
    # noindex pages are not yielded, but their links are followed.
    assert f"{site.url}/noindex" in result.skipped("robots")
    assert f"{site.url}/hidden-gem" in result.fetched()


async def test_robots_rules_for_our_agent_name(site):
    result = await run(settings_for(site, user_agent="EvilBot/2.0 (+https://evil.example)"))
    assert result.skipped("robots") == {f"{site.url}/"}
    assert site.paths() == ["/robots.txt"]
    assert result.stats.stopped_reason == "start_failed"


async def test_robots_unavailable_means_nothing_is_fetched(site):
    site.state.robots_status = 503
    result = await run(settings_for(site))
    skip = result.of(PageSkipped)[0]
    assert skip.reason == "robots" and "HTTP 503" in skip.detail
    assert site.paths() == ["/robots.txt", "/robots.txt"]  # tried again once, as a page would be
    assert result.stats.stopped_reason == "start_failed"

    site.reset()
    site.state.robots_status = 404
    result = await run(settings_for(site, max_depth=1))
    assert f"{site.url}/private/secret" in result.fetched()


async def test_robots_briefly_unavailable_is_asked_again_and_the_crawl_goes_on(site):
    site.state.robots_failures = 1
    result = await run(settings_for(site, max_depth=1))
    assert site.paths()[:2] == ["/robots.txt", "/robots.txt"]
    assert f"{site.url}/about" in result.fetched()
    assert f"{site.url}/private/secret" not in result.fetched()  # its rules, read the second time
    assert result.stats.stopped_reason == "completed"


async def test_robots_can_be_ignored_when_configured(site):
    result = await run(settings_for(site, respect_robots=False, max_depth=1))
    assert "PRIVATE-MARKER" in result.fetched()[f"{site.url}/private/secret"].text
    assert "/robots.txt" not in site.paths()


async def test_crawl_delay_is_honoured_with_a_cap(site):
    site.state.crawl_delay = 0.25
    result = await run(settings_for(site, max_pages=4))
    assert len(result.of(PageFetched)) == 4
    times = [r.at for r in site.requests if r.path != "/robots.txt"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2, gaps

    site.reset()
    site.state.crawl_delay = 60
    started = time.monotonic()
    result = await run(settings_for(site, max_pages=3, max_crawl_delay=0.1))
    assert len(result.of(PageFetched)) == 3
    assert time.monotonic() - started < 3


# --------------------------------------------------------------------------------------------
# Redirects and the outbound guard


async def test_redirect_within_the_site_is_followed(site):
    result = await run(settings_for(site, max_depth=1))
    landing = result.fetched()[f"{site.url}/landing"]
    assert landing.url == f"{site.url}/go/internal"
    assert landing.title == "Landing"
    assert site.paths().count("/landing") == 1


async def test_redirects_to_private_addresses_are_refused_before_connecting(site, trap):
    result = await run(settings_for(site, max_depth=1))
    failed = result.failed()
    assert "10.255.255.1" in failed[f"{site.url}/go/private"].reason
    assert "private address" in failed[f"{site.url}/go/private"].reason
    assert "169.254.169.254" in failed[f"{site.url}/go/metadata"].reason
    assert "link-local" in failed[f"{site.url}/go/metadata"].reason
    assert "loopback" in failed[f"{site.url}/go/trap"].reason
    assert not any(e.transient for e in failed.values() if "/go/" in e.url)
    assert trap.requests == []


async def test_redirect_to_an_allowed_other_host_needs_an_include_pattern(site, trap):
    networks = ("127.0.0.1/32", "127.0.0.2/32")
    result = await run(settings_for(site, max_depth=1, allowed_networks=networks))
    assert f"{site.url}/go/trap" in result.skipped("off_site")
    assert trap.requests == []

    site.reset()
    result = await run(
        settings_for(site, max_depth=1, allowed_networks=networks, include_patterns=("/", f"{trap.url}/"))
    )
    assert result.fetched()[f"{trap.url}/caught"].url == f"{site.url}/go/trap"
    assert [r.path for r in trap.requests] == ["/robots.txt", "/caught"]


async def test_loopback_is_refused_without_an_explicit_allowance(site):
    result = await run(settings_for(site, allowed_networks=""))
    assert "loopback" in result.failed()[f"{site.url}/"].reason
    assert result.stats.stopped_reason == "start_failed"
    assert site.requests == []


# --------------------------------------------------------------------------------------------
# Change detection


async def test_unchanged_pages_and_disappeared_pages(site):
    first = await run(settings_for(site, max_depth=2))
    known = {e.final_url: e.content_hash for e in first.of(PageFetched)}
    gone = f"{site.url}/gone"
    known[gone] = "f" * 64
    site.reset()
    site.state.news_version = 2

    second = await run(settings_for(site, max_depth=2), known)
    assert [e.final_url for e in second.of(PageFetched)] == [f"{site.url}/news"]
    assert "News version 2" in second.of(PageFetched)[0].text
    unchanged = {e.url for e in second.of(PageUnchanged)}
    assert unchanged == set(known) - {gone, f"{site.url}/news"}
    assert all(e.content_hash == known[e.url] for e in second.of(PageUnchanged))
    assert second.stats.unchanged == len(unchanged)
    assert second.stats.disappeared == {gone}
    assert second.stats.seen_urls == set(known) - {gone}


async def test_transient_failures_are_retried_and_keep_pages(site):
    site.state.flaky_failures = 1
    result = await run(settings_for(site, max_depth=1))
    assert f"{site.url}/flaky" in result.fetched()
    assert site.paths().count("/flaky") == 2

    site.reset()
    site.state.flaky_failures = 1
    known = {f"{site.url}/flaky": "0" * 64, f"{site.url}/gone": "1" * 64}
    result = await run(settings_for(site, max_depth=1, retries=0), known)
    failure = result.failed()[f"{site.url}/flaky"]
    assert failure.reason == "HTTP 503" and failure.transient
    assert f"{site.url}/flaky" in result.stats.seen_urls
    # With a transient failure the crawl is not trusted to say what disappeared.
    assert result.stats.disappeared == frozenset()


async def test_retry_follows_the_same_redirect_again(site):
    site.state.flaky_failures = 1
    result = await run(settings_for(site, "/go/flaky", max_depth=0))
    page = result.fetched()[f"{site.url}/flaky"]
    assert page.url == f"{site.url}/go/flaky"
    assert site.paths() == ["/robots.txt", "/go/flaky", "/flaky", "/go/flaky", "/flaky"]


async def test_page_timeout(site):
    started = time.monotonic()
    result = await run(settings_for(site, "/slow", per_page_timeout=0.3, retries=0))
    failure = result.failed()[f"{site.url}/slow"]
    assert "timed out" in failure.reason and failure.transient
    assert result.stats.stopped_reason == "start_failed"
    assert time.monotonic() - started < 2


async def test_crawl_time_limit(site):
    site.state.crawl_delay = 0.3
    known = {f"{site.url}/gone": "1" * 64}
    started = time.monotonic()
    result = await run(settings_for(site, max_crawl_seconds=0.8), known)
    assert time.monotonic() - started < 2
    assert result.stats.stopped_reason == "max_crawl_seconds"
    assert 1 <= result.stats.pages_crawled <= 4
    assert result.stats.disappeared == frozenset()


# --------------------------------------------------------------------------------------------
# Patterns, auth, sizes, types


async def test_exclude_patterns(site):
    result = await run(settings_for(site, exclude_patterns=["/blog/*", "/docs/guide"]))
    excluded = {url.removeprefix(site.url) for url in result.skipped("excluded")}
    assert {"/blog/", "/docs/guide/"} <= excluded
    assert not any(p.startswith(("/blog", "/docs/guide")) for p in site.paths())
    assert f"{site.url}/docs/intro" in result.fetched()


async def test_include_patterns_replace_the_prefix_rule(site):
    result = await run(settings_for(site, include_patterns=["/docs/*"]))
    paths = {url.removeprefix(site.url) for url in result.fetched()}
    assert paths == {
        "/docs/",
        "/docs/intro",
        "/docs/guide/",
        "/docs/guide/advanced",
        "/docs/guide/deep/",
        "/docs/guide/deeper",
    }
    # The start page is fetched for its links but not yielded.
    start = [e for e in result.of(PageSkipped) if e.url == f"{site.url}/"]
    assert start[0].reason == "excluded" and "links were followed" in start[0].detail
    assert "/about" not in site.paths()


async def test_basic_auth_is_sent_only_to_the_start_origin(site, trap):
    without = await run(settings_for(site, max_depth=2))
    assert without.failed()[f"{site.url}/members/"].reason == "HTTP 401"

    site.reset()
    result = await run(
        settings_for(
            site,
            max_depth=2,
            http_auth=(AUTH_USER, AUTH_PASSWORD),
            allowed_networks=("127.0.0.1/32", "127.0.0.2/32"),
            include_patterns=("/", f"{trap.url}/"),
        )
    )
    assert "MEMBERS-MARKER" in result.fetched()[f"{site.url}/members/"].text
    assert f"{site.url}/members/handbook" in result.fetched()
    assert all("authorization" in r.headers for r in site.requests)
    # The redirect to another origin was followed, without the credentials.
    assert f"{trap.url}/caught" in result.fetched()
    assert trap.requests and not any("authorization" in r.headers for r in trap.requests)
    assert AUTH_PASSWORD not in repr(result.stats) + repr(settings_for(site, http_auth=("u", AUTH_PASSWORD)))


async def test_oversize_and_non_html_pages_are_skipped(site):
    result = await run(settings_for(site, max_depth=1))
    too_large = result.skipped("too_large")
    assert {f"{site.url}/huge", f"{site.url}/huge-chunked"} == too_large
    assert result.skipped("not_html") == {f"{site.url}/files/report", f"{site.url}/files/report.pdf"}
    # By extension: never requested. By content type: requested, never parsed.
    assert "/files/report.pdf" not in site.paths()
    assert "/files/report" in site.paths()
    assert result.stats.bytes_received < 1_000_000 * 2 + 200_000


async def test_readable_text_drops_scripts_and_navigation(site):
    result = await run(settings_for(site, max_depth=2))
    home = result.fetched()[f"{site.url}/"]
    assert home.title == "Home"
    for marker in (
        SCRIPT_MARKER,
        NAV_MARKER,
        FOOTER_MARKER,
        COOKIE_MARKER,
        "HIDDEN-MARKER",
        "STYLE-TEXT",
        "Header tagline",
    ):
        assert marker not in home.text
    assert "Welcome to the test site.\nSecond line of the welcome." in home.text
    assert [s.heading for s in home.sections] == ["Home", "Services"]
    assert home.sections[1].text.startswith("Services\n\nService one.\n\nService two.")
    assert home.text == "\n\n".join(s.text for s in home.sections)

    intro = result.fetched()[f"{site.url}/docs/intro"]
    assert [(s.heading, s.level, s.text) for s in intro.sections] == [
        ("Introduction", 1, "Introduction\n\nStart here."),
        ("Installing", 2, "Installing\n\nRun the installer."),
        ("On Linux", 3, "On Linux\n\nUse the package.\n\nCell A Cell B"),
    ]
    assert intro.text.startswith("Introduction\n\nStart here.\n\nInstalling")
    assert len(home.content_hash) == 64


def test_extract_html_details():
    page = (
        b"<html><head><title> T </title><base href='/sub/'>"
        b"<meta name='robots' content='NOINDEX'></head><body>"
        b"<article><h2>A</h2><p>x&nbsp;y</p><ul><li>one</li><li>two</li></ul></article>"
        b"<a href='rel'>r</a><a href='#f'>f</a><a href='tel:1'>t</a></body></html>"
    )
    doc = extract_html(page, "http://h.example/base/page")
    assert doc.title == "T" and doc.noindex and not doc.nofollow
    assert doc.links == ("http://h.example/sub/rel", "http://h.example/sub/")
    assert doc.sections[0].heading == "A"
    assert doc.sections[0].text == "A\n\nx y\n\none\ntwo"
    latin1 = "<html><body><p>Åtgärd för ärenden</p></body></html>".encode("latin-1")
    assert "Åtgärd" in extract_html(latin1, "http://h.example/", charset="iso-8859-1").text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTP://Example.COM:80/a/./b/../c#frag", "http://example.com/a/c"),
        ("https://example.com:443", "https://example.com/"),
        ("https://example.com:8443/x?b=2&a=1&utm_source=n", "https://example.com:8443/x?a=1&b=2"),
        ("https://example.com/%7euser/a%2fb/ä", "https://example.com/~user/a%2Fb/%C3%A4"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
        ("https://Example.com./x", "https://example.com/x"),
        ("http://[::1]:8080/a", "http://[::1]:8080/a"),
        ("http://\x00a.example/", None),
        ("http://exa mple.com/", None),
        ("http://[::1", None),
        ("http://a.example:99999/", None),
        ("https://user:pw@example.com/", None),
        ("mailto:a@example.com", None),
        ("javascript:alert(1)", None),
        ("ftp://example.com/file", None),
        ("", None),
    ],
)
def test_normalize_url(raw, expected):
    assert normalize_url(raw) == expected


def test_normalize_url_resolves_relative_links():
    assert normalize_url("../x?q", "https://e.example/a/b/c") == "https://e.example/a/x?q"
    assert normalize_url("//other.example/p", "https://e.example/") == "https://other.example/p"


def test_settings_are_validated():
    with pytest.raises(ValueError, match="mode"):
        CrawlSettings("https://e.example/", mode="spider")
    with pytest.raises(ValueError):
        CrawlSettings("file:///etc/passwd")
    with pytest.raises(ValueError, match="max_pages"):
        CrawlSettings("https://e.example/", max_pages=0)
    settings = CrawlSettings("https://e.example/", include_patterns=["/a"], http_auth=["u", "p"])
    assert settings.include_patterns == ("/a",) and settings.http_auth == ("u", "p")
    assert "'p'" not in repr(settings)


async def test_closing_early_cancels_the_crawl(site):
    settings = settings_for(site)
    async with contextlib.aclosing(crawl(settings)) as events:
        async for event in events:
            if isinstance(event, PageFetched):
                break
    await asyncio.sleep(0.1)
    count = len(site.paths())
    await asyncio.sleep(0.3)
    assert len(site.paths()) == count


def test_page_sections_feed_the_chunker():
    from allting.knowledge.chunking import split_sections

    page = (
        "<html><body><nav>Menu</nav><main><h1>Parking</h1>"
        + "<p>Residents apply for a parking permit online. It costs 400 kronor a month.</p>" * 3
        + "<h2>Visitors</h2><p>Visitors pay at the machine or in the app.</p></main></body></html>"
    )
    doc = extract_html(page.encode(), "https://kommun.example/parkering")
    chunks = split_sections(doc.sections, chunk_tokens=40, overlap_tokens=0)
    assert {chunk.heading for chunk in chunks} == {"Parking", "Visitors"}
    assert chunks[-1].heading == "Visitors" and "machine" in chunks[-1].text
    assert not any("Menu" in chunk.text for chunk in chunks)
