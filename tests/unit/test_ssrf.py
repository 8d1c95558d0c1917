"""The SSRF guard (appliance/net/ssrf.py).

Nothing here connects anywhere but 127.0.0.1: host names are resolved by injected
resolvers, refused addresses are never contacted, and the fetch tests talk to tiny
servers on 127.0.0.1 that the tests allowlist.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from appliance.net import ssrf
from appliance.net.ssrf import (
    FetchFailed,
    RedirectRefused,
    RefusedAddress,
    RefusedUrl,
    TooLarge,
    Unresolvable,
    check_address,
    fetch,
    refusal_reason,
    resolve_and_check,
    validate_url,
)

LOCAL = [ipaddress.ip_network("127.0.0.1/32")]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def net(*cidrs: str) -> list[Any]:
    return [ipaddress.ip_network(c) for c in cidrs]


async def no_resolver(host: str, port: int) -> Sequence[str]:
    raise AssertionError(f"the resolver must not be asked about {host!r}")


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


# -- addresses ---------------------------------------------------------------------------

# The cases of the brief, as URLs with literal hosts: each refused unless allowlisted.
REFUSED_URLS = {
    "http://127.0.0.1/": "loopback",
    "http://[::1]/": "loopback",
    "http://[::ffff:127.0.0.1]/": "loopback",
    "http://169.254.169.254/latest/meta-data/": "metadata",
    "http://10.0.0.1/": "private",
    "http://172.16.0.1/": "private",
    "http://192.168.0.1/": "private",
    "http://100.64.0.1/": "carrier-grade NAT",
    "http://[fc00::1]/": "unique-local",
    "http://[fe80::1]/": "link-local",
    "http://0.0.0.0/": "unspecified",
}
# (address, the network whose allowlisting admits it)
ALLOW_FOR = {
    "http://127.0.0.1/": "127.0.0.1/32",
    "http://[::1]/": "::1/128",
    "http://[::ffff:127.0.0.1]/": "127.0.0.1/32",
    "http://169.254.169.254/latest/meta-data/": "169.254.169.254/32",
    "http://10.0.0.1/": "10.0.0.0/8",
    "http://172.16.0.1/": "172.16.0.0/12",
    "http://192.168.0.1/": "192.168.0.0/16",
    "http://100.64.0.1/": "100.64.0.0/10",
    "http://[fc00::1]/": "fc00::/7",
    "http://[fe80::1]/": "fe80::/10",
    "http://0.0.0.0/": "0.0.0.0/32",
}


@pytest.mark.parametrize(("url", "why"), REFUSED_URLS.items())
def test_listed_addresses_are_refused(url: str, why: str) -> None:
    with pytest.raises(RefusedAddress) as info:
        run(resolve_and_check(url, [], resolver=no_resolver))
    assert why in str(info.value)
    assert info.value.http_status == 400


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_listed_addresses_are_admitted_when_allowlisted(url: str) -> None:
    target = run(resolve_and_check(url, net(ALLOW_FOR[url]), resolver=no_resolver))
    assert target.ip == str(ssrf.parse_address(target.host))


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, a loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.255", "carrier-grade NAT"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fec0::1", "site-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("2001:db8::1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.0.8", "IETF protocol"),
        ("192.88.99.1", "6to4 relay"),
        ("64:ff9b::a00:1", "NAT64 form of 10.0.0.1"),
        ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2002:a00:1::1", "6to4 address embedding 10.0.0.1"),
        ("2002:7f00:1::1", "6to4 address embedding 127.0.0.1"),
        ("2001::1", "IETF protocol"),  # Teredo
        ("::7f00:1", "IPv4-compatible"),
        ("100::1", "discard-only"),
        ("3fff::1", "documentation"),
        ("4000::1", "global unicast"),
    ],
)
def test_check_address_refuses(address: str, why: str) -> None:
    with pytest.raises(RefusedAddress) as info:
        check_address(address, [])
    assert why in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "100.63.255.255",  # just below CGNAT
        "100.128.0.0",  # just above
        "172.15.255.255",
        "172.32.0.0",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    check_address(address, [])
    assert refusal_reason(address) is None


def test_allowlisting_one_loopback_address_admits_only_it() -> None:
    check_address("127.0.0.1", LOCAL)
    for other in ("127.0.0.2", "::1", "10.0.0.1", "169.254.169.254", "0.0.0.0"):
        with pytest.raises(RefusedAddress):
            check_address(other, LOCAL)
    run(resolve_and_check("http://127.0.0.1:8080/x", LOCAL, resolver=no_resolver))
    with pytest.raises(RefusedAddress):
        run(resolve_and_check("http://127.0.0.2:8080/x", LOCAL, resolver=no_resolver))


def test_metadata_needs_an_exact_allowlist_entry() -> None:
    with pytest.raises(RefusedAddress, match="metadata"):
        check_address("169.254.169.254", net("169.254.0.0/16"))
    check_address("169.254.1.1", net("169.254.0.0/16"))
    check_address("169.254.169.254", net("169.254.169.254/32"))
    with pytest.raises(RefusedAddress, match="metadata"):
        check_address("fd00:ec2::254", net("fd00::/8"))


def test_not_an_address() -> None:
    with pytest.raises(RefusedAddress, match="not an IP address"):
        check_address("localhost", [])


@pytest.mark.parametrize(
    "url", ["http://127.1/", "http://2130706433/", "http://0x7f000001/", "http://017700000001/"]
)
def test_numeric_host_forms_are_judged_as_addresses(url: str) -> None:
    # inet_aton forms are parsed locally (AI_NUMERICHOST), never sent to a resolver.
    with pytest.raises(RefusedAddress, match="loopback"):
        run(resolve_and_check(url, [], resolver=no_resolver))


# -- host names --------------------------------------------------------------------------


def test_name_resolving_to_loopback_is_refused_without_naming_the_address() -> None:
    calls: list[str] = []
    resolver = fake_resolver({"internal.test": ["127.0.0.1"]}, calls)
    with pytest.raises(RefusedAddress) as info:
        run(resolve_and_check("http://internal.test/hook", [], resolver=resolver))
    assert "internal.test resolves to a loopback address" in str(info.value)
    assert "127.0.0.1" not in str(info.value)
    assert info.value.address == "127.0.0.1"
    assert calls == ["internal.test"]


@pytest.mark.parametrize("answers", [["93.184.216.34", "10.0.0.1"], ["10.0.0.1", "93.184.216.34"]])
def test_name_resolving_to_public_and_private_is_refused(answers: list[str]) -> None:
    resolver = fake_resolver({"mixed.test": answers})
    with pytest.raises(RefusedAddress, match="private"):
        run(resolve_and_check("https://mixed.test/", [], resolver=resolver))


def test_name_resolving_to_mapped_loopback_is_refused() -> None:
    resolver = fake_resolver({"sneaky.test": ["93.184.216.34", "::ffff:127.0.0.1"]})
    with pytest.raises(RefusedAddress, match="loopback"):
        run(resolve_and_check("http://sneaky.test/", [], resolver=resolver))


def test_name_resolving_to_public_addresses_passes() -> None:
    calls: list[str] = []
    resolver = fake_resolver(
        {"example.test": ["93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"]}, calls
    )
    target = run(resolve_and_check("https://Example.TEST:8443/a?b=1#frag", [], resolver=resolver))
    assert calls == ["example.test"]
    assert target.ip == "93.184.216.34"
    assert target.addresses == ("93.184.216.34", "2606:2800:220:1::1")
    assert target.url == "https://example.test:8443/a?b=1"
    assert target.host_header == "example.test:8443"
    assert target.connect_url() == "https://93.184.216.34:8443/a?b=1"
    assert target.connect_url("2606:2800:220:1::1") == "https://[2606:2800:220:1::1]:8443/a?b=1"
    with pytest.raises(ValueError):
        target.connect_url("10.0.0.1")  # only checked addresses


def test_default_port_is_left_out_of_the_host_header() -> None:
    resolver = fake_resolver({"example.test": ["93.184.216.34"]})
    target = run(resolve_and_check("http://example.test/", [], resolver=resolver))
    assert (target.port, target.host_header) == (80, "example.test")
    target = run(resolve_and_check("http://[2606:4700::1111]:81/", [], resolver=no_resolver))
    assert target.host_header == "[2606:4700::1111]:81"


def test_unresolvable_host() -> None:
    with pytest.raises(Unresolvable) as info:
        run(resolve_and_check("http://nowhere.test/", [], resolver=fake_resolver({})))
    assert info.value.retryable is False
    assert info.value.http_status == 422
    with pytest.raises(Unresolvable):
        run(resolve_and_check("http://empty.test/", [], resolver=fake_resolver({"empty.test": []})))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.test/file",
        "file:///etc/passwd",
        "gopher://example.test/",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "//example.test/",
        "http://user:secret@example.test/",
        "http://user@example.test/",
        "https://:@example.test/",
        "http:///nohost",
        "http://example.test:0/",
        "http://example.test:65536/",
        "http://exa mple.test/",
        "http://example.test/\r\nX-Injected: 1",
        "http://exa%6dple.test/",
        "http://-bad-.test/",
        "http://[fe80::1%25eth0]/",
        "",
        "http://" + "a" * 5000 + ".test/",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(RefusedUrl) as info:
        run(resolve_and_check(url, [], resolver=no_resolver))
    assert info.value.http_status == 400


def test_validate_url_answers_the_normalised_url() -> None:
    resolver = fake_resolver({"hooks.example.test": ["93.184.216.34"]})
    url = run(validate_url("HTTPS://Hooks.Example.Test/in?x=1#f", [], resolver=resolver))
    assert url == "https://hooks.example.test/in?x=1"
    with pytest.raises(RefusedAddress):
        run(validate_url("http://10.0.0.1/", [], resolver=no_resolver))


# -- fetching from local servers ---------------------------------------------------------

Handler = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[None]]


class LocalServer:
    """A tiny HTTP/1.1 server on 127.0.0.1 that records what it receives."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.port = 0

    async def __aenter__(self) -> LocalServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for item in lines:
                if ":" in item:
                    name, value = item.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            request = {"line": line, "headers": headers}
            self.requests.append(request)
            await self.handler(request, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def respond(status: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        fields = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
        head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        writer.write(f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body)

    return handler


def test_fetch_from_an_allowlisted_local_server() -> None:
    async def body() -> None:
        handler = respond("200 OK", b"\x89PNG...", {"Content-Type": "image/png"})
        async with LocalServer(handler) as server:
            url = f"http://127.0.0.1:{server.port}/pic.png?size=1"
            content_type, data = await fetch(url, LOCAL, max_bytes=1024, timeout_s=5)
            assert (content_type, data) == ("image/png", b"\x89PNG...")
            request = server.requests[0]
            assert request["line"] == "GET /pic.png?size=1 HTTP/1.1"
            assert request["headers"]["host"] == f"127.0.0.1:{server.port}"
            assert "authorization" not in request["headers"]

    run(body())


def test_fetch_connects_to_the_checked_address_with_the_original_host_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The resolver is asked once; the connection goes to its answer (a second lookup of
    # media.test by the HTTP client would fail: the name exists only here). A proxy in
    # the environment is ignored.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    calls: list[str] = []
    resolver = fake_resolver({"media.test": ["127.0.0.1"]}, calls)

    async def body() -> None:
        async with LocalServer(respond("200 OK", b"hello")) as server:
            url = f"http://media.test:{server.port}/a"
            _, data = await fetch(url, LOCAL, max_bytes=1024, timeout_s=5, resolver=resolver)
            assert data == b"hello"
            assert server.requests[0]["headers"]["host"] == f"media.test:{server.port}"
        assert calls == ["media.test"]

    run(body())


def test_fetch_refuses_a_local_server_that_is_not_allowlisted() -> None:
    async def body() -> None:
        async with LocalServer(respond("200 OK", b"secret")) as server:
            for url in (
                f"http://127.0.0.1:{server.port}/",
                f"http://[::ffff:127.0.0.1]:{server.port}/",
                f"http://localhost.test:{server.port}/",
            ):
                resolver = fake_resolver({"localhost.test": ["127.0.0.1"]})
                with pytest.raises(RefusedAddress):
                    await fetch(url, [], max_bytes=1024, timeout_s=5, resolver=resolver)
            assert server.connections == 0

    run(body())


@pytest.mark.parametrize("status", ["301 Moved Permanently", "302 Found", "307 Temporary Redirect"])
def test_redirects_are_never_followed(status: str) -> None:
    calls: list[str] = []
    resolver = fake_resolver({}, calls)

    async def body() -> None:
        handler = respond(status, headers={"Location": "http://10.0.0.1/"})
        async with LocalServer(handler) as server:
            url = f"http://127.0.0.1:{server.port}/start"
            with pytest.raises(RedirectRefused) as info:
                await fetch(url, LOCAL, max_bytes=1024, timeout_s=5, resolver=resolver)
            assert info.value.location == "http://10.0.0.1/"
            assert info.value.status == int(status[:3])
            assert info.value.retryable is False
            assert "http://10.0.0.1/" in str(info.value)
            assert server.connections == 1  # one request, no second hop
        assert calls == []

    run(body())


def test_redirect_to_an_allowed_address_is_not_followed_either() -> None:
    async def body() -> None:
        async with LocalServer(respond("200 OK", b"")) as target:
            location = f"http://127.0.0.1:{target.port}/elsewhere"
            async with LocalServer(respond("302 Found", headers={"Location": location})) as first:
                with pytest.raises(RedirectRefused):
                    await fetch(f"http://127.0.0.1:{first.port}/", LOCAL, max_bytes=64, timeout_s=5)
            assert target.connections == 0

    run(body())


def chunked(total: int, chunk: int = 16 * 1024) -> Handler:
    async def handler(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        sent = 0
        while sent < total:
            n = min(chunk, total - sent)
            writer.write(f"{n:x}\r\n".encode() + b"x" * n + b"\r\n")
            sent += n
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    return handler


def test_max_bytes_stops_a_stream_without_content_length() -> None:
    async def body() -> None:
        async with LocalServer(chunked(4 * 1024 * 1024)) as server:
            with pytest.raises(TooLarge) as info:
                await fetch(
                    f"http://127.0.0.1:{server.port}/", LOCAL, max_bytes=64 * 1024, timeout_s=5
                )
            assert info.value.http_status == 413
        async with LocalServer(chunked(64 * 1024, chunk=1000)) as server:
            _, data = await fetch(
                f"http://127.0.0.1:{server.port}/", LOCAL, max_bytes=64 * 1024, timeout_s=5
            )
            assert len(data) == 64 * 1024

    run(body())


def test_max_bytes_refuses_a_declared_length_before_reading() -> None:
    async def handler(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)

    async def body() -> None:
        async with LocalServer(handler) as server:
            with pytest.raises(TooLarge, match="announces 100000000 bytes"):
                await fetch(f"http://127.0.0.1:{server.port}/", LOCAL, max_bytes=1024, timeout_s=5)

    run(body())


def test_timeout_covers_a_server_that_never_answers() -> None:
    async def handler(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async def body() -> None:
        async with LocalServer(handler) as server:
            with pytest.raises(FetchFailed) as info:
                await fetch(f"http://127.0.0.1:{server.port}/", LOCAL, max_bytes=64, timeout_s=0.3)
            assert (info.value.reason, info.value.retryable) == ("timeout", True)

    run(body())


@pytest.mark.parametrize(
    ("status", "retryable"),
    [("404 Not Found", False), ("403 Forbidden", False), ("429 Too Many", True), ("503 No", True)],
)
def test_error_statuses(status: str, retryable: bool) -> None:
    async def body() -> None:
        async with LocalServer(respond(status, b"nope")) as server:
            with pytest.raises(FetchFailed) as info:
                await fetch(f"http://127.0.0.1:{server.port}/", LOCAL, max_bytes=64, timeout_s=5)
            assert info.value.status == int(status[:3])
            assert info.value.retryable is retryable

    run(body())


def test_connection_refused_is_a_retryable_failure() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchFailed) as info:
        run(fetch(f"http://127.0.0.1:{port}/", LOCAL, max_bytes=64, timeout_s=5))
    assert (info.value.reason, info.value.retryable) == ("connect", True)


# -- https: SNI and certificate checks use the host name ---------------------------------


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_sends_sni_and_checks_the_certificate_against_the_host_name(
    tmp_path: Path,
) -> None:
    cert, key = _self_signed(tmp_path, "media.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment]
    client_tls = ssl.create_default_context(cafile=str(cert))
    resolver = fake_resolver({"media.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})

    async def body() -> None:
        async with LocalServer(respond("200 OK", b"tls"), tls=server_tls) as server:
            _, data = await fetch(
                f"https://media.test:{server.port}/x",
                LOCAL,
                max_bytes=64,
                timeout_s=5,
                resolver=resolver,
                verify=client_tls,
            )
            assert data == b"tls"
            assert seen_sni == ["media.test"]
            assert server.requests[0]["headers"]["host"] == f"media.test:{server.port}"
            # The same address under a name the certificate does not carry: refused.
            with pytest.raises(FetchFailed) as info:
                await fetch(
                    f"https://other.test:{server.port}/x",
                    LOCAL,
                    max_bytes=64,
                    timeout_s=5,
                    resolver=resolver,
                    verify=client_tls,
                )
            assert "other.test" in str(info.value)

    run(body())


# -- GuardedTransport: an httpx client whose every request goes through the guard ----------


def _guarded(allowed: list[Any], resolver: Any = None, **kwargs: Any) -> Any:
    import httpx

    transport = ssrf.GuardedTransport(allowed, resolver=resolver, **kwargs)
    return httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)


def test_guarded_client_refuses_addresses_outside_the_allowlist() -> None:
    async def body() -> None:
        async with LocalServer(respond("200 OK", b"token taken")) as server:
            resolver = fake_resolver(
                {"graph.test": ["127.0.0.1"], "mixed.test": ["8.8.8.8", "10.1.1.1"]}
            )
            async with _guarded([], resolver) as client:
                for url in (
                    f"http://127.0.0.1:{server.port}/v21.0/1/messages",
                    f"http://graph.test:{server.port}/v21.0/1/messages",
                    "http://169.254.169.254/latest/meta-data/",
                    "http://10.0.0.5:8080/x",
                    f"http://mixed.test:{server.port}/x",
                ):
                    with pytest.raises(RefusedAddress) as info:
                        await client.post(url, headers={"Authorization": "Bearer secret"})
                    assert "OUTBOUND_ALLOW_NETWORKS" in info.value.message
            # Allowing 169.254.0.0/16 still does not reach the metadata address.
            async with _guarded(net("169.254.0.0/16")) as client:
                with pytest.raises(RefusedAddress):
                    await client.get("http://169.254.169.254/latest/meta-data/")
            assert server.connections == 0

    run(body())


def test_guarded_client_connects_to_the_checked_address_with_the_host_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    calls: list[str] = []
    resolver = fake_resolver({"graph.test": ["127.0.0.1"]}, calls)

    async def body() -> None:
        async with LocalServer(respond("200 OK", b'{"id":"1"}')) as server:
            async with _guarded(LOCAL, resolver) as client:
                url = f"http://graph.test:{server.port}/v21.0/1/messages?x=1"
                for _ in range(2):
                    answer = await client.post(url, content=b"{}", headers={"Authorization": "B"})
                    assert answer.status_code == 200 and answer.json() == {"id": "1"}
            first = server.requests[0]
            assert first["line"] == "POST /v21.0/1/messages?x=1 HTTP/1.1"
            assert first["headers"]["host"] == f"graph.test:{server.port}"
            assert first["headers"]["authorization"] == "B"
        assert calls == ["graph.test", "graph.test"]  # resolved and checked at each request

    run(body())


def test_guarded_client_unresolvable_host_is_a_connect_error() -> None:
    import httpx

    async def body() -> None:
        async with _guarded(LOCAL, fake_resolver({})) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get("http://nowhere.test/x")
            assert "nowhere.test" in str(info.value)

    run(body())


def test_guarded_client_https_sends_sni_and_checks_the_host_name(tmp_path: Path) -> None:
    import httpx

    cert, key = _self_signed(tmp_path, "graph.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment]
    client_tls = ssl.create_default_context(cafile=str(cert))
    resolver = fake_resolver({"graph.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})

    async def body() -> None:
        async with (
            LocalServer(respond("200 OK", b"tls"), tls=server_tls) as server,
            _guarded(LOCAL, resolver, verify=client_tls) as client,
        ):
            answer = await client.get(f"https://graph.test:{server.port}/x")
            assert answer.content == b"tls"
            assert seen_sni == ["graph.test"]
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://other.test:{server.port}/x")

    run(body())
