"""An API process that is told to stop still serves a TLS connection it accepted.

The client holds its TLS handshake half-way (ServerHello received, its own Finished
not sent) while the server is told to stop; once the listener is closed (a new
connection is refused), the client finishes the handshake and sends a request. It
gets its answer: the process drains what it accepted before Hypercorn's stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop
from hypercorn.config import Config
from quart import Quart

from appliance.api.serving import serve_with_drain
from tests.unit.test_tls import make_cert


def _app() -> Quart:
    app = Quart(__name__)

    @app.get("/")
    async def index() -> str:
        return "served"

    return app


def _pump(sock: socket.socket, outgoing: ssl.MemoryBIO) -> None:
    data = outgoing.read()
    if data:
        sock.sendall(data)


def _refused(port: int) -> bool:
    """Nothing listens on the port any more. Read from the kernel's table rather than
    by connecting: a probe connection would itself be accepted while the listener
    closes, and race with the connection under test."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
                return False
    return True


def _read_until_closed(
    sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, deadline: float
) -> bytes:
    """All the server sends until its close_notify (or EOF, or the deadline).

    ``SSLObject.read`` returns at most one TLS record, and one ``recv`` may carry several
    (the response's head, its body, the close_notify): every record is read out after
    each ``recv``. Reading one record per ``recv`` left the body in ``incoming`` while
    the client waited on a socket the server had nothing more to send on (the test's
    failures on a busy machine, where the client thread runs late and gets it all in
    one chunk)."""
    answer = b""
    while time.monotonic() < deadline:
        while True:
            try:
                data = tls.read(65536)
            except ssl.SSLWantReadError:
                break  # every whole record read; the next needs more bytes
            except ssl.SSLZeroReturnError:
                return answer
            if not data:  # close_notify
                return answer
            answer += data
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        incoming.write(chunk)
    return answer


# The API processes run on uvloop (appliance/api/main.py); asyncio's own loop too.
@pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_a_tls_handshake_under_way_at_the_stop_is_finished_and_served(
    tmp_path: Path, new_loop: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    cert, key = make_cert(tmp_path)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]  # as supervisord hands the socket over
    config.certfile, config.keyfile = str(cert), str(key)
    config.graceful_timeout = 5.0
    config.accesslog = None

    loop = new_loop()
    stop = asyncio.Event()
    server = threading.Thread(
        target=lambda: loop.run_until_complete(serve_with_drain(_app(), config, stop, drain_s=5.0)),
        daemon=True,
    )
    server.start()
    try:
        deadline = time.monotonic() + 30
        sock: socket.socket | None = None
        while sock is None and time.monotonic() < deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            except ConnectionRefusedError:
                time.sleep(0.05)
        assert sock is not None, "the server never listened"

        context = ssl.create_default_context(cafile=str(cert))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        _pump(sock, outgoing)  # ClientHello
        for _ in range(100):  # until the server's flight is read and the handshake is done
            incoming.write(sock.recv(65536))
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                continue
        # Our Finished sits in `outgoing`, unsent: the server's handshake is under way.

        loop.call_soon_threadsafe(stop.set)
        deadline = time.monotonic() + 30
        while not _refused(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _refused(port), "the listener was not closed after the stop"

        tls.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        _pump(sock, outgoing)  # Finished, then the request
        # Read only once the server is done (its head, body and close_notify then arrive
        # in one recv), as a client on a busy machine does: the reading must not depend
        # on how the records are split across recv calls.
        time.sleep(0.5)
        answer = _read_until_closed(sock, tls, incoming, deadline)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b"served" in answer
    finally:
        loop.call_soon_threadsafe(stop.set)
        server.join(timeout=30)
    assert not server.is_alive()
