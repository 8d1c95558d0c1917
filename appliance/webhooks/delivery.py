"""One HTTP POST to a receiver, through the SSRF guard: the host is resolved and
checked at each attempt, the connection goes to the checked address, redirects are
never followed, and only the first bytes of the answer are kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from appliance.net import ssrf

SNIPPET_BYTES = 1024


@dataclass(frozen=True)
class AttemptResult:
    status: int | None
    retry_after: str | None
    snippet: str | None
    error: str | None
    duration_ms: float


class Poster:
    """HTTP clients for deliveries, one per receiver host name.

    Requests go to the checked IP address, and httpx pools connections by address: a
    client per host name keeps a TLS connection verified for one name from carrying
    another name's deliveries (two hosts behind one CDN address).
    """

    MAX_CLIENTS = 256

    def __init__(self, *, resolver: ssrf.Resolver | None = None) -> None:
        self.resolver = resolver
        self._clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}

    def _client(self, target: ssrf.Target) -> httpx.AsyncClient:
        key = (target.scheme, target.host, target.port)
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) >= self.MAX_CLIENTS:  # forget the oldest receiver's pool
                oldest = next(iter(self._clients))
                old = self._clients.pop(oldest)
                task = asyncio.get_running_loop().create_task(old.aclose())
                task.add_done_callback(lambda _: None)
            client = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
            self._clients[key] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

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
        send_headers = {**headers, "Host": target.host_header}
        extensions = {}
        if target.scheme == "https" and not target.host_is_ip:
            extensions["sni_hostname"] = target.host
        client = self._client(target)
        request = client.build_request(
            "POST",
            target.connect_url(),
            content=body,
            headers=send_headers,
            extensions=extensions,
            timeout=httpx.Timeout(timeout_s),
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException:
            return done(error=f"timed out after {timeout_s:g} s")
        except httpx.HTTPError as exc:
            return done(error=f"{type(exc).__name__}: {exc}"[:500])
        try:
            snippet = b""
            async for chunk in response.aiter_bytes():
                snippet += chunk
                if len(snippet) >= SNIPPET_BYTES:
                    break
        except httpx.HTTPError:
            pass
        finally:
            await response.aclose()
        text = snippet[:SNIPPET_BYTES].decode("utf-8", "replace")
        return done(
            response.status_code, retry_after=response.headers.get("Retry-After"), snippet=text
        )
