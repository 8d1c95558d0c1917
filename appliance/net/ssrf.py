"""The SSRF guard: outbound HTTP only to public addresses, or to networks the operator allows.

Media fetched by URL, webhook deliveries and the cloud engine's Graph API calls go to
addresses that callers choose, so the appliance must not become a way into its own
network (the database's neighbours, the cloud metadata service, loopback admin
ports). Three rules:

- **Every resolved address is checked.** A host name that resolves to one public
  and one private address is refused: which one a later connection would use is not
  ours to guess.
- **The connection goes to the checked address.** ``resolve_and_check`` answers the
  address it checked, and ``fetch`` connects to exactly that address while sending
  the original ``Host`` header (and SNI, and certificate checks against the host
  name for https). There is no second DNS lookup for a rebinding attack to win.
- **Redirects are never followed.** A 3xx is an error naming the target; the caller
  decides whether to try that URL, which then goes through the same checks.

``OUTBOUND_ALLOW_NETWORKS`` (old name ``WEBHOOK_ALLOW_NETWORKS``;
``Settings.allowed_private_networks``) lists the
non-public networks that may be reached nevertheless (an intranet CRM, a local test
receiver). The cloud metadata addresses stay refused unless allowed as one exact
address (``169.254.169.254/32``), so allowing a whole link-local range does not
expose them by accident.

No proxy from the environment is used (``trust_env=False``): a proxy would resolve
names itself, after our check.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx

from appliance import __version__
from appliance.errors import ClientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the host's addresses as strings, in the order to try them.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

SCHEMES = {"http": 80, "https": 443}
MAX_URL_LENGTH = 4096
USER_AGENT = f"whatsapp-gateway-appliance/{__version__}"
# A DNS host name after IDNA encoding: labels of letters, digits, '-' and '_'.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)

ALLOW_HINT = "list its network in OUTBOUND_ALLOW_NETWORKS to allow it"


# -- errors ------------------------------------------------------------------------------


class RefusedUrl(ClientError):
    """The URL may not be fetched: wrong scheme, userinfo, no host, bad port. Not retryable."""

    http_status = 400


class RefusedAddress(RefusedUrl):
    """The address (or an address the host resolves to) is not public and not allowed."""

    http_status = 400

    def __init__(self, message: str, *, address: str, reason: str) -> None:
        super().__init__(message)
        self.address = address  # for logs; not in the error body
        self.reason = reason


class TooLarge(ClientError):
    """The body is larger than allowed."""

    http_status = 413

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class FetchFailed(ClientError):
    """The URL was allowed but fetching it failed. ``retryable`` tells a queue what to do."""

    http_status = 422

    def __init__(
        self, message: str, *, reason: str, retryable: bool, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason  # 'redirect', 'status', 'timeout', 'connect', 'protocol', 'dns'
        self.retryable = retryable
        self.status = status


class RedirectRefused(FetchFailed):
    """The server answered a 3xx; it is not followed. ``location`` names the target."""

    def __init__(self, message: str, *, status: int, location: str | None) -> None:
        super().__init__(message, reason="redirect", retryable=False, status=status)
        self.location = location


class Unresolvable(FetchFailed):
    """The host name does not resolve (now)."""


# -- addresses ---------------------------------------------------------------------------


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), label) for net, label in pairs)


# First match wins; anything else must also be ``is_global``.
_REFUSED_V4 = _nets(
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol assignment"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay anycast address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_REFUSED_V6 = _nets(
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "a deprecated IPv4-compatible address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001::/23", "an IETF protocol assignment (Teredo, benchmarking, ...)"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "an SRv6 segment identifier"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
# Instance metadata services (AWS, GCP, Azure, OpenStack; AWS over IPv6; Alibaba; Oracle).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)


def parse_address(value: str | IPAddress) -> IPAddress:
    """An address from a string; a zone index (``fe80::1%eth0``) is dropped."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        text = str(value)
    else:
        text = value.strip().strip("[]")
    return ipaddress.ip_address(text.split("%", 1)[0])


def _embedded_v4(addr: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 form reaches, judged in its place."""
    if addr in _MAPPED:
        assert addr.ipv4_mapped is not None
        return addr.ipv4_mapped, "the IPv4-mapped form of"
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF), "the NAT64 form of"
    if addr in _SIX_TO_FOUR:
        assert addr.sixtofour is not None
        return addr.sixtofour, "a 6to4 address embedding"
    return None


def refusal_reason(
    value: str | IPAddress, allowed_networks: Iterable[IPNetwork] = ()
) -> str | None:
    """Why the address may not be reached (e.g. 'a loopback address'), or None if it may."""
    addr = parse_address(value)
    allowed = list(allowed_networks)
    if addr in METADATA_ADDRESSES:
        exact = any(n.num_addresses == 1 and addr in n for n in allowed)
        return None if exact else "a cloud metadata endpoint"
    if any(addr.version == n.version and addr in n for n in allowed):
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_v4(addr)
        if embedded is not None:
            inner, how = embedded
            why = refusal_reason(inner, allowed)
            return None if why is None else f"{how} {inner}, {why}"
    for net, label in _REFUSED_V4 if addr.version == 4 else _REFUSED_V6:
        if addr in net:
            return label
    if addr.version == 6 and addr not in _GLOBAL_UNICAST_V6:
        return "outside the global unicast range 2000::/3"
    if not addr.is_global:
        return "not a globally routable address"
    return None


def check_address(value: str | IPAddress, allowed_networks: Iterable[IPNetwork] = ()) -> None:
    """Raise RefusedAddress unless the address is public or inside an allowed network."""
    try:
        addr = parse_address(value)
    except ValueError:
        raise RefusedAddress(
            f"{str(value)[:100]!r} is not an IP address", address=str(value), reason="invalid"
        ) from None
    why = refusal_reason(addr, allowed_networks)
    if why is not None:
        raise RefusedAddress(
            f"refused: {addr} is {why}; only public addresses are reached ({ALLOW_HINT})",
            address=str(addr),
            reason=why,
        )


# -- URLs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A URL whose host was resolved and checked: connect to ``ip``, nowhere else."""

    url: str  # the URL as parsed, without a fragment
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, no brackets
    port: int
    ip: str  # the checked address to connect to
    addresses: tuple[str, ...]  # every address the host resolved to, all checked

    @property
    def host_is_ip(self) -> bool:
        try:
            parse_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if SCHEMES[self.scheme] == self.port else f"{host}:{self.port}"

    def connect_url(self, ip: str | None = None) -> str:
        """The URL with the checked address in place of the host name."""
        address = ip or self.ip
        if address not in self.addresses:
            raise ValueError(f"{address} was not checked for {self.host}")
        return str(httpx.URL(self.url).copy_with(host=address, port=self.port))


@dataclass(frozen=True)
class _Parsed:
    url: str
    scheme: str
    host: str
    port: int


@functools.lru_cache(maxsize=1024)
def parse_url(url: str) -> _Parsed:
    """Syntax checks only: http(s), a host, no userinfo, a port in 1-65535.

    A pure function of the string, so cached (webhook deliveries parse the same few URLs
    at every attempt; it was a fifth of the delivery client's profile). Resolving and
    checking the addresses (``resolve_and_check``) is never cached."""
    if not isinstance(url, str) or not url:
        raise RefusedUrl("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise RefusedUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise RefusedUrl("the URL contains spaces or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise RefusedUrl(f"the URL cannot be parsed: {exc}") from None
    scheme = parsed.scheme
    if scheme not in SCHEMES:
        raise RefusedUrl("only http:// and https:// URLs are allowed")
    if parsed.userinfo:
        raise RefusedUrl("URLs with a user name or password (user@host) are not allowed")
    host = parsed.raw_host.decode("ascii", "replace")
    if not host:
        raise RefusedUrl("the URL has no host")
    port = parsed.port if parsed.port is not None else SCHEMES[scheme]
    if not 1 <= port <= 65535:
        raise RefusedUrl(f"port {port} is outside 1-65535")
    try:
        parse_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise RefusedUrl(f"{host[:100]!r} is not a valid host name") from None
    else:
        if "%" in host:
            raise RefusedUrl("IPv6 zone indexes are not allowed in URLs")
    return _Parsed(url=str(parsed.copy_with(fragment=None)), scheme=scheme, host=host, port=port)


async def system_resolver(host: str, port: int) -> list[str]:
    """The event loop's getaddrinfo: TCP addresses in the system's preferred order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _numeric_host(host: str) -> str | None:
    """The address a numeric host means, in any form inet_aton accepts (127.1, 0x7f000001).

    Local parsing only (AI_NUMERICHOST): never a DNS query.
    """
    try:
        return str(parse_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return str(infos[0][4][0]) if infos else None


async def resolve_and_check(
    url: str, allowed_networks: Iterable[IPNetwork], *, resolver: Resolver | None = None
) -> Target:
    """Parse the URL, resolve its host once, check every address; answer what to connect to."""
    parsed = parse_url(url)
    allowed = list(allowed_networks)
    numeric = _numeric_host(parsed.host)
    if numeric is not None:
        check_address(numeric, allowed)
        return Target(parsed.url, parsed.scheme, parsed.host, parsed.port, numeric, (numeric,))
    resolve = resolver or system_resolver
    try:
        found = await resolve(parsed.host, parsed.port)
    except socket.gaierror as exc:
        retryable = exc.errno not in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
        raise Unresolvable(
            f"the host {parsed.host} cannot be resolved: {exc.strerror or exc}",
            reason="dns",
            retryable=retryable,
        ) from None
    except (UnicodeError, OSError) as exc:
        raise Unresolvable(
            f"the host {parsed.host} cannot be resolved: {exc}", reason="dns", retryable=True
        ) from None
    addresses: list[str] = []
    for raw in found:
        try:
            text = str(parse_address(raw))
        except ValueError:
            raise RefusedAddress(
                f"refused: {parsed.host} resolves to something that is not an IP address",
                address=str(raw),
                reason="invalid",
            ) from None
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise Unresolvable(f"the host {parsed.host} has no addresses", reason="dns", retryable=True)
    for text in addresses:
        why = refusal_reason(text, allowed)
        if why is not None:
            # The address itself is left out of the message: it would tell callers how
            # internal names resolve. It is kept on the exception for the log.
            raise RefusedAddress(
                f"refused: {parsed.host} resolves to {why}; only public addresses are "
                f"reached ({ALLOW_HINT})",
                address=text,
                reason=why,
            )
    return Target(
        parsed.url, parsed.scheme, parsed.host, parsed.port, addresses[0], tuple(addresses)
    )


async def validate_url(
    url: str, allowed_networks: Iterable[IPNetwork], *, resolver: Resolver | None = None
) -> str:
    """Check a URL when it is stored (e.g. a webhook), answering it normalised.

    The same checks as a fetch; the fetch checks again, since DNS answers change.
    Raises RefusedUrl / RefusedAddress (400) or Unresolvable (422).
    """
    target = await resolve_and_check(url, allowed_networks, resolver=resolver)
    return target.url


# -- fetching ----------------------------------------------------------------------------


async def fetch(
    url: str,
    allowed_networks: Iterable[IPNetwork],
    *,
    max_bytes: int,
    timeout_s: float,
    resolver: Resolver | None = None,
    headers: dict[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> tuple[str | None, bytes]:
    """GET ``url`` through the guard: (Content-Type header or None, body).

    Connects only to checked addresses, never follows redirects (RedirectRefused),
    stops reading past ``max_bytes`` (TooLarge, 413), gives up after ``timeout_s`` in
    all (FetchFailed with reason 'timeout'). ``verify`` exists for tests with a local CA.
    """
    host = "the server"
    try:
        async with asyncio.timeout(timeout_s):
            target = await resolve_and_check(url, allowed_networks, resolver=resolver)
            host = target.host
            return await _get(target, max_bytes, timeout_s, headers or {}, verify)
    except TimeoutError:
        raise FetchFailed(
            f"fetching from {host} took longer than {timeout_s:g} s",
            reason="timeout",
            retryable=True,
        ) from None


def _transport_error(exc: httpx.HTTPError, doing: str) -> Exception:
    """What an httpx failure other than a refused connection becomes: a timeout stays a
    timeout, anything else is a retryable protocol failure."""
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutError()
    return FetchFailed(f"{doing} failed: {exc}", reason="protocol", retryable=True)


async def _get(
    target: Target,
    max_bytes: int,
    timeout_s: float,
    headers: dict[str, str],
    verify: ssl.SSLContext | bool,
) -> tuple[str | None, bytes]:
    send_headers = {
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        "Accept-Encoding": "identity",
        **headers,
        "Host": target.host_header,
    }
    extensions = {}
    if target.scheme == "https" and not target.host_is_ip:
        # TLS: SNI and the certificate check use the host name, not the address.
        extensions["sni_hostname"] = target.host
    async with httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        verify=verify,
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
    ) as client:
        last: Exception | None = None
        for ip in target.addresses:
            request = client.build_request(
                "GET", target.connect_url(ip), headers=send_headers, extensions=extensions
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last = exc  # the next checked address may answer
                continue
            except httpx.HTTPError as exc:
                raise _transport_error(exc, f"fetching from {target.host}") from None
            try:
                return await _read(target, response, max_bytes)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, f"reading from {target.host}") from None
            finally:
                await response.aclose()
    raise FetchFailed(
        f"cannot connect to {target.host} port {target.port}: {last}",
        reason="connect",
        retryable=True,
    )


async def _read(
    target: Target, response: httpx.Response, max_bytes: int
) -> tuple[str | None, bytes]:
    status = response.status_code
    if 300 <= status < 400:
        location = response.headers.get("Location")
        shown = repr(location[:300]) if location else "nowhere"
        raise RedirectRefused(
            f"{target.host} answered HTTP {status}, a redirect to {shown}; redirects are not "
            f"followed: use the final URL",
            status=status,
            location=location,
        )
    if not 200 <= status < 300:
        raise FetchFailed(
            f"{target.host} answered HTTP {status}",
            reason="status",
            retryable=status in (408, 425, 429) or status >= 500,
            status=status,
        )
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(
            f"{target.host} announces {int(declared)} bytes; the limit is {max_bytes} bytes",
            limit=max_bytes,
        )
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(
                f"the body from {target.host} exceeds the limit of {max_bytes} bytes",
                limit=max_bytes,
            )
    return response.headers.get("Content-Type"), bytes(body)


# -- a guarded httpx transport -----------------------------------------------------------


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends every request through the guard.

    For clients that make many requests to a configured host (the cloud engine's Graph
    API and media downloads), where ``fetch`` (one GET) does not fit. Each request's
    host is resolved and every address checked (RefusedUrl / RefusedAddress propagate
    to the caller unchanged); the request then goes to the first checked address that
    accepts a connection, with the original ``Host`` header and, for https, SNI and the
    certificate check on the host name. A host that does not resolve (or not within
    ``resolve_timeout_s``) is an ``httpx.ConnectError`` / ``ConnectTimeout``, as an
    unreachable server is. Redirects are the client's business: build it with
    ``follow_redirects=False``.

    Connections are pooled per (scheme, host name, port), never per address alone, so
    a TLS connection verified for one name never carries another name's requests.
    ``inner`` replaces the network transport (tests); it then serves every host.
    """

    MAX_POOLS = 16

    def __init__(
        self,
        allowed_networks: Iterable[IPNetwork],
        *,
        resolver: Resolver | None = None,
        inner: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        resolve_timeout_s: float = 20.0,
    ) -> None:
        self.allowed_networks = list(allowed_networks)
        self.resolver = resolver
        self.resolve_timeout_s = resolve_timeout_s
        self._inner = inner
        self._verify = verify
        self._pools: dict[tuple[str, str, int], httpx.AsyncBaseTransport] = {}

    def _pool(self, target: Target) -> httpx.AsyncBaseTransport:
        if self._inner is not None:
            return self._inner
        key = (target.scheme, target.host, target.port)
        pool = self._pools.pop(key, None)
        if pool is None:
            if len(self._pools) >= self.MAX_POOLS:  # forget the least recently used host
                oldest = next(iter(self._pools))
                old = self._pools.pop(oldest)
                task = asyncio.get_running_loop().create_task(old.aclose())
                task.add_done_callback(lambda _: None)
            pool = httpx.AsyncHTTPTransport(verify=self._verify, trust_env=False)
        self._pools[key] = pool  # most recently used last
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        try:
            async with asyncio.timeout(self.resolve_timeout_s):
                target = await resolve_and_check(url, self.allowed_networks, resolver=self.resolver)
        except TimeoutError:
            host = request.url.host
            raise httpx.ConnectTimeout(f"resolving {host} timed out", request=request) from None
        except RefusedUrl:
            raise
        except FetchFailed as exc:  # the host does not resolve (now)
            raise httpx.ConnectError(exc.message, request=request) from None
        request.headers["Host"] = target.host_header
        if target.scheme == "https" and not target.host_is_ip:
            request.extensions = {**request.extensions, "sni_hostname": target.host}
        pool = self._pool(target)
        last: httpx.ConnectError | None = None
        for ip in target.addresses:
            request.url = httpx.URL(target.connect_url(ip))
            try:
                return await pool.handle_async_request(request)
            except httpx.ConnectError as exc:
                last = exc  # the next checked address may answer
        assert last is not None
        raise last

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()  # an ``inner`` transport belongs to whoever gave it
