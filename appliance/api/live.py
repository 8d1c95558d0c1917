"""Live events in an API process: the bell, paged reads of the event log, the stream loop.

The ``events`` table is the source of truth. The worker appends rows in the same
transaction as the change they describe, and after each commit that appended some it
publishes the IPC notification ``events`` ``{"last_id": N}``. Each API process
subscribes to it and rings its ``EventBell``. Readers (``GET /api/events?wait=``
and the websocket) only use the bell to wake up early: they always read from SQLite,
and wake at least every ``POLL_S`` seconds even when no notification comes (worker
down, IPC reconnecting, a notification lost), so correctness never depends on IPC.

Why "after the last id seen" misses nothing: SQLite has one writer at a time, and
each write transaction holds the write lock from ``BEGIN IMMEDIATE`` to ``COMMIT``.
So when a row with id N is visible, every row with an id below N is visible too
(committed earlier) or never will be (rolled back; AUTOINCREMENT never reuses an
id that was committed). The visible ids always form a prefix, and a reader that read
everything matching up to N can continue after N safely.

A reader also skips ranges where nothing matched its filters: ``Page.next`` is the
newest id it has scanned (read before the query), not only the last id returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from appliance.db.database import Database
from appliance.messaging.models import EventOut
from appliance.messaging.store import events_in_scope, last_event_id

log = logging.getLogger(__name__)

Send = Callable[[str], Awaitable[None]]

# Readers re-read the event log at least this often, notification or not.
POLL_S = 1.0
# Websocket streams: pages read from SQLite at a time.
STREAM_PAGE = 500
# A frame that cannot be written to the client within this time ends the stream.
SEND_TIMEOUT_S = 5.0
# Once a stream has caught up, it ends when it falls this many event ids behind the
# newest event (a client too slow to follow live traffic; it resumes from the backlog).
MAX_LAG_EVENTS = 50_000
# An idle stream sends {"type": "heartbeat", "after": N} this often (keeps proxies
# from closing it and tells a filtered client how far it may resume from).
HEARTBEAT_S = 25.0
# A stream reloads its caller's credentials and grants this often.
REAUTH_S = 15.0
# A stream reads at most this often when the bell rings quickly (coalesces bursts).
MIN_READ_INTERVAL_S = 0.02

# Websocket close codes.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # credentials revoked or expired, or a grant withdrawn
CLOSE_ERROR = 1011  # the server failed to read the event log: reconnect with after=N
CLOSE_RESTART = 1012  # this API process is shutting down: reconnect (to another one)
CLOSE_TRY_AGAIN = 1013  # the client fell behind: reconnect with after=N


class EventBell:
    """Rung on each ``events`` notification; wakes every waiting reader of this process.

    A reader takes a ``ticket()`` *before* it reads the database, then ``wait``s on
    it: a ring that happens between the read and the wait is not lost.
    """

    def __init__(self) -> None:
        self.last_id = 0  # the newest event id announced by the worker
        self.rings = 0
        self._event = asyncio.Event()

    def ring(self, last_id: int | None = None) -> None:
        if last_id is not None and last_id > self.last_id:
            self.last_id = last_id
        self.rings += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    def ticket(self) -> asyncio.Event:
        return self._event

    async def wait(self, ticket: asyncio.Event, timeout_s: float) -> bool:
        """True when the bell rang since ``ticket`` was taken; False after the timeout."""
        if ticket.is_set():
            return True
        try:
            await asyncio.wait_for(ticket.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        return True

    def on_notification(self, method: str, params: Any, meta: dict[str, Any]) -> None:
        """WorkerClient's notification handler (called in the event loop)."""
        if method != "events":
            return
        last_id = params.get("last_id") if isinstance(params, dict) else None
        ok = isinstance(last_id, int) and not isinstance(last_id, bool)
        self.ring(last_id if ok else None)


@dataclass(frozen=True)
class Scope:
    """Which events a reader gets: its grants intersected with what it asked for."""

    accounts: frozenset[str] | None  # None: every account
    unassigned: bool  # also events without an account (admins only)
    types: frozenset[str] | None = None  # None: every type


@dataclass(frozen=True)
class Page:
    items: list[EventOut]
    next: int  # pass as ``after`` to continue; never below the ``after`` read from
    newest: int  # the newest event id when the page was read
    full: bool  # the page hit its limit: more may be waiting right now


async def read_page(db: Database, scope: Scope, after: int, limit: int) -> Page:
    """Events in ``scope`` with id > ``after``, oldest first, at most ``limit``."""
    newest = await last_event_id(db)
    items = await events_in_scope(
        db,
        after,
        limit,
        types=scope.types,
        accounts=scope.accounts,
        unassigned=scope.unassigned,
    )
    if items and len(items) >= limit:
        return Page(items, items[-1].id, newest, True)
    # Everything matching up to ``newest`` was in this (later) read: skip past it.
    last = items[-1].id if items else 0
    return Page(items, max(after, newest, last), max(newest, last), False)


async def poll_page(
    db: Database,
    bell: EventBell,
    scope: Scope,
    after: int,
    limit: int,
    *,
    wait_s: float,
    stopping: Callable[[], bool] = lambda: False,
    poll_s: float = POLL_S,
) -> Page:
    """``read_page``; when it finds nothing, wait up to ``wait_s`` for something."""
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        ticket = bell.ticket()
        page = await read_page(db, scope, after, limit)
        remaining = deadline - time.monotonic()
        if page.items or remaining <= 0 or stopping():
            return page
        after = page.next
        await bell.wait(ticket, min(poll_s, remaining))


def control_frame(type_: str, after: int) -> str:
    """A frame that is not an event: ``resume`` (last frame) or ``heartbeat``."""
    return orjson.dumps({"type": type_, "after": after}).decode()


async def _send(send: Send, frame: str, timeout_s: float) -> bool:
    """False when the frame could not be handed to the client within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            await send(frame)
    except TimeoutError:
        return False
    return True


@dataclass(frozen=True)
class StreamEnd:
    code: int
    reason: str
    after: int  # resume with this; every matching event up to it was sent
    sent: int  # events sent on this stream


async def stream_events(
    db: Database,
    bell: EventBell,
    scope: Scope,
    after: int,
    send: Send,
    *,
    stopping: Callable[[], bool] = lambda: False,
    reauth: Callable[[], Awaitable[Scope | None]] | None = None,
    page_size: int = STREAM_PAGE,
    send_timeout_s: float = SEND_TIMEOUT_S,
    max_lag: int = MAX_LAG_EVENTS,
    poll_s: float = POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
    reauth_s: float = REAUTH_S,
    min_read_interval_s: float = MIN_READ_INTERVAL_S,
) -> StreamEnd:
    """Send every event in ``scope`` after ``after`` (backlog, then live) until the
    stream must end; returns why, with the id to resume after.

    The caller sends the final ``resume`` frame and closes the websocket with
    ``code``. A client disconnect cancels this coroutine (CancelledError propagates).
    """
    position = after  # every matching event up to here was sent (or its send completed)
    sent = 0
    caught_up = False
    loop = asyncio.get_running_loop()
    last_frame_at = last_read_at = loop.time()
    next_reauth = loop.time() + reauth_s
    while True:
        if stopping():
            return StreamEnd(CLOSE_RESTART, "server restarting; reconnect", position, sent)
        ticket = bell.ticket()
        last_read_at = loop.time()
        try:
            if reauth is not None and loop.time() >= next_reauth:
                renewed = await reauth()
                if renewed is None:
                    reason = "credentials or grants withdrawn"
                    return StreamEnd(CLOSE_POLICY, reason, position, sent)
                scope = renewed
                next_reauth = loop.time() + reauth_s
            page = await read_page(db, scope, position, page_size)
        except Exception:  # e.g. the database is closing: the client resumes elsewhere
            log.exception("reading the event log failed")
            return StreamEnd(CLOSE_ERROR, "server error; resume", position, sent)
        if caught_up and page.full and page.newest - position > max_lag:
            return StreamEnd(CLOSE_TRY_AGAIN, "too far behind; resume", position, sent)
        for event in page.items:
            if stopping():
                return StreamEnd(CLOSE_RESTART, "server restarting; reconnect", position, sent)
            if not await _send(send, event.model_dump_json(), send_timeout_s):
                return StreamEnd(CLOSE_TRY_AGAIN, "client too slow; resume", position, sent)
            position = event.id
            sent += 1
        if page.items:
            last_frame_at = loop.time()
        position = page.next
        if page.full:
            continue
        caught_up = True
        if loop.time() - last_frame_at >= heartbeat_s:
            if not await _send(send, control_frame("heartbeat", position), send_timeout_s):
                return StreamEnd(CLOSE_TRY_AGAIN, "client too slow; resume", position, sent)
            last_frame_at = loop.time()
        await bell.wait(ticket, poll_s)
        # Coalesce rapid rings: at most one read per min_read_interval_s.
        pause = last_read_at + min_read_interval_s - loop.time()
        if pause > 0:
            await asyncio.sleep(pause)


def parse_types(value: str | None, known: Sequence[str]) -> frozenset[str] | None:
    """``a,b`` into a set of known event types; raises ValueError naming unknown ones."""
    if value is None or not value.strip():
        return None
    types = {t.strip() for t in value.split(",") if t.strip()}
    unknown = sorted(types - set(known))
    if unknown:
        raise ValueError(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return frozenset(types)
