"""The HTTP client of webhook deliveries: HTTP/1.1 (``h11``) on asyncio streams, with
keep-alive connections kept per pinned address.

It replaced an ``httpx.AsyncClient`` per receiver host, whose pool and stream layers
were about 60 % of the worker's CPU per delivery (the issue 18 profile). What it keeps:

- **The SSRF guard with the pinned address.** Every attempt resolves and checks the
  URL's host (``ssrf.resolve_and_check``) and connects only to the checked address.
  Idle connections are kept per (scheme, host name, port, checked address): a
  connection is reused only for the same host name at the same checked address, so a
  TLS connection verified for one name never carries another name's deliveries (two
  hosts behind one CDN address), and a host whose DNS answer changed gets a new one.
- **TLS verification.** ``ssl.create_default_context()``: certificate chain and host
  name checked, SNI sent for the URL's host name (never the address).
- **Timeouts.** ``timeout_s`` bounds the whole attempt: connecting, TLS, sending,
  reading the answer.
- **Redirects refused.** A 3xx is an answer like any other (a failed attempt); no
  request ever follows it.
- **The answer's size is capped.** Only the first ``max_response_bytes`` of the body
  are read (then the connection is closed, not reused); h11 caps the head at 16 KiB.

A kept connection that the receiver closed while it was idle fails before any byte
of an answer arrives; such a request is sent once more on a new connection (at most
once, and only then). Deliveries are at-least-once and carry ``webhook-id`` for
receivers to de-duplicate, so a receiver that read the first request and closed
without answering may see it twice, as after any failed attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import h11
import httpx

from appliance.net import ssrf

SNIPPET_BYTES = 1024  # the answer's first bytes kept with an attempt
READ_CHUNK = 65536


@dataclass(frozen=True)
class AttemptResult:
    status: int | None
    retry_after: str | None
    snippet: str | None
    error: str | None
    duration_ms: float


class _Stale(Exception):
    """A reused connection failed before any byte of an answer arrived."""


class _Failed(Exception):
    """The attempt failed; the message is what the attempt records."""


Key = tuple[str, str, int, str]  # scheme, host name, port, checked address


class _Connection:
    __slots__ = ("h11", "idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def usable(self, now: float, idle_s: float) -> bool:
        return (
            now - self.idle_since < idle_s
            and not self.writer.is_closing()
            and not self.reader.at_eof()
            and self.h11.our_state is h11.IDLE
            and self.h11.their_state is h11.IDLE
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class DeliveryClient:
    """POSTs to webhook receivers; ``post`` never raises for what the receiver or the
    network does, it answers an ``AttemptResult``."""

    MAX_KEYS = 256  # receivers (scheme, host, port, address) with idle connections kept
    MAX_IDLE_PER_KEY = 16
    IDLE_S = 5.0  # an idle connection older than this is closed, not reused

    def __init__(
        self,
        *,
        resolver: ssrf.Resolver | None = None,
        tls: ssl.SSLContext | None = None,
        max_response_bytes: int = SNIPPET_BYTES,
    ) -> None:
        self.resolver = resolver
        self._tls = tls
        self.max_response_bytes = max_response_bytes
        self._idle: OrderedDict[Key, list[_Connection]] = OrderedDict()
        self._paths: dict[str, bytes] = {}  # URL -> request target (path and query)
        self.connections_opened = 0  # for tests and benchmarks

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:  # loading the CA store is slow: once
            self._tls = ssl.create_default_context()
        return self._tls

    async def close(self) -> None:
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        for conn in idle:
            conn.close()
        for conn in idle:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.writer.wait_closed(), 1.0)

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        allowed_networks: Iterable[ssrf.IPNetwork],
        timeout_s: float,
    ) -> AttemptResult:
        start = time.perf_counter()

        def done(
            status: int | None = None,
            *,
            retry_after: str | None = None,
            snippet: str | None = None,
            error: str | None = None,
        ) -> AttemptResult:
            return AttemptResult(
                status, retry_after, snippet, error, (time.perf_counter() - start) * 1000
            )

        try:
            target = await ssrf.resolve_and_check(url, allowed_networks, resolver=self.resolver)
        except ssrf.RefusedUrl as exc:
            return done(error=f"refused: {exc.message}")
        except ssrf.FetchFailed as exc:
            return done(error=exc.message)
        try:
            request = self._request(target, body, headers)
            async with asyncio.timeout(timeout_s):
                status, retry_after, snippet = await self._exchange(target, request, body)
        except TimeoutError:
            return done(error=f"timed out after {timeout_s:g} s")
        except _Failed as exc:
            return done(error=str(exc)[:500])
        return done(status, retry_after=retry_after, snippet=snippet)

    def _request(self, target: ssrf.Target, body: bytes, headers: dict[str, str]) -> h11.Request:
        path = self._paths.get(target.url)
        if path is None:
            if len(self._paths) >= 4096:
                self._paths.clear()
            path = self._paths[target.url] = httpx.URL(target.url).raw_path
        fields = [("Host", target.host_header), *headers.items()]
        fields.append(("Content-Length", str(len(body))))
        try:
            return h11.Request(method="POST", target=path, headers=fields)
        except (h11.LocalProtocolError, UnicodeError, ValueError) as exc:  # a bad header
            raise _Failed(f"LocalProtocolError: {exc}") from None

    async def _exchange(
        self, target: ssrf.Target, request: h11.Request, body: bytes
    ) -> tuple[int, str | None, str]:
        key: Key = (target.scheme, target.host, target.port, target.ip)
        conn = self._checkout(key)
        if conn is not None:
            try:
                return await self._send(key, conn, request, body)
            except _Stale:
                pass  # closed by the receiver while idle: once more on a new connection
        conn = await self._open(target)
        try:
            return await self._send(key, conn, request, body)
        except _Stale as exc:
            raise _Failed(str(exc)) from None

    def _checkout(self, key: Key) -> _Connection | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.usable(now, self.IDLE_S):
                return conn
            conn.close()
        return None

    def _checkin(self, key: Key, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        conns = self._idle.get(key)
        if conns is None:
            if len(self._idle) >= self.MAX_KEYS:  # forget the least recently used receiver
                _, old = self._idle.popitem(last=False)
                for stale in old:
                    stale.close()
            conns = self._idle[key] = []
        else:
            self._idle.move_to_end(key)
        if len(conns) >= self.MAX_IDLE_PER_KEY:
            conn.close()
        else:
            conns.append(conn)

    async def _open(self, target: ssrf.Target) -> _Connection:
        try:
            if target.scheme == "https":
                reader, writer = await asyncio.open_connection(
                    target.ip,
                    target.port,
                    ssl=self._tls_context(),
                    server_hostname=target.host,
                    limit=READ_CHUNK,
                )
            else:
                reader, writer = await asyncio.open_connection(
                    target.ip, target.port, limit=READ_CHUNK
                )
        except ssl.SSLError as exc:
            raise _Failed(f"TLSError: {exc}") from None
        except OSError as exc:
            raise _Failed(f"ConnectError: {exc.strerror or exc}") from None
        self.connections_opened += 1
        return _Connection(reader, writer)

    async def _send(
        self, key: Key, conn: _Connection, request: h11.Request, body: bytes
    ) -> tuple[int, str | None, str]:
        """One request and its answer on ``conn``; the connection goes back to the idle
        list when the exchange ended cleanly, and is closed otherwise."""
        answered = False
        keep = False
        try:
            conn.writer.write(
                conn.h11.send(request)
                + conn.h11.send(h11.Data(data=body))
                + conn.h11.send(h11.EndOfMessage())
            )
            await conn.writer.drain()
            event = await self._next(conn)
            while isinstance(event, h11.InformationalResponse):
                event = await self._next(conn)
            if not isinstance(event, h11.Response):
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
            answered = True
            status = event.status_code
            retry_after = None
            for field, value in event.headers:
                if field == b"retry-after":
                    retry_after = value.decode("latin-1")
                    break
            snippet = b""
            while True:
                part = await self._next(conn)
                if isinstance(part, h11.Data):
                    snippet += part.data
                    if len(snippet) > self.max_response_bytes:
                        break  # the rest is not read: the connection is closed
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed before the end of the body
                    break
            if (
                conn.h11.our_state is h11.DONE
                and conn.h11.their_state is h11.DONE
                and len(snippet) <= self.max_response_bytes
            ):
                conn.h11.start_next_cycle()
                keep = True
            text = snippet[: self.max_response_bytes].decode("utf-8", "replace")
            return status, retry_after, text
        except (OSError, EOFError, h11.ProtocolError) as exc:
            kind = "ReadError" if isinstance(exc, OSError) else type(exc).__name__
            message = f"{kind}: {exc}"
            if not answered and conn.idle_since:
                raise _Stale(message) from None
            raise _Failed(message) from None
        finally:
            if keep:
                self._checkin(key, conn)
            else:
                conn.close()

    @staticmethod
    async def _next(conn: _Connection) -> h11.Event | type[h11.NEED_DATA]:
        for _ in range(1_000_000):  # bounded: each turn reads at least one byte or ends
            event = conn.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = await conn.reader.read(READ_CHUNK)
            conn.h11.receive_data(data)  # b"": end of stream (h11 then raises or ends)
        raise h11.RemoteProtocolError("answer never completed")
