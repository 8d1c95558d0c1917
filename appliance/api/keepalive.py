"""Keep-alive after an answer given before the request body was read.

Hypercorn keeps an HTTP/1.1 connection for the next request only when the request was
received whole before the answer was sent; otherwise it closes the connection. A
route that refuses early (401, 403, 404 ... before it reads the body) can answer
before the body's last bytes have even been parsed, and a client that reuses the
connection (httpx, requests, every pool) then sees it closed under its next request:
"server disconnected without sending a response". Reading the rest of a small body
before the answer leaves keeps the connection usable; a big or slow one is left
alone (the connection closes, as before).

``drain_rest_of_body`` runs in the app's finish step (``app.py``, after the
``after_request`` hooks). A body that
has already arrived whole (the route read it, or it came with the headers) costs one
check: nothing is awaited then.
"""

from __future__ import annotations

import asyncio
import contextlib

from quart import Request, request

from appliance.api.body import arrived_whole

READ_AT_MOST_BYTES = 1024 * 1024
READ_WITHIN_S = 2.0


async def drain_rest_of_body(req: Request | None = None) -> None:
    """Read the rest of this request's body (``req``, else Quart's current request)
    when it is small and not all here yet."""
    if req is None:
        req = request
    if arrived_whole(req.body):  # first: the usual case, no header lookup
        return
    length = req.content_length
    if not length or length > READ_AT_MOST_BYTES:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(req.get_data(), READ_WITHIN_S)
