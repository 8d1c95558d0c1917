"""The request body as the routes read it.

Quart's ``request.get_data()`` wraps every read in ``asyncio.wait_for``: a new task, a
timer and a turn of the event loop, even when the body has long arrived whole. A JSON
send reads it two or three times (the Idempotency-Key's fingerprint, the choice of
model, the validation), so each read after the first, and a first one of a body that
came with its headers, is taken from the body at once here.
"""

from __future__ import annotations

import asyncio

from quart import Request, request


def arrived_whole(body: object) -> bool:
    """Quart's request body is complete (its ``Body._complete`` event is set). Without
    that attribute (another Quart version) it is read as before: never wrongly skipped."""
    complete = getattr(body, "_complete", None)
    return isinstance(complete, asyncio.Event) and complete.is_set()


async def body_bytes(req: Request | None = None) -> bytes:
    """``await req.get_data(as_text=False)`` (``req``, else Quart's current request):
    the same bytes and the same errors (a body over the size limit, a client gone),
    without the task and the loop turn when the body is here whole."""
    if req is None:
        req = request
    body = req.body
    data = getattr(body, "_data", None)
    if (
        isinstance(data, bytearray)
        and arrived_whole(body)
        and getattr(body, "_must_raise", None) is None
    ):
        return bytes(data)
    raw = await req.get_data(as_text=False)
    assert isinstance(raw, bytes)  # as_text=False
    return raw
