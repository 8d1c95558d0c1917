"""Keep-alive after an answer given before the request body was read.

Hypercorn keeps an HTTP/1.1 connection for the next request only when the request was
received whole before the answer was sent; otherwise it closes the connection. A
route that refuses early (401, 403, 404 ... before it reads the body) can answer
before the body's last bytes have even been parsed, and a client that reuses the
connection (httpx, requests, every pool) then sees it closed under its next request:
"server disconnected without sending a response". Reading the rest of a small body
before the answer leaves keeps the connection usable; a big or slow one is left
alone (the connection closes, as before).
"""

from __future__ import annotations

import asyncio
import contextlib

from quart import Quart, Response, request

READ_AT_MOST_BYTES = 1024 * 1024
READ_WITHIN_S = 2.0


def install_body_drain(app: Quart) -> None:
    @app.after_request
    async def _read_rest_of_body(response: Response) -> Response:
        length = request.content_length
        if length and length <= READ_AT_MOST_BYTES:
            # Cached when the route already read it: then this costs nothing.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(request.get_data(), READ_WITHIN_S)
        return response
