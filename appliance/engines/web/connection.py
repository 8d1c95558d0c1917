"""One account's neonize client: its lifecycle, its connection events and the watchdog.

neonize wraps whatsmeow (Go) as a shared library bundled in its wheel. It is imported
lazily, in ``default_client_factory``, so the appliance runs without it; a missing
package, a missing system library (libmagic) or a Go-side error becomes a
``WebEngineError`` with a clear message and only that account goes ``failed``.

Also here, because they guard every client of the process: ``GO_GATE`` (goneonize's
client map has no lock) and ``GO_THREADS`` (the executor neonize's Go calls run on).

Inbound acknowledgement. For real clients, neonize's event callback is replaced by
one that waits (bounded) for the host's commit of a message before returning to Go
(``install_ack_after_commit``), so whatsmeow acknowledges the message only after it
is stored.

``Connection`` owns the client: start (under the gate), the connection-level events
(connected, disconnected with a grace period for whatsmeow's own reconnect, logged
out, stream replaced, outdated, keepalive), the watchdog that probes an idle
connection, and disposal. Message, receipt, QR, pairing and ban events go to its
owner (``ConnectionOwner``), the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

from appliance.engines.base import LoggedOut
from appliance.engines.web.protobuf import (
    FAILURE_CLIENT_OUTDATED,
    FAILURE_TEMP_BANNED,
    LOGOUT_REASONS,
    describe,
    jid_str,
)
from appliance.engines.web.settings import WebEngineError

log = logging.getLogger(__name__)

ACK_COMMIT_TIMEOUT_S = 60.0
CLIENT_START_WINDOW_S = 5.0  # how long a start holds the gate if no event comes first

ClientFactory = Callable[[str, str], Any]  # (session db path, client uuid) -> client
Handler = Callable[[Any], Awaitable[None]]


def default_client_factory(db_path: str, uuid: str) -> Any:
    """A real neonize asyncio client (imported here, not at module import)."""
    try:
        from neonize.aioze.client import NewAClient
    except ImportError as exc:
        raise WebEngineError(
            f"the web engine needs the neonize package and libmagic "
            f"(apt-get install libmagic1): {exc}"
        ) from exc
    client = NewAClient(db_path, uuid=uuid)
    install_ack_after_commit(client)
    return client


def install_ack_after_commit(client: Any, timeout_s: float = ACK_COMMIT_TIMEOUT_S) -> bool:
    """Make neonize's Go->Python event callback wait for message handlers to finish.

    neonize schedules handlers with ``run_coroutine_threadsafe`` and returns to Go at
    once, so whatsmeow would acknowledge a message before it is stored. This replaces
    ``client.event.execute`` (bound into the C callback at ``connect``) with a copy
    that waits, at most ``timeout_s``, for ``MessageEv`` handlers. Returns False if
    neonize's internals are not as expected (then the stock behaviour stays).
    """
    try:
        from neonize.aioze import events as aio_events
        from neonize.events import EVENT_TO_INT, INT_TO_EVENT
        from neonize.proto.Neonize_pb2 import HistorySync as HistorySyncEv
        from neonize.proto.Neonize_pb2 import Message as MessageEv
    except ImportError:
        return False
    event = getattr(client, "event", None)
    if event is None or not hasattr(event, "list_func"):
        return False
    message_code = EVENT_TO_INT[MessageEv]
    history_code = EVENT_TO_INT.get(HistorySyncEv, -1)  # acknowledged after import too

    def execute(uuid: Any, binary: int, size: int, code: int) -> None:
        try:
            kind = INT_TO_EVENT.get(code)
            if kind is None:
                return
            message = kind.FromString(ctypes.string_at(binary, size))
            if code == 0:
                client.me = message
                return
            if code == 3:
                client.connected = True
            handler = event.list_func.get(code)
            loop = aio_events.event_global_loop
            if handler is None or loop is None:
                return
            future = asyncio.run_coroutine_threadsafe(handler(client, message), loop)
            if code in (message_code, history_code):
                future.result(timeout_s)
        except Exception:  # never raise into Go
            log.exception("web engine: event callback failed")

    event.execute = execute
    return True


# -- Go client map guard and threads ---------------------------------------------------------


class _GoGate:
    """Readers-writer gate around neonize's Go calls, process-wide.

    goneonize keeps its clients in a plain Go map without a lock: starting or stopping
    a client (a map write) while another account's call reads it can kill the whole
    worker with "concurrent map read and map write". Starts and stops take the gate
    exclusively; every other call shares it.
    """

    def __init__(self) -> None:
        self._cond: asyncio.Condition | None = None
        self._readers = 0
        self._writer = False

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            async with cond:
                self._readers -= 1
                cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writer = True
        try:
            yield
        finally:
            async with cond:
                self._writer = False
                cond.notify_all()


GO_GATE = _GoGate()


class _GoThreads:
    """Room for neonize in the event loop's default executor.

    neonize runs every Go call with ``asyncio.to_thread``, and a connected client's
    ``Neonize()`` call holds one of those threads until the client stops. The stock
    executor has min(32, CPUs + 4) threads: on a 2-CPU machine six connected accounts
    take them all, and every later Go call (a send, a download, stopping a client)
    waits forever while holding GO_GATE, so the worker wedges. While clients live, the
    loop's default executor is therefore one of ours, with room for the live clients
    plus ``SPARE`` threads (threads start only when needed).
    """

    SPARE = 32

    def __init__(self) -> None:
        self._live: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = (
            weakref.WeakKeyDictionary()
        )
        self._pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[ThreadPoolExecutor, int]
        ] = weakref.WeakKeyDictionary()

    def acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        live = self._live[loop] = self._live.get(loop, 0) + 1
        pool, size = self._pools.get(loop, (None, 0))
        if live + self.SPARE // 2 <= size:
            return
        size = 2 * live + self.SPARE
        bigger = ThreadPoolExecutor(max_workers=size, thread_name_prefix="neonize")
        loop.set_default_executor(bigger)
        self._pools[loop] = (bigger, size)
        if pool is not None:
            pool.shutdown(wait=False)  # its threads finish what they run, then end

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        self._live[loop] = max(0, self._live.get(loop, 0) - 1)


GO_THREADS = _GoThreads()


# -- session files ---------------------------------------------------------------------------


def private_file(path: Path) -> None:
    """Create ``path`` if missing, mode 0600 either way."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def prepare_session_dir(session_dir: Path) -> Path:
    """The account's session dir (0700) with neonize's ``session.db`` (0600); returns it."""
    session_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(session_dir, 0o700)
    session_db = session_dir / "session.db"
    private_file(session_db)
    return session_db


def tighten_files(session_dir: Path) -> None:
    """SQLite's -wal/-shm/-journal files follow the umask: make them 0600 too."""
    with contextlib.suppress(OSError):
        for path in session_dir.iterdir():
            if path.is_file():
                os.chmod(path, 0o600)


# -- the connection --------------------------------------------------------------------------


class ConnectionOwner(Protocol):
    """What the connection hands on: everything that is not about the link itself."""

    async def on_message(self, event: Any) -> None: ...

    async def on_receipt(self, event: Any) -> None: ...

    async def on_qr(self, code: str) -> None: ...

    async def on_pair_status(self, event: Any) -> None: ...

    async def on_temporary_ban(self, event: Any) -> None: ...

    # The phone's own state (engines/web/sync.py).
    async def on_history_sync(self, event: Any) -> None: ...

    async def on_group_info(self, event: Any) -> None: ...

    async def on_joined_group(self, event: Any) -> None: ...

    async def on_picture(self, event: Any) -> None: ...


class Connection:
    """The live neonize client of one account (None between connections)."""

    def __init__(
        self,
        account_id: str,
        owner: ConnectionOwner,
        client_factory: ClientFactory,
    ) -> None:
        self.account_id = account_id
        self.owner = owner
        self.client_factory = client_factory
        self.client: Any = None
        self.pairing_timeout_s = 300.0
        self.watchdog_idle_s = 300.0
        self.probe_timeout_s = 20.0
        self.reconnect_grace_s = 15.0
        self.generation = 0
        self._task: asyncio.Future[Any] | None = None
        self.connected = asyncio.Event()
        self.closed: asyncio.Future[str] | None = None
        self._first_event = asyncio.Event()
        self.last_traffic = time.monotonic()
        self._probe_now = asyncio.Event()  # wakes the watchdog before its idle wait ends

    # -- starting ------------------------------------------------------------------------

    async def start(self, session_db: Path) -> None:
        """A new client for ``session_db``, started; returns once Go registered it."""
        await self.dispose()
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        self.connected.clear()
        self._first_event.clear()
        self.generation += 1
        uuid = f"{self.account_id}#{self.generation}"
        async with GO_GATE.exclusive():
            try:
                client = self.client_factory(str(session_db), uuid)
                GO_THREADS.acquire(loop)
                self.client = client
                self._register(client)
                task = await client.connect()
            except WebEngineError:
                raise
            except Exception as exc:
                raise WebEngineError(f"web engine could not start: {describe(exc)}") from exc
            self._task = task if isinstance(task, asyncio.Future) else None
            if self._task is not None:
                self._task.add_done_callback(self._on_task_done)
            # Hold the gate until the Go side has registered the client (first event).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_event.wait(), CLIENT_START_WINDOW_S)

    async def wait_linked(self) -> Literal["connected", "closed", "timeout"]:
        """Wait, at most the pairing timeout, for WhatsApp to accept the connection."""
        assert self.closed is not None, "start() first"
        waiter = asyncio.create_task(self.connected.wait())
        either: set[asyncio.Future[Any]] = {waiter, self.closed}
        try:
            done, _ = await asyncio.wait(
                either,
                timeout=self.pairing_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if self.closed.done():
            return "closed"
        if not done:
            return "timeout"
        self.last_traffic = time.monotonic()
        return "connected"

    async def own_jid_user(self) -> str:
        """The linked phone's number as WhatsApp reports it ('' if unknown)."""
        me = getattr(self.client, "me", None)
        if me is None or not jid_str(getattr(me, "JID", None)):
            with contextlib.suppress(Exception):
                async with GO_GATE.shared():
                    me = await self.client.get_me()
        return str(getattr(getattr(me, "JID", None), "User", "") or "")

    def _on_task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            self.finish("client task cancelled")
            return
        exc = task.exception()
        if exc is not None:
            self.fail(WebEngineError(f"web engine stopped: {describe(exc)}"))
        else:
            self.finish("client stopped")

    def finish(self, reason: str) -> None:
        """The connection ended for ``reason`` (the worker reconnects)."""
        self._first_event.set()
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(reason)

    def fail(self, exc: BaseException) -> None:
        """The connection ended with ``exc`` (LoggedOut, WebEngineError)."""
        self._first_event.set()
        if self.closed is not None and not self.closed.done():
            self.closed.set_exception(exc)

    # -- events --------------------------------------------------------------------------

    def _register(self, client: Any) -> None:
        from neonize.proto import Neonize_pb2 as ev

        owner = self.owner
        handlers: dict[Any, Handler] = {
            ev.Message: owner.on_message,
            ev.Receipt: owner.on_receipt,
            ev.Connected: self._on_connected,
            ev.Disconnected: self._on_disconnected,
            ev.LoggedOut: self._on_logged_out,
            ev.TemporaryBan: owner.on_temporary_ban,
            ev.ConnectFailure: self._on_connect_failure,
            ev.StreamReplaced: self._on_stream_replaced,
            ev.ClientOutdated: self._on_client_outdated,
            ev.KeepAliveTimeout: self._on_keepalive_timeout,
            ev.KeepAliveRestored: self._on_traffic,
            ev.QR: self._on_qr_event,
            ev.PairStatus: owner.on_pair_status,
            ev.HistorySync: owner.on_history_sync,
            ev.GroupInfoEvent: owner.on_group_info,
            ev.JoinedGroup: owner.on_joined_group,
            ev.Picture: owner.on_picture,
        }
        generation = self.generation
        for kind, handler in handlers.items():
            client.event(kind)(self._guarded(handler, generation))

        async def on_qr(_client: Any, data: bytes) -> None:
            if generation == self.generation:
                self._first_event.set()
                await owner.on_qr(data.decode() if isinstance(data, bytes) else str(data))

        client.qr(on_qr)

    def _guarded(self, handler: Handler, generation: int) -> Callable[[Any, Any], Awaitable[None]]:
        async def run(_client: Any, event: Any) -> None:
            if generation != self.generation:
                return  # an event of a client we already replaced
            self._first_event.set()
            self.last_traffic = time.monotonic()
            try:
                await handler(event)
            except Exception:
                log.exception("web engine event failed", extra={"account_id": self.account_id})
                raise

        return run

    async def _on_qr_event(self, event: Any) -> None:
        if event.Codes:
            await self.owner.on_qr(event.Codes[0])

    async def _on_traffic(self, _event: Any) -> None:
        return None

    async def _on_connected(self, _event: Any) -> None:
        self.connected.set()

    async def _on_disconnected(self, _event: Any) -> None:
        self.connected.clear()
        if self.reconnect_grace_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), self.reconnect_grace_s)
                return  # whatsmeow reconnected by itself
        self.finish("disconnected by WhatsApp")

    async def _on_logged_out(self, event: Any) -> None:
        reason = LOGOUT_REASONS.get(event.Reason, "logged out")
        self.fail(LoggedOut(f"WhatsApp ended the session ({reason}): link the phone again"))

    async def _on_connect_failure(self, event: Any) -> None:
        if event.Reason in LOGOUT_REASONS:
            await self._on_logged_out(event)
        elif event.Reason == FAILURE_CLIENT_OUTDATED:
            await self._on_client_outdated(event)
        elif event.Reason != FAILURE_TEMP_BANNED:  # a TemporaryBan event follows
            self.fail(WebEngineError(f"WhatsApp refused the connection: {event.Message}"))

    async def _on_stream_replaced(self, _event: Any) -> None:
        self.finish("the session was opened by another client (stream replaced)")

    async def _on_client_outdated(self, _event: Any) -> None:
        self.fail(WebEngineError("WhatsApp says this client is outdated: upgrade neonize"))

    async def _on_keepalive_timeout(self, _event: Any) -> None:
        # Not traffic: the watchdog probes now (it may be sleeping out a long idle wait).
        self.last_traffic = time.monotonic() - self.watchdog_idle_s
        self._probe_now.set()

    # -- serving -------------------------------------------------------------------------

    async def serve(self, closed: asyncio.Future[str]) -> str:
        """Watch the connection until it ends; returns why, or raises what ended it.

        After ``watchdog_idle_s`` without traffic the connection is probed with one
        read-only round trip; a failed probe ends it (the worker reconnects).
        """
        while not closed.done():
            idle = time.monotonic() - self.last_traffic
            woken = asyncio.ensure_future(self._probe_now.wait())
            either: set[asyncio.Future[Any]] = {closed, woken}
            try:
                await asyncio.wait(
                    either,
                    timeout=max(0.01, self.watchdog_idle_s - idle),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                woken.cancel()
            self._probe_now.clear()
            if closed.done() or time.monotonic() - self.last_traffic < self.watchdog_idle_s:
                continue
            problem = await self.probe()
            if problem is None:
                self.last_traffic = time.monotonic()
                continue
            await self.dispose()
            return (
                f"watchdog: no traffic for {self.watchdog_idle_s:g}s and the probe failed "
                f"({problem})"
            )
        return await self.outcome(closed)

    async def outcome(self, closed: asyncio.Future[str]) -> str:
        """The connection's end: dispose the client, then return or raise its reason."""
        await self.dispose()
        return closed.result()

    async def probe(self) -> str | None:
        """None if the connection answers a round trip, else why not."""
        client = self.client
        if client is None:
            return "no client"
        try:
            async with GO_GATE.shared():
                if not client.is_connected:
                    return "not connected"
                await asyncio.wait_for(client.get_blocklist(), self.probe_timeout_s)
        except TimeoutError:
            return f"no answer within {self.probe_timeout_s:g}s"
        except Exception as exc:
            return describe(exc)
        return None

    # -- ending --------------------------------------------------------------------------

    async def logout(self) -> None:
        """Unlink the device at WhatsApp (best effort: failures are logged)."""
        client = self.client
        if client is None:
            return
        try:
            async with GO_GATE.shared():
                await asyncio.wait_for(client.logout(), self.probe_timeout_s)
        except Exception as exc:  # the caller forgets the credentials all the same
            log.warning(
                "web logout at WhatsApp failed",
                extra={"account_id": self.account_id, "error": describe(exc)},
            )

    async def dispose(self) -> None:
        """Stop the Go client (if any) and wait for its connect task to end."""
        client, task = self.client, self._task
        self.client, self._task = None, None
        self.connected.clear()
        self.generation += 1  # late events of the old client are ignored
        if client is None:
            return
        GO_THREADS.release(asyncio.get_running_loop())
        async with GO_GATE.exclusive():
            try:
                await asyncio.wait_for(client.stop(), self.probe_timeout_s)
            except Exception as exc:
                log.warning(
                    "stopping the web client failed",
                    extra={"account_id": self.account_id, "error": describe(exc)},
                )
        if task is not None and not task.done():
            task.remove_done_callback(self._on_task_done)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self.probe_timeout_s)
