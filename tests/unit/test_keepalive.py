"""A refusal given before the body was read keeps the connection for the next request.

The client sends a POST's headers, waits, then its body (as a client writing headers
and body separately may): the route refuses at once, before reading the body. The
same connection must then answer a second request instead of being closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, Response

from appliance.api.keepalive import drain_rest_of_body


def _app(drain: bool) -> Quart:
    app = Quart(__name__)

    @app.post("/refuse")
    async def refuse() -> tuple[str, int]:
        return "no", 403  # never reads the body

    @app.get("/")
    async def index() -> str:
        return "served"

    if drain:  # as the appliance's after_request hook does (api/app.py)

        @app.after_request
        async def _drain(response: Response) -> Response:
            await drain_rest_of_body()
            return response

    return app


def _read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, or b"" when the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head + b"\r\n\r\n" + body


def _second_request_answered(drain: bool) -> bool:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.accesslog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    server = threading.Thread(
        target=lambda: loop.run_until_complete(
            serve(_app(drain), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        ),
        daemon=True,
    )
    server.start()
    try:
        sock: socket.socket | None = None
        deadline = time.monotonic() + 30
        while sock is None and time.monotonic() < deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            except ConnectionRefusedError:
                time.sleep(0.05)
        assert sock is not None, "the server never listened"
        with sock:
            sock.sendall(
                b"POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\n\r\n"
            )
            time.sleep(0.5)  # the refusal is sent before the body arrives
            with contextlib.suppress(OSError):  # a closed connection may refuse it
                sock.sendall(b"{}")
            first = _read_response(sock)
            assert first.startswith(b"HTTP/1.1 403"), first
            try:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                second = _read_response(sock)
            except OSError:
                return False
            return second.startswith(b"HTTP/1.1 200") and second.endswith(b"served")
    finally:
        loop.call_soon_threadsafe(stop.set)
        server.join(timeout=30)


def test_an_early_refusal_keeps_the_connection_for_the_next_request() -> None:
    assert _second_request_answered(drain=True)


def test_without_the_drain_hypercorn_closes_that_connection() -> None:
    # The reason for drain_rest_of_body: if Hypercorn ever keeps such a connection by
    # itself, this fails and the drain can go.
    assert not _second_request_answered(drain=False)


def test_a_body_that_arrived_whole_is_not_waited_for() -> None:
    from quart.wrappers.request import Body

    from appliance.api.body import arrived_whole

    async def main() -> None:
        body = Body(expected_content_length=4, max_content_length=1024)
        assert not arrived_whole(body)  # the drain waits for it
        body.append(b"abcd")
        assert not arrived_whole(body)
        body.set_complete()
        assert arrived_whole(body)  # nothing left to read: no wait, no task
        assert not arrived_whole(object())  # another Quart: read as before

    asyncio.run(main())


def test_body_bytes_reads_a_whole_body_at_once_and_others_as_quart_does() -> None:
    """``body_bytes`` gives what ``get_data`` gives: at once (no task) for a body here
    whole; through Quart while it is still arriving, or when it must raise."""
    from quart.wrappers.request import Body

    from appliance.api.body import body_bytes

    class FakeRequest:
        def __init__(self, body: Body) -> None:
            self.body = body
            self.reads = 0

        async def get_data(self, as_text: bool = False) -> bytes:
            self.reads += 1
            return await self.body  # type: ignore[no-any-return]

    async def main() -> None:
        whole = Body(expected_content_length=4, max_content_length=1024)
        whole.append(b"abcd")
        whole.set_complete()
        req = FakeRequest(whole)
        assert await body_bytes(req) == b"abcd"  # type: ignore[arg-type]
        assert await body_bytes(req) == b"abcd"  # type: ignore[arg-type]
        assert req.reads == 0

        arriving = Body(expected_content_length=4, max_content_length=1024)
        req = FakeRequest(arriving)
        read = asyncio.ensure_future(body_bytes(req))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert not read.done()  # it waits for the rest, as get_data does
        arriving.append(b"wxyz")
        arriving.set_complete()
        assert await read == b"wxyz" and req.reads == 1

        too_big = Body(expected_content_length=None, max_content_length=2)
        too_big.append(b"abc")  # over the limit: Quart raises 413 on reading it
        too_big.set_complete()
        req = FakeRequest(too_big)
        with pytest.raises(Exception) as raised:
            await body_bytes(req)  # type: ignore[arg-type]
        assert getattr(raised.value, "code", None) == 413 and req.reads == 1

    asyncio.run(main())
