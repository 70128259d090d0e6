"""Website crawler core: fetch a site through the outbound guard and yield what was found.

No database here: `crawl(settings, known_hashes=...)` is an async generator of events, and the
caller (ingestion) decides what to store. Decisions worth knowing:

- Every request (robots.txt, sitemaps, pages and each redirect hop) goes through the shared
  egress guard: `check_url_async` before the hop, and a `GuardedTransport` that pins the
  connection to the checked address. A hop the guard refuses ends the page as `PageFailed` with
  the guard's reason, before any connection to that address is opened.
- Scope is an explicit rule, not a regex built from the URL: http(s) only, the start URL's
  scheme, host and port, and a path under the start URL's directory prefix ("/docs" and "/docs/"
  give "/docs/"; "/docs/index.html" gives "/docs/"). Path include patterns replace the prefix
  rule; include patterns written as full URLs ("https://docs.example.org/*") add other hosts.
  Patterns with `*`, `?` or `[` are globs (fnmatch, `*` crosses "/"), others are prefixes. Exclude
  patterns always win. If the start URL itself redirects (http to https, to www.), the final
  location becomes a second root of the scope.
- The start page is always fetched, for its links; its content is yielded only if it is in
  scope (e.g. a start page outside the include patterns is reported as skipped, "excluded").
- Crawl mode is breadth-first with exact depths: a page of depth k starts only when nothing of
  depth < k-1 is still running, so no URL is first met at a depth larger than its shortest
  path. Links beyond max_depth are reported as skipped ("depth") at the end. Sitemap mode reads
  robots.txt `Sitemap:` lines (else /sitemap.xml, or the start URL itself when it names an .xml
  file), follows sitemap indexes, accepts gzip, and yields pages at depth 0 without following links.
- max_pages bounds the HTML pages downloaded and parsed (fetched + unchanged + noindex);
  failures and skips do not use it up. max_crawl_seconds bounds the whole run (wall clock,
  including time the consumer spends between events).
- Identity is the final URL after redirects: `PageFetched.final_url` and `PageUnchanged.url`.
  A redirect onto a URL that is already queued or done is skipped as "duplicate".
- `content_hash` is the SHA-256 of the title and the extracted text, so a new title alone
  counts as a change.
- `CrawlStats.seen_urls` holds the final URLs of fetched and unchanged pages plus URLs that
  failed transiently (time-outs, 5xx, 429, connection errors): their content may still be there.
  `CrawlStats.disappeared` is `known_hashes` minus `seen_urls`, but only for a crawl that
  completed without limits, without transient failures and (sitemap mode) with every sitemap
  read; otherwise it is empty so that a time-out or a flaky section never deletes half a site.
- robots.txt: fetched through the guard with urllib.robotparser; 4xx means no rules, 5xx or
  unreachable (after `retries` more tries, like a page) means everything is disallowed (RFC 9309). Crawl-delay and Request-rate are
  honoured up to `max_crawl_delay` seconds between requests to that origin. `<meta name=robots>`
  and `X-Robots-Tag` noindex/nofollow are honoured too.
- HTTP basic auth is sent only to the start URL's origin (scheme, host, port), hop by hop.
- Only text/html and application/xhtml+xml bodies are parsed; links to obvious file types
  (.pdf, .png, ...) are skipped without a request. Bodies are capped at max_page_bytes (decoded).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import heapq
import itertools
import re
import time
import warnings
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser
from xml.etree.ElementTree import ParseError

import httpx
from bs4 import BeautifulSoup, Comment, Tag, XMLParsedAsHTMLWarning
from defusedxml import ElementTree as SafeElementTree
from defusedxml.common import DefusedXmlException

from allting.platform.egress import (
    REDIRECT_STATUSES,
    EgressError,
    HostNotFound,
    check_url_async,
    check_url_form,
    guarded_client,
)
from allting.platform.logging import get_logger

__all__ = [
    "DEFAULT_USER_AGENT",
    "CrawlEvent",
    "CrawlFinished",
    "CrawlSettings",
    "CrawlStats",
    "PageFailed",
    "PageFetched",
    "PageSkipped",
    "PageUnchanged",
    "WebSection",
    "crawl",
    "extract_html",
    "normalize_url",
]

log = get_logger(__name__)

# XHTML pages are parsed with the HTML parser on purpose (no XML entity handling on web input).
warnings.filterwarnings("ignore", category=XMLParsedAsHTMLWarning)

DEFAULT_USER_AGENT = "AlltingBot/0.1 (+https://allting.example/bot)"
CrawlMode = Literal["crawl", "sitemap"]
SkipReason = Literal["robots", "excluded", "not_html", "too_large", "off_site", "depth", "duplicate"]

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
MAX_REDIRECTS = 5
ROBOTS_MAX_BYTES = 512 * 1024  # what Google reads; the rest is ignored
SITEMAP_MAX_BYTES = 50 * 1024 * 1024  # the protocol's limit, uncompressed
SITEMAP_MAX_URLS = 50_000  # per sitemap file, as in the protocol
MAX_SITEMAPS = 100
RETRY_BACKOFF_SECONDS = 0.5
INLINE_PARSE_BYTES = 64 * 1024  # smaller pages are parsed on the event loop, larger ones in a thread
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRACKING_PARAMETER = re.compile(r"^(utm_[a-z_]+|fbclid|gclid|msclkid|mc_cid|mc_eid)$", re.IGNORECASE)
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT_ESCAPE = re.compile(r"%([0-9a-fA-F]{2})")
_HOST = re.compile(r"^([a-z0-9_-]+(\.[a-z0-9_-]+)*|[0-9a-f:.]*:[0-9a-f:.]*)$")  # a name, IPv4 or IPv6
_FILE_EXTENSIONS = frozenset({
    "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "odp", "rtf", "csv", "txt",
    "json", "xml", "rss", "atom", "zip", "gz", "tgz", "tar", "rar", "7z", "bz2", "xz", "png", "jpg",
    "jpeg", "gif", "webp", "svg", "ico", "bmp", "tif", "tiff", "avif", "heic", "mp3", "mp4", "m4a",
    "m4v", "wav", "ogg", "oga", "webm", "avi", "mov", "mkv", "flac", "css", "js", "mjs", "map", "woff",
    "woff2", "ttf", "otf", "eot", "exe", "msi", "dmg", "iso", "apk", "bin",
})  # fmt: skip


# --------------------------------------------------------------------------------------------
# Settings and events


@dataclass(frozen=True)
class CrawlSettings:
    start_url: str
    mode: CrawlMode = "crawl"
    max_depth: int = 3
    max_pages: int = 500
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    http_auth: tuple[str, str] | None = field(default=None, repr=False)
    per_page_timeout: float = 30.0
    max_page_bytes: int = 10 * 1024 * 1024
    max_crawl_seconds: float = 3600.0
    respect_robots: bool = True
    user_agent: str = DEFAULT_USER_AGENT
    # None: the operator's OUTBOUND_ALLOWED_NETWORKS. Tests pass ("127.0.0.1/32",) explicitly.
    allowed_networks: str | tuple[str, ...] | None = None
    concurrency: int = 4
    max_crawl_delay: float = 5.0
    retries: int = 1

    def __post_init__(self) -> None:
        for name in ("include_patterns", "exclude_patterns"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(p.strip() for p in value if p and p.strip()))
        if isinstance(self.allowed_networks, list):
            object.__setattr__(self, "allowed_networks", tuple(self.allowed_networks))
        if self.http_auth is not None:
            object.__setattr__(self, "http_auth", tuple(self.http_auth))
        if self.mode not in ("crawl", "sitemap"):
            raise ValueError(f"mode must be 'crawl' or 'sitemap', not {self.mode!r}")
        try:
            check_url_form(self.start_url)
        except EgressError as exc:
            raise ValueError(f"start_url: {exc.reason}") from None
        if normalize_url(self.start_url) is None:
            raise ValueError(f"start_url {self.start_url!r} is not an http(s) URL")
        for name in ("max_depth", "retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more")
        for name in ("max_pages", "max_page_bytes", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("per_page_timeout", "max_crawl_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_crawl_delay < 0:
            raise ValueError("max_crawl_delay must be 0 or more")
        if self.http_auth is not None and len(self.http_auth) != 2:
            raise ValueError("http_auth must be (user, password)")


@dataclass(frozen=True, slots=True)
class WebSection:
    """A part of a page under one heading (text starts with the heading); a `chunking.SectionLike`."""

    heading: str | None
    text: str
    level: int = 0
    page: int | None = None


@dataclass(frozen=True, slots=True)
class PageFetched:
    url: str
    final_url: str
    title: str
    text: str
    sections: tuple[WebSection, ...]
    content_hash: str
    depth: int


@dataclass(frozen=True, slots=True)
class PageUnchanged:
    url: str  # the final URL, the key of known_hashes
    content_hash: str


@dataclass(frozen=True, slots=True)
class PageFailed:
    url: str
    reason: str
    transient: bool = False  # time-out, 5xx, 429 or connection error: the page may well still exist


@dataclass(frozen=True, slots=True)
class PageSkipped:
    url: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CrawlStats:
    pages_crawled: int  # PageFetched events (new or changed pages)
    failed: int
    skipped: int
    unchanged: int
    seen_urls: frozenset[str]
    # completed | max_pages | max_crawl_seconds | start_failed | sitemap_failed
    stopped_reason: str
    disappeared: frozenset[str] = frozenset()
    skipped_by_reason: Mapping[str, int] = field(default_factory=dict)
    requests: int = 0
    bytes_received: int = 0
    elapsed_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class CrawlFinished:
    stats: CrawlStats


CrawlEvent = PageFetched | PageUnchanged | PageFailed | PageSkipped | CrawlFinished


# --------------------------------------------------------------------------------------------
# URLs and scope


def _fix_escapes(value: str) -> str:
    """Upper-case percent escapes and decode the ones that stand for unreserved characters."""

    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT_ESCAPE.sub(fix, value)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment in (".", ".."):
            if segment == ".." and len(out) > 1:
                out.pop()
            if last:
                out.append("")
            continue
        out.append(segment)
    result = "/".join(out)
    return result if result.startswith("/") else "/" + result


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The canonical form of an http(s) URL, or None for anything else.

    Resolves it against `base`, lowercases scheme and host (IDNA for non-ASCII names), drops the
    default port, the fragment and tracking parameters (utm_*, fbclid, gclid, ...), removes dot
    segments, normalises percent escapes and sorts query parameters by name (stable).
    """
    url = re.sub(r"[\t\n\r]", "", url or "").strip()
    if not url:
        return None
    try:
        if base:
            url = urljoin(base, url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or parts.username is not None or parts.password is not None:
            return None
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return None
    host = host.rstrip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not _HOST.match(host):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    path = _remove_dot_segments(parts.path or "/")
    path = _fix_escapes(quote(path, safe="/%:@!$&'()*+,;=-._~"))
    query = ""
    if parts.query:
        pairs = [pair for pair in parts.query.split("&") if pair]
        pairs = [pair for pair in pairs if not _TRACKING_PARAMETER.match(pair.split("=", 1)[0])]
        pairs.sort(key=lambda pair: pair.split("=", 1)[0])
        query = _fix_escapes(quote("&".join(pairs), safe="=&%+:@!$'()*,;/?-._~"))
    return urlunsplit((scheme, netloc, path, query, ""))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _path_prefix(path: str) -> str:
    """The directory a start path stands for: "/docs" → "/docs/", "/docs/a.html" → "/docs/"."""
    if path.endswith("/"):
        return path
    last = path.rsplit("/", 1)[-1]
    if "." in last:
        return path[: len(path) - len(last)]
    return path + "/"


def _file_extension(path: str) -> str:
    last = path.rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[-1].lower() if "." in last else ""


@dataclass(frozen=True)
class _Pattern:
    pattern: str
    full_url: bool
    glob: bool

    @classmethod
    def parse(cls, raw: str) -> _Pattern:
        full_url = "://" in raw
        glob = any(ch in raw for ch in "*?[")
        if full_url and not glob:
            raw = normalize_url(raw) or raw
        elif not full_url and not raw.startswith(("/", "*")):
            raw = "/" + raw
        return cls(raw, full_url, glob)

    def matches(self, url: str) -> bool:
        if self.full_url:
            targets = [url]
        else:
            parts = urlsplit(url)
            targets = [parts.path] + ([f"{parts.path}?{parts.query}"] if parts.query else [])
        if self.glob:
            return any(fnmatch.fnmatchcase(target, self.pattern) for target in targets)
        return any(target.startswith(self.pattern) for target in targets)


@dataclass(frozen=True)
class _Root:
    origin: str
    prefix: str

    def contains(self, url: str) -> bool:
        if _origin(url) != self.origin:
            return False
        path = urlsplit(url).path
        return path.startswith(self.prefix) or path + "/" == self.prefix


# --------------------------------------------------------------------------------------------
# HTML to readable text


_DROP_TAGS = (
    "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed", "form",
    "button", "select", "textarea", "input", "nav", "aside", "dialog", "map", "head",
)  # fmt: skip
_DROP_ROLES = re.compile(r"^(navigation|banner|contentinfo|search|complementary|dialog|alertdialog|menu)$")
_DROP_CLASS = re.compile(r"(^|[-_\s])(cookie|breadcrumbs?|skip-?(link|nav|to-content))", re.IGNORECASE)
_PARAGRAPH_TAGS = (
    "p", "div", "section", "article", "main", "blockquote", "pre", "figure", "figcaption", "address",
    "details", "summary", "table", "ul", "ol", "dl", "hr", "header", "footer",
)  # fmt: skip
_LINE_TAGS = ("li", "tr", "dt", "dd", "caption")
_CELL_TAGS = ("td", "th")
_DROP_TAG_SET = frozenset(_DROP_TAGS)
_HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_HEADING_MARK = "\x02"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INLINE_SPACE = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")


@dataclass(frozen=True, slots=True)
class HtmlDocument:
    title: str
    text: str
    sections: tuple[WebSection, ...]
    links: tuple[str, ...]
    noindex: bool
    nofollow: bool


def _collapse(text: str) -> str:
    return _INLINE_SPACE.sub(" ", text).strip()


def _hidden(tag) -> bool:
    attrs = tag.attrs or {}
    if "hidden" in attrs or str(attrs.get("aria-hidden", "")).lower() == "true":
        return True
    if _DROP_ROLES.match(str(attrs.get("role", "")).lower()):
        return True
    style = str(attrs.get("style", "")).replace(" ", "").lower()
    if "display:none" in style or "visibility:hidden" in style:
        return True
    classes = attrs.get("class") or []
    names = " ".join(classes if isinstance(classes, list) else [classes]) + " " + str(attrs.get("id", ""))
    return bool(_DROP_CLASS.search(names))


def extract_html(data: bytes, url: str, *, charset: str | None = None) -> HtmlDocument:
    """Title, readable text in sections, links and robots directives of an HTML page.

    Scripts, styles, forms, navigation, site headers and footers, hidden elements, cookie banners
    and breadcrumbs are dropped; the text comes from <main> (or role=main, or a single <article>)
    when the page has one. Headings start sections. Links are taken before anything is dropped.
    """
    soup = BeautifulSoup(data, "lxml", from_encoding=charset)

    # One walk over the whole tree (each find_all would be another): robots directives, base,
    # links, title, what to drop and the candidates for the main content.
    noindex = nofollow = False
    base: str | None = None
    title = ""
    hrefs: list[str] = []
    drop: list[Tag | Comment] = []
    mains: list[Tag] = []
    articles: list[Tag] = []
    for node in list(soup.descendants):
        if not isinstance(node, Tag):
            if isinstance(node, Comment):
                drop.append(node)
            continue
        name = node.name
        attrs = node.attrs
        if name in ("a", "area"):
            href = attrs.get("href")
            if isinstance(href, str):
                hrefs.append(href)
        elif name == "meta":
            meta_name = str(attrs.get("name", "")).strip().lower()
            if meta_name in ("robots", "alltingbot"):
                directives = {d.strip() for d in str(attrs.get("content", "")).lower().split(",")}
                noindex |= bool(directives & {"noindex", "none"})
                nofollow |= bool(directives & {"nofollow", "none"})
        elif name == "base" and base is None and isinstance(attrs.get("href"), str):
            base = normalize_url(attrs["href"], url)
        elif name == "title" and not title:
            title = _collapse(node.get_text(" "))
        if name in _DROP_TAG_SET or _hidden(node):
            drop.append(node)
        elif name in ("header", "footer"):
            if node.find_parent(("main", "article")) is None:
                drop.append(node)
        elif name == "main" or str(attrs.get("role", "")).lower() == "main":
            mains.append(node)
        elif name == "article":
            articles.append(node)

    links: dict[str, None] = {}
    for href in hrefs:
        link = normalize_url(href, base or url)
        if link is not None:
            links.setdefault(link, None)

    for node in drop:
        if isinstance(node, Comment):
            node.extract()
        elif not node.decomposed:
            node.decompose()

    mains = [tag for tag in mains if not tag.decomposed]
    articles = [tag for tag in articles if not tag.decomposed]
    if mains:
        root = mains[0]
    elif len(articles) == 1:
        root = articles[0]
    else:
        root = soup.body or soup

    # A second walk over what is left: line breaks, heading markers, block separators.
    for node in [n for n in root.descendants if isinstance(n, Tag)]:
        name = node.name
        if name == "br":
            node.replace_with("\n")
        elif name in _HEADING_TAGS:
            text = _collapse(node.get_text(" "))
            if not title and name == "h1":
                title = text
            if text:
                node.replace_with(f"\n\n{_HEADING_MARK}{name[1]}{text}\n\n")
            else:
                node.decompose()
        elif name in _PARAGRAPH_TAGS:
            node.insert(0, "\n\n")
            node.append("\n\n")
        elif name in _LINE_TAGS:
            # Only before: a "\n" after as well would make a blank line between neighbours.
            node.insert(0, "\n")
        elif name in _CELL_TAGS:
            node.append(" ")

    sections: list[WebSection] = []
    heading_text: str | None = None
    heading_level = 0
    paragraphs: list[str] = []

    def flush() -> None:
        # As in allting.knowledge.parsing, a section's text starts with its heading, so passages
        # cut from it carry the heading's words as well as the heading metadata.
        body = [heading_text, *paragraphs] if heading_text else paragraphs
        if body:
            sections.append(WebSection(heading_text, "\n\n".join(body), heading_level))

    for block in re.split(r"\n[ \t\r\f\v\u00a0]*\n", root.get_text()):
        lines: list[str] = []
        for raw_line in block.split("\n"):
            line = _collapse(raw_line)
            if line.startswith(_HEADING_MARK) and line[1:2] in ("1", "2", "3", "4", "5", "6"):
                if lines:
                    paragraphs.append("\n".join(lines))
                    lines = []
                flush()
                heading_level, heading_text, paragraphs = int(line[1]), _CONTROL.sub("", line[2:]).strip(), []
                continue
            line = _CONTROL.sub("", line).strip()
            if line:
                lines.append(line)
        if lines:
            paragraphs.append("\n".join(lines))
    flush()

    text = "\n\n".join(section.text for section in sections)
    return HtmlDocument(title, text, tuple(sections), tuple(links), noindex, nofollow)


def _content_hash(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n\n{text}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Sitemaps


def _gunzip(data: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise _Fail(f"sitemap is not valid gzip ({exc})") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise _Fail(f"sitemap is larger than {limit} bytes when decompressed")
    return out


def parse_sitemap(data: bytes) -> tuple[Literal["index", "urlset"], list[str]]:
    """("index", sitemap URLs) or ("urlset", page URLs); gzip accepted, XML without DTDs/entities."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, SITEMAP_MAX_BYTES)
    stripped = data.lstrip()
    if stripped[:1] != b"<":
        # The protocol's plain-text form: one URL per line.
        lines = stripped.decode("utf-8", errors="replace").splitlines()
        return "urlset", [line.strip() for line in lines if line.strip()][:SITEMAP_MAX_URLS]
    try:
        root = SafeElementTree.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise _Fail(f"sitemap refused: {type(exc).__name__} (DTDs and entities are not allowed)") from None
    except ParseError as exc:
        raise _Fail(f"sitemap is not valid XML ({exc})") from None
    kind = root.tag.rsplit("}", 1)[-1]
    if kind not in ("sitemapindex", "urlset"):
        raise _Fail(f"not a sitemap (root element <{kind}>)")
    locs: list[str] = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "loc" and element.text and element.text.strip():
            locs.append(element.text.strip())
            if len(locs) >= SITEMAP_MAX_URLS:
                break
    return ("index" if kind == "sitemapindex" else "urlset"), locs


# --------------------------------------------------------------------------------------------
# The crawler


class _Fail(Exception):
    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class _Skip(Exception):
    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class _Reply:
    url: str
    status: int
    headers: httpx.Headers
    body: bytes


@dataclass(slots=True)
class _Outcome:
    event: PageFetched | PageUnchanged | PageFailed | PageSkipped
    links: tuple[str, ...] = ()
    parsed: bool = False  # an HTML page was downloaded and parsed: uses up max_pages


def _crawl_delay(text: str, user_agent: str) -> float:
    """Crawl-delay of the group that applies to `user_agent` (else "*"), fractions allowed.

    urllib.robotparser reads only whole seconds; this follows its group rules (agent name
    matched as a substring of our product token) but keeps "0.5".
    """
    token = user_agent.split("/")[0].strip().lower()
    groups: list[tuple[list[str], float | None]] = []
    agents: list[str] = []
    delay: float | None = None
    in_rules = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "user-agent":
            if in_rules:
                groups.append((agents, delay))
                agents, delay, in_rules = [], None, False
            agents.append(value.lower())
        elif name in ("allow", "disallow", "crawl-delay", "request-rate") and agents:
            in_rules = True
            if name == "crawl-delay":
                with contextlib.suppress(ValueError):
                    delay = float(value)
    if agents:
        groups.append((agents, delay))
    fallback = None
    for group_agents, group_delay in groups:
        if any(agent != "*" and agent in token for agent in group_agents):
            return group_delay or 0.0
        if "*" in group_agents and fallback is None:
            fallback = group_delay
    return fallback or 0.0


class _Robots:
    """robots.txt of one origin, and the politeness slot of that origin."""

    def __init__(self, parser: RobotFileParser, delay: float, note: str = "") -> None:
        self.parser = parser
        self.delay = delay
        self.note = note
        self._next_slot = 0.0

    async def wait_turn(self) -> None:
        if self.delay <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self.delay
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(order=True, slots=True)
class _Item:
    depth: int
    seq: int
    url: str = field(compare=False)


class _Crawler:
    def __init__(self, settings: CrawlSettings, known_hashes: Mapping[str, str]) -> None:
        self.s = settings
        self.known = known_hashes
        self.start = normalize_url(settings.start_url) or settings.start_url
        start_parts = urlsplit(self.start)
        start_path = start_parts.path
        if settings.mode == "sitemap" and start_path.lower().endswith((".xml", ".xml.gz", ".txt")):
            self.start_sitemap: str | None = self.start
        else:
            self.start_sitemap = None
        self.roots = [_Root(_origin(self.start), _path_prefix(start_path))]
        self.includes = [_Pattern.parse(p) for p in settings.include_patterns]
        self.excludes = [_Pattern.parse(p) for p in settings.exclude_patterns]
        self.path_includes = [p for p in self.includes if not p.full_url]
        self.auth_origin = _origin(self.start)
        self.auth_header: str | None = None
        if settings.http_auth is not None:
            user, password = settings.http_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self.auth_header = f"Basic {token}"
        self.client = guarded_client(
            allowed_networks=settings.allowed_networks,
            timeout=settings.per_page_timeout,
            headers={"User-Agent": settings.user_agent},
        )
        self.robots: dict[str, asyncio.Task[_Robots]] = {}
        self.claimed: set[str] = set()
        self.too_deep: dict[str, int] = {}
        self.frontier: list[_Item] = []
        self.seq = itertools.count()
        self.requests = 0
        self.bytes_received = 0
        self.start_ok = False

    # ---- scope

    def scope_reason(self, url: str) -> SkipReason | None:
        if any(p.matches(url) for p in self.excludes):
            return "excluded"
        if any(p.matches(url) for p in self.includes if p.full_url):
            return None
        if not any(_origin(url) == root.origin for root in self.roots):
            return "off_site"
        if self.path_includes:
            return None if any(p.matches(url) for p in self.path_includes) else "excluded"
        return None if any(root.contains(url) for root in self.roots) else "off_site"

    def discover(self, url: str, depth: int) -> PageSkipped | None:
        """Queue a URL found in a page or a sitemap; returns a skip event the first time it is out."""
        if url in self.claimed:
            return None
        reason = self.scope_reason(url)
        if reason is not None:
            self.claimed.add(url)
            return PageSkipped(url, reason)
        if depth > self.s.max_depth:
            self.too_deep.setdefault(url, depth)
            return None
        self.too_deep.pop(url, None)
        self.claimed.add(url)
        extension = _file_extension(urlsplit(url).path)
        if extension in _FILE_EXTENSIONS:
            return PageSkipped(url, "not_html", f"file type .{extension}")
        heapq.heappush(self.frontier, _Item(depth, next(self.seq), url))
        return None

    # ---- HTTP

    async def exchange(
        self,
        url: str,
        *,
        max_bytes: int,
        truncate: bool = False,
        admit_hop: Callable[[str], Awaitable[None]] | None = None,
        check_response: Callable[[httpx.Response], None] | None = None,
    ) -> _Reply:
        """GET through the guard, following redirects by hand; every hop is checked before use."""
        current = url
        hops = 0
        while True:
            try:
                await check_url_async(current, allowed_networks=self.s.allowed_networks)
            except HostNotFound as exc:
                raise _Fail(exc.reason, transient=True) from None
            except EgressError as exc:
                raise _Fail(exc.reason) from None
            if hops and admit_hop is not None:
                await admit_hop(current)
            headers = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"}
            if self.auth_header and _origin(current) == self.auth_origin:
                headers["Authorization"] = self.auth_header
            host = urlsplit(current).hostname
            try:
                request = self.client.build_request("GET", current, headers=headers)
                self.requests += 1
                response = await self.client.send(request, stream=True)
            except EgressError as exc:
                raise _Fail(exc.reason) from None
            except httpx.TimeoutException:
                raise _Fail(f"request to {host} timed out", transient=True) from None
            except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as exc:
                raise _Fail(f"connection to {host} failed ({type(exc).__name__})", transient=True) from None
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise _Fail(f"more than {MAX_REDIRECTS} redirects")
                    target = normalize_url(location, current)
                    if target is None:
                        raise _Fail(f"redirect to a URL that is not http(s): {location[:200]!r}")
                    current = target
                    continue
                if check_response is not None:
                    check_response(response)
                body = await self._read(response, max_bytes, truncate)
                return _Reply(current, response.status_code, response.headers, body)
            except httpx.TimeoutException:
                raise _Fail(f"reading from {host} timed out", transient=True) from None
            except httpx.HTTPError as exc:
                raise _Fail(f"reading from {host} failed ({type(exc).__name__})", transient=True) from None
            finally:
                await response.aclose()

    async def _read(self, response: httpx.Response, max_bytes: int, truncate: bool) -> bytes:
        declared = response.headers.get("content-length", "")
        if not truncate and declared.isdigit() and int(declared) > max_bytes:
            raise _Skip("too_large", f"declares {declared} bytes (max {max_bytes})")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            self.bytes_received += len(chunk)
            if len(body) > max_bytes:
                if truncate:
                    return bytes(body[:max_bytes])
                raise _Skip("too_large", f"more than {max_bytes} bytes")
        return bytes(body)

    # ---- robots.txt

    async def robots_for(self, url: str) -> _Robots:
        origin = _origin(url)
        task = self.robots.get(origin)
        if task is None:
            task = self.robots[origin] = asyncio.create_task(self._load_robots(origin))
        return await asyncio.shield(task)

    async def _load_robots(self, origin: str) -> _Robots:
        parser = RobotFileParser(f"{origin}/robots.txt")
        note = ""
        attempt = 0
        while True:
            reply, failure = None, None
            try:
                async with asyncio.timeout(self.s.per_page_timeout):
                    reply = await self.exchange(
                        f"{origin}/robots.txt", max_bytes=ROBOTS_MAX_BYTES, truncate=True
                    )
            except (_Fail, TimeoutError) as exc:
                failure = exc
            # Retried like a page: until robots.txt is read, nothing on the origin may be fetched,
            # so one dropped connection or busy moment would otherwise cost the whole crawl.
            unavailable = (reply is not None and (reply.status >= 500 or reply.status == 429)) or (
                failure is not None and (isinstance(failure, TimeoutError) or failure.transient)
            )
            if not unavailable or attempt >= self.s.retries:
                break
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * 2**attempt)
            attempt += 1
        if failure is not None:
            reason = failure.reason if isinstance(failure, _Fail) else "timed out"
            if isinstance(failure, _Fail) and not failure.transient:
                # Refused by the guard, or redirects that cannot be followed: treated as no
                # robots.txt (RFC 9309 reads unfollowable redirects like a 404). Pages on a
                # refused origin fail on their own with the guard's reason.
                parser.allow_all = True
            else:
                parser.disallow_all = True
                note = f"robots.txt could not be read ({reason}); nothing there is fetched"
            parser.modified()
            return _Robots(parser, 0.0, note)
        if reply.status >= 500 or reply.status == 429:
            parser.disallow_all = True
            note = f"robots.txt answered HTTP {reply.status}; nothing there is fetched"
        elif reply.status >= 400:
            parser.allow_all = True
        elif reply.status >= 200:
            parser.parse(reply.body.decode("utf-8", errors="replace").splitlines())
        parser.modified()
        delay = 0.0
        if reply.status < 300:
            delay = _crawl_delay(reply.body.decode("utf-8", errors="replace"), self.s.user_agent)
        with contextlib.suppress(Exception):
            rate = parser.request_rate(self.s.user_agent)
            if rate and rate.requests:
                delay = max(delay, rate.seconds / rate.requests)
        delay = delay if delay >= 0 else 0.0  # NaN and negative values mean no delay
        return _Robots(parser, min(delay, self.s.max_crawl_delay), note)

    async def admit_robots(self, url: str) -> _Robots | None:
        if not self.s.respect_robots:
            return None
        robots = await self.robots_for(url)
        if not robots.parser.can_fetch(self.s.user_agent, url):
            raise _Skip("robots", robots.note or "disallowed by robots.txt")
        return robots

    # ---- pages

    async def page(self, item: _Item) -> _Outcome:
        try:
            return await self._page(item)
        except _Skip as skip:
            return _Outcome(PageSkipped(item.url, skip.reason, skip.detail))
        except _Fail as fail:
            return _Outcome(PageFailed(item.url, fail.reason, fail.transient))
        except Exception:
            log.exception("crawler_page_error", url=item.url)
            return _Outcome(PageFailed(item.url, "internal error while crawling the page"))

    async def _admit_redirect(self, url: str, *, is_start: bool) -> None:
        if not is_start:
            reason = self.scope_reason(url)
            if reason is not None:
                raise _Skip(reason, f"redirects to {url}")
        try:
            await self.admit_robots(url)
        except _Skip as skip:
            raise _Skip("robots", f"redirects to {url}: {skip.detail}") from None
        if url in self.claimed:
            raise _Skip("duplicate", f"redirects to {url}, which is crawled on its own")
        self.claimed.add(url)

    def _check_page(self, response: httpx.Response) -> None:
        status = response.status_code
        if not 200 <= status < 300:
            raise _Fail(f"HTTP {status}", transient=status in (408, 425, 429) or status >= 500)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type not in HTML_TYPES:
            raise _Skip("not_html", content_type)

    async def _page(self, item: _Item) -> _Outcome:
        url = item.url
        is_start = self.s.mode == "crawl" and url == self.start
        robots = await self.admit_robots(url)

        admitted: set[str] = set()  # hops this page claimed: a retry passes them again

        async def admit(hop: str) -> None:
            if hop not in admitted:
                await self._admit_redirect(hop, is_start=is_start)
                admitted.add(hop)

        attempt = 0
        while True:
            if robots is not None:
                await robots.wait_turn()
            try:
                async with asyncio.timeout(self.s.per_page_timeout):
                    reply = await self.exchange(
                        url, max_bytes=self.s.max_page_bytes, admit_hop=admit, check_response=self._check_page
                    )
                break
            except TimeoutError:
                failure = _Fail(f"timed out after {self.s.per_page_timeout:g} s", transient=True)
            except _Fail as exc:
                failure = exc
            if not failure.transient or attempt >= self.s.retries:
                raise failure
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * 2**attempt)
            attempt += 1

        if not reply.headers.get("content-type"):
            head = reply.body[:1024].lstrip().lower()
            if not (head.startswith((b"<!doctype html", b"<html")) or b"<html" in head):
                raise _Skip("not_html", "no content type and not HTML")

        final = reply.url
        if is_start and final != url:
            # The start URL moved (http → https, a www. host, a landing page): scope its new home too.
            self.roots.append(_Root(_origin(final), _path_prefix(urlsplit(final).path)))
        charset = None
        for parameter in reply.headers.get("content-type", "").split(";")[1:]:
            name, _, value = parameter.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip("\"'")
        if len(reply.body) <= INLINE_PARSE_BYTES:
            # About 1 ms: a thread hop costs more than that once threads contend for the GIL.
            document = extract_html(reply.body, final, charset=charset)
        else:
            document = await asyncio.to_thread(extract_html, reply.body, final, charset=charset)
        tag = reply.headers.get("x-robots-tag", "").lower()
        noindex = document.noindex or "noindex" in tag or "none" in tag
        nofollow = document.nofollow or "nofollow" in tag or "none" in tag
        links = () if nofollow or self.s.mode == "sitemap" else document.links
        if is_start:
            self.start_ok = True

        if noindex and self.s.respect_robots:
            return _Outcome(
                PageSkipped(url, "robots", "the page asks not to be indexed (noindex)"), links, True
            )
        if is_start and self.scope_reason(url) is not None:
            detail = "the start page is outside the include or exclude patterns; its links were followed"
            return _Outcome(PageSkipped(url, "excluded", detail), links, True)
        title = document.title or final
        digest = _content_hash(title, document.text)
        if self.known.get(final) == digest:
            return _Outcome(PageUnchanged(final, digest), links, True)
        event = PageFetched(url, final, title, document.text, document.sections, digest, item.depth)
        return _Outcome(event, links, True)

    # ---- sitemaps

    async def sitemap_roots(self) -> list[str]:
        if self.start_sitemap is not None:
            return [self.start_sitemap]
        robots = await self.robots_for(self.start)
        listed = [normalize_url(u) for u in (robots.parser.site_maps() or [])]
        found = [u for u in listed if u]
        return found or [f"{_origin(self.start)}/sitemap.xml"]

    async def fetch_sitemap(self, url: str) -> tuple[str, list[str]]:
        robots = await self.admit_robots(url)
        if robots is not None:
            await robots.wait_turn()

        def check(response: httpx.Response) -> None:
            if not 200 <= response.status_code < 300:
                status = response.status_code
                raise _Fail(f"HTTP {status}", transient=status in (408, 425, 429) or status >= 500)

        try:
            async with asyncio.timeout(self.s.per_page_timeout):
                reply = await self.exchange(url, max_bytes=SITEMAP_MAX_BYTES, check_response=check)
        except TimeoutError:
            raise _Fail(f"timed out after {self.s.per_page_timeout:g} s", transient=True) from None
        return await asyncio.to_thread(parse_sitemap, reply.body)

    async def close(self) -> None:
        for task in self.robots.values():
            task.cancel()
        await asyncio.gather(*self.robots.values(), return_exceptions=True)
        await self.client.aclose()


async def crawl(
    settings: CrawlSettings, *, known_hashes: Mapping[str, str] | None = None
) -> AsyncIterator[CrawlEvent]:
    """Crawl the site and yield events; the last one is always `CrawlFinished` (unless closed early).

    `known_hashes` maps final URLs to the content hashes stored from an earlier crawl; a page
    whose hash is unchanged is yielded as `PageUnchanged` instead of `PageFetched`. Close the
    generator (`contextlib.aclosing`) when stopping early, so running requests are cancelled.
    """
    known = dict(known_hashes or {})
    crawler = _Crawler(settings, known)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.max_crawl_seconds
    counts: Counter[str] = Counter()
    skipped_by_reason: Counter[str] = Counter()
    seen: set[str] = set()
    transient_failures = 0
    running: dict[asyncio.Task[_Outcome], _Item] = {}
    parsed_pages = 0
    stopped_reason = "completed"
    sitemaps_complete = True  # every sitemap read: a broken one must not make its pages "disappear"
    sitemaps_truncated = False

    def account(event: CrawlEvent) -> None:
        nonlocal transient_failures
        if isinstance(event, PageFetched):
            counts["fetched"] += 1
            seen.add(event.final_url)
        elif isinstance(event, PageUnchanged):
            counts["unchanged"] += 1
            seen.add(event.url)
        elif isinstance(event, PageFailed):
            counts["failed"] += 1
            if event.transient:
                transient_failures += 1
                seen.add(event.url)
        elif isinstance(event, PageSkipped):
            counts["skipped"] += 1
            skipped_by_reason[event.reason] += 1

    try:
        if settings.mode == "sitemap":
            try:
                async with asyncio.timeout_at(deadline):
                    sitemaps = list(await crawler.sitemap_roots())
            except TimeoutError:
                sitemaps, stopped_reason = [], "max_crawl_seconds"
            queued_sitemaps = set(sitemaps)
            read = 0
            index = 0
            # Enough candidates for max_pages even if many are skipped; more would only fill memory.
            enough = 2 * settings.max_pages + 100
            while index < len(sitemaps):
                if index >= MAX_SITEMAPS or len(crawler.frontier) >= enough:
                    sitemaps_truncated = True
                    break
                sitemap_url = sitemaps[index]
                index += 1
                if loop.time() >= deadline:
                    stopped_reason = "max_crawl_seconds"
                    break
                try:
                    async with asyncio.timeout_at(deadline):
                        kind, locations = await crawler.fetch_sitemap(sitemap_url)
                except TimeoutError:
                    stopped_reason = "max_crawl_seconds"
                    break
                except (_Fail, _Skip) as exc:
                    event: CrawlEvent = (
                        PageFailed(sitemap_url, exc.reason, exc.transient)
                        if isinstance(exc, _Fail)
                        else PageSkipped(sitemap_url, exc.reason, exc.detail)
                    )
                    sitemaps_complete = False
                    account(event)
                    yield event
                    continue
                read += 1
                for location in locations:
                    if len(crawler.frontier) >= enough:
                        sitemaps_truncated = True
                        break
                    normalized = normalize_url(location, sitemap_url)
                    if normalized is None:
                        continue
                    if kind == "index":
                        if normalized in queued_sitemaps:
                            continue
                        queued_sitemaps.add(normalized)
                        if not any(_origin(normalized) == root.origin for root in crawler.roots):
                            event = PageSkipped(normalized, "off_site", "sitemap on another site")
                            account(event)
                            yield event
                            continue
                        sitemaps.append(normalized)
                    elif (skip := crawler.discover(normalized, 0)) is not None:
                        account(skip)
                        yield skip
            if read == 0 and stopped_reason == "completed":
                stopped_reason = "sitemap_failed"
            sitemaps_complete &= not sitemaps_truncated
        else:
            crawler.claimed.add(crawler.start)
            heapq.heappush(crawler.frontier, _Item(0, next(crawler.seq), crawler.start))

        while stopped_reason == "completed":
            while (
                crawler.frontier
                and len(running) < settings.concurrency
                and parsed_pages + len(running) < settings.max_pages
                and all(item.depth >= crawler.frontier[0].depth - 1 for item in running.values())
            ):
                item = heapq.heappop(crawler.frontier)
                running[asyncio.create_task(crawler.page(item))] = item
            if not running:
                if crawler.frontier:
                    stopped_reason = "max_pages"
                break
            remaining = deadline - loop.time()
            done: set[asyncio.Task[_Outcome]] = set()
            if remaining > 0:
                done, _ = await asyncio.wait(running, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                stopped_reason = "max_crawl_seconds"
                break
            for task in sorted(done, key=lambda t: running[t].seq):
                item = running.pop(task)
                outcome = task.result()
                parsed_pages += outcome.parsed
                account(outcome.event)
                yield outcome.event
                for link in outcome.links:
                    if (skip := crawler.discover(link, item.depth + 1)) is not None:
                        account(skip)
                        yield skip

        if settings.mode == "crawl" and not crawler.start_ok and stopped_reason == "completed":
            stopped_reason = "start_failed"
        if sitemaps_truncated and stopped_reason == "completed":
            stopped_reason = "max_pages"
        for url, depth in crawler.too_deep.items():
            if url not in crawler.claimed:
                event = PageSkipped(url, "depth", f"depth {depth} is over max_depth {settings.max_depth}")
                account(event)
                yield event

        complete = stopped_reason == "completed" and transient_failures == 0 and sitemaps_complete
        stats = CrawlStats(
            pages_crawled=counts["fetched"],
            failed=counts["failed"],
            skipped=counts["skipped"],
            unchanged=counts["unchanged"],
            seen_urls=frozenset(seen),
            stopped_reason=stopped_reason,
            disappeared=frozenset(set(known) - seen) if complete else frozenset(),
            skipped_by_reason=dict(skipped_by_reason),
            requests=crawler.requests,
            bytes_received=crawler.bytes_received,
            elapsed_seconds=round(time.monotonic() - started, 3),
        )
        yield CrawlFinished(stats)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await crawler.close()
