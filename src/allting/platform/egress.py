"""The shared outbound address guard for every URL that a tenant or a remote party can influence.

Crawler, file-by-URL, OIDC discovery/JWKS and tenant model endpoints (`api_base`) all go through
here. The guard refuses non-public destinations unless the operator lists them in
OUTBOUND_ALLOWED_NETWORKS. It checks the addresses after DNS resolution and connects to exactly
the address it checked (no second lookup an attacker's DNS could answer differently), while the
Host header and TLS SNI/certificate checks keep using the name. Redirects are followed by hand so
every hop goes through the same check before any connection is opened.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio.to_thread
import httpcore
import httpx

from allting.platform.settings import get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
DEFAULT_MAX_REDIRECTS = 5
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 15.0
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Labels that inet_aton would read as numbers: decimal, octal (leading 0) or hexadecimal (0x).
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_CANONICAL_DECIMAL_OCTET = re.compile(r"^(0|[1-9][0-9]{0,2})$")


class EgressError(Exception):
    """An outbound request was not made or not completed; `reason` names the host and the cause."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EgressBlocked(EgressError):
    """The destination is not allowed: bad scheme or URL form, or a non-public address."""


class HostNotFound(EgressError):
    """The host name does not resolve."""


class TooManyRedirects(EgressError):
    pass


class ResponseTooLarge(EgressError):
    pass


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL that passed the guard, with every address its host resolved to (all of them checked)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class GuardedResponse:
    """A fully read response: body capped at the size limit, `redirects` lists the hops followed."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str
    redirects: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        return self.content.decode(_charset(self.headers), errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _charset(headers: httpx.Headers) -> str:
    content_type = headers.get("content-type", "")
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


def parse_allowed_networks(value: str | Iterable[str] | None) -> tuple[IPNetwork, ...]:
    """Parse "10.0.0.5, 192.168.0.0/16, fd12::/64" (or a list of such entries) into networks."""
    if value is None:
        return ()
    entries = value.split(",") if isinstance(value, str) else value
    networks = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"OUTBOUND_ALLOWED_NETWORKS entry {entry!r} is not an address or CIDR") from exc
    return tuple(networks)


def configured_allowed_networks() -> tuple[IPNetwork, ...]:
    return parse_allowed_networks(get_settings().outbound_allowed_networks)


def _networks(allowed: str | Iterable[str | IPNetwork] | None) -> tuple[IPNetwork, ...]:
    """Explicit allowed networks, or the operator's OUTBOUND_ALLOWED_NETWORKS when None."""
    if allowed is None:
        return configured_allowed_networks()
    if isinstance(allowed, str):
        return parse_allowed_networks(allowed)
    return tuple(
        item if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network) else _single_network(item)
        for item in allowed
    )


def _single_network(entry: str) -> IPNetwork:
    (network,) = parse_allowed_networks([entry])
    return network


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that an IPv6 address carries and that traffic may end up at."""
    embedded = []
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)
    return embedded


def _non_public_reason(address: IPAddress) -> str | None:
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _CGNAT:
        return "carrier-grade NAT"
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return "site-local"
        for inner in _embedded_ipv4(address):
            inner_reason = _non_public_reason(inner)
            if inner_reason:
                return f"IPv6 form of {inner_reason} {inner}"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non-public"
    return None


def blocked_reason(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> str | None:
    """Why `address` may not be contacted, or None when it is public or explicitly allowed."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address.version == network.version and address in network for network in allowed):
        return None
    return _non_public_reason(address)


def _refuse_numeric_shorthand(host: str) -> None:
    """Refuse integer, hex, octal and short dotted hosts that resolvers turn into an IPv4 address."""
    labels = host.rstrip(".").split(".")
    if not all(_NUMERIC_LABEL.match(label) for label in labels):
        return
    canonical = len(labels) == 4 and all(
        _CANONICAL_DECIMAL_OCTET.match(label) and int(label) <= 255 for label in labels
    )
    if not canonical:
        raise EgressBlocked(f"host {host!r} is a numeric address in a non-canonical form")


@dataclass(frozen=True)
class _ParsedURL:
    scheme: str
    host: str
    port: int


def _parse(url: str) -> _ParsedURL:
    if not isinstance(url, str) or any(ch.isspace() or ord(ch) < 0x20 or ch == "\\" for ch in url):
        raise EgressBlocked("URL contains whitespace, control characters or backslashes")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise EgressBlocked(f"URL {url!r} cannot be parsed: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise EgressBlocked(f"URL scheme {scheme!r} is not allowed; use http or https")
    if parsed.userinfo:
        raise EgressBlocked("URLs with embedded credentials are not allowed")
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise EgressBlocked(f"URL {url!r} has no host")
    if "%" in host:
        raise EgressBlocked(f"host {host!r} carries an IPv6 zone and is not allowed")
    _refuse_numeric_shorthand(host)
    return _ParsedURL(scheme=scheme, host=host, port=parsed.port or DEFAULT_PORTS[scheme])


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_url_form(url: str) -> None:
    """The checks that need no DNS: scheme, URL form, numeric shorthand hosts. Raises EgressBlocked."""
    _parse(url)


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """All addresses `host` resolves to (IP literals resolve to themselves). Blocking."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise HostNotFound(f"host {host!r} could not be resolved") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def checked_addresses(host: str, port: int, allowed: tuple[IPNetwork, ...]) -> list[IPAddress]:
    """Resolve `host` and return its addresses, refusing if ANY of them is non-public and not allowed.

    All must pass: a name that resolves to a mix of public and internal addresses is hostile.
    """
    addresses = resolve_host(host, port)
    if not addresses:
        raise HostNotFound(f"host {host!r} resolved to no address")
    for address in addresses:
        reason = blocked_reason(address, allowed)
        if reason:
            shown = host if host == str(address) else f"{host} ({address})"
            raise EgressBlocked(f"host {shown} is a {reason} address and not in OUTBOUND_ALLOWED_NETWORKS")
    return addresses


def check_url(url: str, *, allowed_networks: str | Iterable[str | IPNetwork] | None = None) -> ResolvedTarget:
    """Check `url` (scheme, form, resolved addresses); raise EgressBlocked/HostNotFound. Blocking DNS."""
    parsed = _parse(url)
    allowed = _networks(allowed_networks)
    addresses = checked_addresses(parsed.host, parsed.port, allowed)
    return ResolvedTarget(
        url=url, scheme=parsed.scheme, host=parsed.host, port=parsed.port, addresses=tuple(addresses)
    )


async def check_url_async(
    url: str, *, allowed_networks: str | Iterable[str | IPNetwork] | None = None
) -> ResolvedTarget:
    """`check_url` with the DNS lookup in a worker thread so the event loop keeps running."""
    if _is_ip_literal(_parse(url).host):
        # Nothing to look up: skip the thread hop, which costs more than the check itself.
        return check_url(url, allowed_networks=allowed_networks)
    return await asyncio.get_running_loop().run_in_executor(
        None, partial(check_url, url, allowed_networks=allowed_networks)
    )


class PinnedNetworkBackend:
    """Network backend for httpcore (and its httpcore2 fork, which has the same interface).

    Every TCP connection resolves the host, checks all addresses, and connects to a checked
    address. TLS still uses the request's host name for SNI and certificate verification, because
    httpcore passes the origin host to start_tls, not the address connected to.
    """

    def __init__(self, inner: Any, allowed: tuple[IPNetwork, ...]) -> None:
        self._inner = inner
        self._allowed = allowed

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend interface passes it
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:
        addresses = await anyio.to_thread.run_sync(checked_addresses, host, port, self._allowed)
        last_error: Exception | None = None
        # Hosts often publish AAAA and A records; a machine without IPv6 routing must still connect.
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except Exception as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None):  # noqa: ASYNC109
        raise EgressBlocked("connections over unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx transport that refuses bad URLs per request and pins every connection to a checked address.

    Environment proxies are ignored on purpose (trust_env=False): a proxy would make the checked
    address meaningless.
    """

    def __init__(
        self,
        *,
        allowed_networks: str | Iterable[str | IPNetwork] | None = None,
        verify: bool | str = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self._allowed = _networks(allowed_networks)
        # httpx offers no public way to choose the network backend, so the pool is built here with
        # the same settings httpx would use.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedNetworkBackend(httpcore.AnyIOBackend(), self._allowed),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        check_url_form(str(request.url))
        return await super().handle_async_request(request)


def guarded_client(
    *,
    allowed_networks: str | Iterable[str | IPNetwork] | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """An httpx client whose every connection is checked and pinned. It does not follow redirects:
    use `guarded_request`, or follow them yourself (each hop is checked by the transport anyway)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allowed_networks=allowed_networks),
        timeout=timeout,
        headers=headers,
        follow_redirects=False,
        trust_env=False,
    )


def _redirect_method(status: int, method: str) -> str:
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


async def _read_capped(response: httpx.Response, max_bytes: int, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ResponseTooLarge(
            f"response from {httpx.URL(url).host} declares {declared} bytes (max {max_bytes})"
        )
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise ResponseTooLarge(f"response from {httpx.URL(url).host} exceeds {max_bytes} bytes")
    return bytes(body)


async def guarded_request(
    method: str,
    url: str,
    *,
    allowed_networks: str | Iterable[str | IPNetwork] | None = None,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,  # noqa: ASYNC109 - one budget for all hops and the body
    client: httpx.AsyncClient | None = None,
) -> GuardedResponse:
    """Make one request through the guard, following redirects by hand with a check before each hop.

    `timeout` bounds the whole exchange, redirects and body included. Credentials are dropped when
    a redirect leaves the original origin. Pass `client` (from `guarded_client`) to reuse connections.
    """
    allowed = _networks(allowed_networks)
    owned = client is None
    client = client or guarded_client(allowed_networks=allowed, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            return await _follow(
                client, method.upper(), url, allowed, headers, content, max_redirects, max_response_bytes
            )
    except TimeoutError:
        raise EgressError(f"request to {httpx.URL(url).host} timed out after {timeout:g} s") from None
    finally:
        if owned:
            await client.aclose()


async def _follow(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    allowed: tuple[IPNetwork, ...],
    headers: Mapping[str, str] | None,
    content: bytes | None,
    max_redirects: int,
    max_response_bytes: int,
) -> GuardedResponse:
    request_headers = httpx.Headers(headers)
    hops: list[str] = []
    origin = httpx.URL(url)
    while True:
        await check_url_async(url, allowed_networks=allowed)
        request = client.build_request(method, url, headers=request_headers, content=content)
        response = await client.send(request, stream=True)
        try:
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                body = await _read_capped(response, max_response_bytes, url)
                return GuardedResponse(response.status_code, response.headers, body, url, tuple(hops))
        finally:
            await response.aclose()
        if len(hops) >= max_redirects:
            raise TooManyRedirects(f"more than {max_redirects} redirects starting at {origin.host}")
        next_url = response.url.join(location)
        hops.append(str(response.url))
        method = _redirect_method(response.status_code, method)
        if method == "GET":
            content = None
            request_headers.pop("content-type", None)
        if not _same_origin(origin, next_url):
            request_headers.pop("authorization", None)
            request_headers.pop("cookie", None)
        url = str(next_url)
