"""The webhook delivery client (appliance/webhooks/client.py) against local receivers on
127.0.0.1: keep-alive reuse, a receiver closing idle connections, redirects not followed,
the answer's size cap, timeouts, the SSRF guard with the pinned address, TLS checks."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from appliance.webhooks.client import SNIPPET_BYTES, DeliveryClient
from tests.unit.test_ssrf import _self_signed

LOCAL = [ipaddress.ip_network("127.0.0.0/8")]

# request -> (raw answer bytes, close the connection after it)
Handler = Callable[[dict[str, Any]], Awaitable[tuple[bytes, bool]]]


def answer(
    status: str = "200 OK", body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    fields = {"Content-Length": str(len(body)), **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def always(raw: bytes, close: bool = False) -> Handler:
    async def handler(request: dict[str, Any]) -> tuple[bytes, bool]:
        return raw, close

    return handler


class Receiver:
    """HTTP/1.1 with keep-alive on 127.0.0.1: records requests and connections."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            for _ in range(1000):  # bounded: one request per turn
                head = await reader.readuntil(b"\r\n\r\n")
                line, *lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for item in lines:
                    if ":" in item:
                        name, value = item.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = {"line": line, "headers": headers, "body": body}
                self.requests.append(request)
                raw, close = await self.handler(request)
                writer.write(raw)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def resolver_for(names: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return names[host]

    return resolve


async def post(client: DeliveryClient, url: str, body: bytes = b"{}", **kwargs: Any) -> Any:
    return await client.post(
        url,
        body,
        {"Content-Type": "application/json", "webhook-id": "1"},
        allowed_networks=kwargs.pop("allowed", LOCAL),
        timeout_s=kwargs.pop("timeout_s", 10.0),
    )


def test_posts_reuse_one_kept_alive_connection() -> None:
    async def body() -> None:
        async with Receiver(always(answer(body=b"ok"))) as receiver:
            client = DeliveryClient()
            url = f"http://127.0.0.1:{receiver.port}/in?x=1"
            results = [await post(client, url, b'{"n":%d}' % i) for i in range(5)]
            await client.close()
        assert [(r.status, r.snippet, r.error) for r in results] == [(200, "ok", None)] * 5
        assert receiver.connections == 1 and client.connections_opened == 1
        assert [r["body"] for r in receiver.requests] == [b'{"n":%d}' % i for i in range(5)]
        first = receiver.requests[0]
        assert first["line"] == "POST /in?x=1 HTTP/1.1"
        assert first["headers"]["host"] == f"127.0.0.1:{receiver.port}"
        assert first["headers"]["content-length"] == "7"
        assert first["headers"]["webhook-id"] == "1"

    asyncio.run(body())


def test_concurrent_posts_each_get_a_connection_and_keep_them() -> None:
    async def body() -> None:
        async def slow(request: dict[str, Any]) -> tuple[bytes, bool]:
            await asyncio.sleep(0.05)
            return answer(), False

        async with Receiver(slow) as receiver:
            client = DeliveryClient()
            url = f"http://127.0.0.1:{receiver.port}/"
            for _ in range(3):
                results = await asyncio.gather(*(post(client, url) for _ in range(4)))
                assert [r.status for r in results] == [200] * 4
            await client.close()
        assert len(receiver.requests) == 12
        assert client.connections_opened == receiver.connections <= 4

    asyncio.run(body())


def test_a_connection_the_receiver_closed_is_replaced_without_a_lost_or_double_post() -> None:
    async def body() -> None:
        # Answers as keep-alive, then closes anyway (as receivers do after idling).
        async with Receiver(always(answer(), close=True)) as receiver:
            client = DeliveryClient()
            url = f"http://127.0.0.1:{receiver.port}/"
            results = []
            for _ in range(3):
                results.append(await post(client, url))
            await client.close()
        assert [(r.status, r.error) for r in results] == [(200, None)] * 3
        assert len(receiver.requests) == 3 and receiver.connections == 3

    asyncio.run(body())


def test_answers_marked_connection_close_are_not_reused() -> None:
    async def body() -> None:
        raw = answer(headers={"Connection": "close"})
        async with Receiver(always(raw, close=True)) as receiver:
            client = DeliveryClient()
            url = f"http://127.0.0.1:{receiver.port}/"
            for _ in range(2):
                assert (await post(client, url)).status == 200
            await client.close()
        assert client.connections_opened == 2

    asyncio.run(body())


def test_a_redirect_is_an_answer_and_not_followed() -> None:
    async def body() -> None:
        raw = answer("302 Found", headers={"Location": "http://10.0.0.1/x"})
        async with Receiver(always(raw)) as receiver:
            client = DeliveryClient()
            result = await post(client, f"http://127.0.0.1:{receiver.port}/")
            await client.close()
        assert result.status == 302 and result.error is None
        assert len(receiver.requests) == 1

    asyncio.run(body())


def test_only_the_first_bytes_of_a_large_answer_are_read_and_the_connection_is_dropped() -> None:
    async def body() -> None:
        big = b"x" * (4 * 1024 * 1024)
        async with Receiver(always(answer("500 Oops", big))) as receiver:
            client = DeliveryClient()
            url = f"http://127.0.0.1:{receiver.port}/"
            first = await post(client, url)
            second = await post(client, url)
            await client.close()
        assert first.status == 500 and first.snippet == "x" * SNIPPET_BYTES
        assert second.status == 500
        assert client.connections_opened == 2  # not reused: the rest was never read

    asyncio.run(body())


def test_retry_after_is_read() -> None:
    async def body() -> None:
        raw = answer("429 Too Many Requests", headers={"Retry-After": "42"})
        async with Receiver(always(raw)) as receiver:
            client = DeliveryClient()
            result = await post(client, f"http://127.0.0.1:{receiver.port}/")
            await client.close()
        assert (result.status, result.retry_after) == (429, "42")

    asyncio.run(body())


def test_a_receiver_that_never_answers_times_out_and_its_connection_is_closed() -> None:
    async def body() -> None:
        async def never(request: dict[str, Any]) -> tuple[bytes, bool]:
            await asyncio.sleep(60)
            return answer(), False

        async with Receiver(never) as receiver:
            client = DeliveryClient()
            result = await post(client, f"http://127.0.0.1:{receiver.port}/", timeout_s=0.3)
            assert client._idle == {} or all(not c for c in client._idle.values())
            await client.close()
        assert result.status is None and result.error == "timed out after 0.3 s"

    asyncio.run(body())


def test_nobody_listening_is_a_connect_error() -> None:
    async def body() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = DeliveryClient()
        result = await post(client, f"http://127.0.0.1:{port}/")
        await client.close()
        assert result.status is None and result.error.startswith("ConnectError")

    asyncio.run(body())


def test_the_ssrf_guard_refuses_before_connecting_and_pins_the_checked_address() -> None:
    async def body() -> None:
        async with Receiver(always(answer())) as receiver:
            resolver = resolver_for({"hooks.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1"]})
            client = DeliveryClient(resolver=resolver)
            refused = await post(client, f"http://127.0.0.1:{receiver.port}/", allowed=[])
            assert refused.status is None and refused.error.startswith("refused:")
            assert receiver.connections == 0
            pinned = await post(client, f"http://hooks.test:{receiver.port}/p")
            assert pinned.status == 200
            assert receiver.requests[-1]["headers"]["host"] == f"hooks.test:{receiver.port}"
            # The same address under another name: its own connection.
            assert (await post(client, f"http://mixed.test:{receiver.port}/p")).status == 200
            assert client.connections_opened == 2
            # The name now resolves to a refused address: no request, not even on the
            # connection kept for it.
            client.resolver = resolver_for({"hooks.test": ["10.0.0.1"]})
            again = await post(client, f"http://hooks.test:{receiver.port}/p")
            assert again.error is not None and again.error.startswith("refused:")
            assert len(receiver.requests) == 2
            await client.close()

    asyncio.run(body())


def test_https_checks_the_certificate_against_the_host_name_with_sni(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "hooks.test")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment]
    trusting = ssl.create_default_context(cafile=str(cert))
    resolver = resolver_for({"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})

    async def body() -> None:
        async with Receiver(always(answer(body=b"tls")), tls=server_tls) as receiver:
            client = DeliveryClient(resolver=resolver, tls=trusting)
            for _ in range(2):
                ok = await post(client, f"https://hooks.test:{receiver.port}/x")
                assert (ok.status, ok.snippet) == (200, "tls")
            assert seen_sni == ["hooks.test"] and client.connections_opened == 1
            # The same address under a name the certificate does not carry: refused,
            # and the connection verified for hooks.test is not used for it.
            other = await post(client, f"https://other.test:{receiver.port}/x")
            assert other.status is None and "other.test" in (other.error or "")
            await client.close()
            # Without trusting the certificate (the system's CAs): refused.
            default = DeliveryClient(resolver=resolver)
            untrusted = await post(default, f"https://hooks.test:{receiver.port}/x")
            await default.close()
            assert untrusted.status is None and "CERTIFICATE_VERIFY_FAILED" in (
                untrusted.error or ""
            )
        assert len(receiver.requests) == 2

    asyncio.run(body())


def test_a_header_that_cannot_be_sent_is_a_failed_attempt_not_an_exception() -> None:
    async def body() -> None:
        async with Receiver(always(answer())) as receiver:
            client = DeliveryClient()
            result = await client.post(
                f"http://127.0.0.1:{receiver.port}/",
                b"{}",
                {"X-Bad": "line\r\nbreak", "X-Text": "caf\u00e9\u2603"},
                allowed_networks=LOCAL,
                timeout_s=5,
            )
            await client.close()
        assert result.status is None and (result.error or "").startswith("LocalProtocolError")
        assert receiver.connections == 0

    asyncio.run(body())
