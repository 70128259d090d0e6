import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from allting.platform import egress
from allting.platform.egress import (
    EgressBlocked,
    HostNotFound,
    ResponseTooLarge,
    TooManyRedirects,
    check_url,
    guarded_client,
    guarded_request,
    parse_allowed_networks,
)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits.append((self.path, dict(self.headers)))
        query = parse_qs(urlsplit(self.path).query)
        if self.path.startswith("/redirect"):
            self.send_response(int(query.get("status", ["302"])[0]))
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/big"):
            body = b"x" * int(query["size"][0])
            self.send_response(200)
            # No Content-Length: the cap must hold while streaming too.
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        else:
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


def _serve(host: str):
    server = ThreadingHTTPServer((host, 0), _Handler)
    server.hits = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def local_server():
    server = _serve("127.0.0.1")
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def second_loopback_server():
    # Linux routes all of 127/8 to loopback; a server here shows whether the guard connected.
    server = _serve("127.0.0.2")
    yield server
    server.shutdown()


def _base(server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


@pytest.mark.parametrize(
    ("url", "reason_fragment"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.8.9.10:8080/x", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://172.31.255.254/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "private"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://[::127.0.0.1]/", "IPv6 form of loopback"),
        ("http://[64:ff9b::a00:1]/", "IPv6 form of private 10.0.0.1"),
        ("http://[2002:a00:1::1]/", "IPv6 form of private 10.0.0.1"),
        ("http://[2002:a9fe:a9fe::1]/", "IPv6 form of link-local"),
        ("http://[fd00::1]/", "private"),
        ("http://[fc12:3456::1]/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fec0::1]/", "site-local"),
        ("http://[::]/", "unspecified"),
        ("http://[ff02::1]/", "multicast"),
        ("http://localhost:8000/", "loopback"),
    ],
)
def test_non_public_addresses_are_refused(url, reason_fragment):
    with pytest.raises(EgressBlocked) as blocked:
        check_url(url, allowed_networks="")
    assert reason_fragment in blocked.value.reason


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://127.1/",
        "http://127.0.1/",
        "http://017700000001/",
        "http://8.8.8.010/",
    ],
)
def test_integer_hex_octal_and_short_host_forms_are_refused(url):
    with pytest.raises(EgressBlocked):
        check_url(url, allowed_networks="")


@pytest.mark.parametrize(
    ("url", "reason_fragment"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.org/", "scheme"),
        ("ftp://example.org/", "scheme"),
        ("http://user:pw@example.org/", "credentials"),
        ("http://evil.example\\@127.0.0.1/", "backslash"),
        ("http://exa mple.org/", "whitespace"),
        ("http:///nohost", "host"),
        ("http://[fe80::1%25eth0]/", "zone"),
    ],
)
def test_bad_schemes_and_ambiguous_urls_are_refused(url, reason_fragment):
    with pytest.raises(EgressBlocked) as blocked:
        check_url(url, allowed_networks="")
    assert reason_fragment in blocked.value.reason


def test_public_address_passes_without_dns():
    target = check_url("https://93.184.215.14:8443/v1", allowed_networks="")
    assert target.scheme == "https"
    assert target.port == 8443
    assert target.addresses == (ipaddress.ip_address("93.184.215.14"),)


def test_public_looking_name_resolving_to_private_address_is_refused(monkeypatch):
    monkeypatch.setattr(egress, "resolve_host", lambda host, port: [ipaddress.ip_address("10.20.30.40")])
    with pytest.raises(EgressBlocked) as blocked:
        check_url("https://models.example.com/v1", allowed_networks="")
    assert "models.example.com" in blocked.value.reason
    assert "10.20.30.40" in blocked.value.reason


def test_name_resolving_to_public_and_private_addresses_is_refused(monkeypatch):
    monkeypatch.setattr(
        egress,
        "resolve_host",
        lambda host, port: [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("169.254.169.254")],
    )
    with pytest.raises(EgressBlocked):
        check_url("https://rebind.example.com/", allowed_networks="")


def test_unresolvable_host_gives_host_not_found():
    with pytest.raises(HostNotFound) as missing:
        check_url("https://no-such-host.invalid/", allowed_networks="")
    assert "no-such-host.invalid" in missing.value.reason


def test_private_host_is_allowed_when_listed():
    assert check_url("http://10.0.0.5:8000/v1", allowed_networks="10.0.0.5").addresses
    assert check_url("http://10.9.9.9/", allowed_networks="192.168.0.0/16, 10.0.0.0/8").addresses
    assert check_url("http://[::ffff:10.1.1.1]/", allowed_networks=["10.0.0.0/8"]).addresses
    assert check_url("http://[fd00::7]/", allowed_networks="fd00::/8").addresses
    with pytest.raises(EgressBlocked):
        check_url("http://10.0.0.6/", allowed_networks="10.0.0.5")


def test_allowed_networks_default_to_settings(monkeypatch):
    monkeypatch.setattr(egress, "configured_allowed_networks", lambda: parse_allowed_networks("10.0.0.0/8"))
    assert check_url("http://10.0.0.5/").host == "10.0.0.5"
    with pytest.raises(EgressBlocked):
        check_url("http://192.168.0.1/")


def test_malformed_allowed_network_names_the_entry():
    with pytest.raises(ValueError, match="not-a-network"):
        parse_allowed_networks("10.0.0.0/8, not-a-network")


async def test_guarded_request_reaches_an_allowed_local_server(local_server):
    response = await guarded_request("GET", f"{_base(local_server)}/ok", allowed_networks="127.0.0.1")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


async def test_guarded_request_refuses_loopback_when_not_allowed(local_server):
    hits_before = len(local_server.hits)
    with pytest.raises(EgressBlocked):
        await guarded_request("GET", f"{_base(local_server)}/ok", allowed_networks="")
    assert len(local_server.hits) == hits_before


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::ffff:10.0.0.1]/",
        "http://2130706433/",
    ],
)
async def test_redirect_to_private_address_is_refused_before_connecting(local_server, target):
    started = time.monotonic()
    with pytest.raises(EgressBlocked):
        await guarded_request(
            "GET", f"{_base(local_server)}/redirect?to={target}", allowed_networks="127.0.0.1", timeout=10
        )
    # A connection attempt to an unroutable address would hang until the timeout.
    assert time.monotonic() - started < 2


async def test_redirect_to_unlisted_loopback_server_never_connects(local_server, second_loopback_server):
    target = f"{_base(second_loopback_server)}/ok"
    with pytest.raises(EgressBlocked):
        await guarded_request(
            "GET", f"{_base(local_server)}/redirect?to={target}&status=307", allowed_networks="127.0.0.1"
        )
    assert second_loopback_server.hits == []
    # Listing it makes the same redirect work, so the refusal above was the guard's doing.
    response = await guarded_request(
        "GET", f"{_base(local_server)}/redirect?to={target}", allowed_networks="127.0.0.1, 127.0.0.2"
    )
    assert response.status_code == 200
    assert response.redirects and len(second_loopback_server.hits) == 1


async def test_redirect_across_origins_drops_credentials(local_server, second_loopback_server):
    second_loopback_server.hits.clear()
    target = f"{_base(second_loopback_server)}/ok"
    await guarded_request(
        "GET",
        f"{_base(local_server)}/redirect?to={target}",
        allowed_networks="127.0.0.1, 127.0.0.2",
        headers={"Authorization": "Bearer sk-should-not-travel"},
    )
    (_, headers), *_ = second_loopback_server.hits
    assert "Authorization" not in headers


async def test_redirect_limit(local_server):
    with pytest.raises(TooManyRedirects):
        await guarded_request(
            "GET", f"{_base(local_server)}/loop", allowed_networks="127.0.0.1", max_redirects=3
        )


async def test_response_size_cap(local_server):
    small = await guarded_request(
        "GET", f"{_base(local_server)}/big?size=1000", allowed_networks="127.0.0.1", max_response_bytes=2000
    )
    assert len(small.content) == 1000
    with pytest.raises(ResponseTooLarge):
        await guarded_request(
            "GET",
            f"{_base(local_server)}/big?size=50000",
            allowed_networks="127.0.0.1",
            max_response_bytes=2000,
        )


async def test_guarded_client_pins_even_when_the_client_follows_redirects(local_server, monkeypatch):
    # Every connection goes through the checked backend, so a plain httpx redirect cannot escape.
    async with guarded_client(allowed_networks="127.0.0.1") as client:
        ok = await client.get(f"{_base(local_server)}/ok")
        assert ok.status_code == 200
        with pytest.raises(EgressBlocked):
            await client.get(f"{_base(local_server)}/redirect?to=http://127.0.0.3:9/", follow_redirects=True)


async def test_connection_uses_the_checked_address_not_a_second_lookup(local_server, monkeypatch):
    # The name does not exist in real DNS: the request can only arrive if the connection goes to the
    # address the guard resolved and checked, while Host still carries the name. Later answers differ,
    # as in DNS rebinding, and must not be consulted for this connection.
    answers = iter([[ipaddress.ip_address("127.0.0.1")]] + [[ipaddress.ip_address("93.184.215.14")]] * 10)
    monkeypatch.setattr(egress, "resolve_host", lambda host, port: next(answers))
    port = local_server.server_address[1]
    hits_before = len(local_server.hits)
    async with guarded_client(allowed_networks="127.0.0.1", timeout=3) as client:
        response = await client.get(f"http://llm.internal.example:{port}/ok")
    assert response.status_code == 200
    assert len(local_server.hits) == hits_before + 1
    assert local_server.hits[-1][1]["Host"] == f"llm.internal.example:{port}"


async def test_transport_refuses_bad_urls_per_request():
    async with guarded_client(allowed_networks="") as client:
        with pytest.raises(EgressBlocked):
            await client.get("http://0x7f000001/")
        with pytest.raises(EgressBlocked):
            await client.get("ftp://example.org/")
