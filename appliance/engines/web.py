"""The ``web`` engine: WhatsApp Web multi-device through neonize's asyncio client.

neonize wraps whatsmeow (Go) as a shared library bundled in its wheel. It is imported
lazily, in ``connect``, so the appliance runs without it; a missing package, a missing
system library (libmagic) or a Go-side error becomes a ``WebEngineError`` with a clear
message and only that account goes ``failed``.

Per account, everything lives in ``<data_dir>/sessions/<account_id>/`` (dir 0700):

- ``session.db``: neonize's own SQLite store (device keys; 0600). Kept across
  connects, so a second connect resumes without a QR code; ``logout`` deletes the dir.
- ``ids.db``: our message id map (0600), see below.

Message ids. neonize 0.5.2's ``send_message`` has no way to pass a message id (its
Go ``SendMessage`` builds ``whatsmeow.SendRequestExtra`` without ``ID``), so WhatsApp
assigns the id. The engine keeps the appliance's pre-assigned id as the message's id
for everything above it and maps it to WhatsApp's id in ``ids.db``: a retry of an
id that WhatsApp already accepted is not sent again; one still in flight is awaited;
receipts and inbound replies/reactions that name WhatsApp's id are translated back.

Inbound acknowledgement. For real clients, neonize's event callback is replaced by
one that waits (bounded) for the host's commit of a message before returning to Go,
so whatsmeow acknowledges the message only after it is stored. whatsmeow acknowledges
when the callback returns, stored or not, so a failed commit is retried a few times first.

Threads. neonize makes every Go call on the event loop's default executor, and each
connected client holds one of its threads; ``GO_THREADS`` keeps that executor large
enough for the live clients (the stock one has CPUs + 4 threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import logging
import os
import shutil
import sqlite3
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field

from appliance.api.schemas import Strict
from appliance.engines.base import (
    Engine,
    EngineHost,
    InboundMessage,
    LoggedOut,
    OutboundMessage,
    SendError,
)

log = logging.getLogger(__name__)

# neonize / whatsmeow enum values (Neonize.proto), kept here so this module imports
# without neonize.
RECEIPT_DELIVERED = 1
RECEIPT_READ = 4
RECEIPT_READ_SELF = 5
RECEIPT_PLAYED = 6
PROTOCOL_REVOKE = 0
LOGOUT_REASONS = {2: "logged out", 4: "main device gone", 5: "unknown logout"}
FAILURE_TEMP_BANNED = 3
FAILURE_CLIENT_OUTDATED = 6
TEMP_BAN_REASONS = {
    1: "sent to too many people",
    2: "blocked by too many users",
    3: "created too many groups",
    4: "sent too many of the same message",
    5: "broadcast list",
}
MEDIA_KINDS = {
    "imageMessage": "image",
    "videoMessage": "video",
    "audioMessage": "audio",
    "documentMessage": "document",
    "stickerMessage": "sticker",
}
ACK_COMMIT_TIMEOUT_S = 60.0
COMMIT_RETRY_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0)  # 23.7 s of waits, then the last try
RECENT_INBOUND = 2000
IDMAP_KEEP_S = 30 * 86400


class WebSettings(Strict):
    """engine_settings of a ``web`` account."""

    pairing_timeout_s: int = Field(default=300, ge=30, le=3600, description="QR/code wait")
    watchdog_idle_s: int = Field(
        default=300, ge=30, le=86_400, description="No traffic this long: probe the connection"
    )
    probe_timeout_s: int = Field(default=20, ge=1, le=120)
    reconnect_grace_s: int = Field(
        default=15, ge=0, le=300, description="Wait for whatsmeow's own reconnect first"
    )
    download_media: bool | None = Field(
        default=None, description="Override the account's download_media setting"
    )
    show_push_notification: bool = Field(default=True, description="Pairing code: notify the phone")


class WebEngineError(RuntimeError):
    """The web engine (neonize or its Go library) failed; the account goes ``failed``."""


ClientFactory = Callable[[str, str], Any]  # (session db path, client uuid) -> client


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
        from neonize.proto.Neonize_pb2 import Message as MessageEv
    except ImportError:
        return False
    event = getattr(client, "event", None)
    if event is None or not hasattr(event, "list_func"):
        return False
    message_code = EVENT_TO_INT[MessageEv]

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
            if code == message_code:
                future.result(timeout_s)
        except Exception:  # never raise into Go
            log.exception("web engine: event callback failed")

    event.execute = execute
    return True


# -- jids and inbound mapping --------------------------------------------------------------


def jid_str(jid: Any) -> str:
    """``user@server`` without the device part; '' for an empty jid."""
    if jid is None or not getattr(jid, "User", "") or not getattr(jid, "Server", ""):
        return ""
    return f"{jid.User}@{jid.Server}"


def _pn_jid(jid: Any, alt: Any) -> str:
    """Prefer the phone-number jid when WhatsApp addressed someone by a LID."""
    if getattr(jid, "Server", "") == "lid" and jid_str(alt):
        return jid_str(alt)
    return jid_str(jid)


def _unwrap(message: Any) -> Any:
    """Ephemeral, view-once and document-with-caption wrappers hold the real message."""
    for _ in range(4):
        for wrapper in (
            "ephemeralMessage",
            "viewOnceMessage",
            "viewOnceMessageV2",
            "viewOnceMessageV2Extension",
            "documentWithCaptionMessage",
        ):
            if message.HasField(wrapper):
                message = getattr(message, wrapper).message
                break
        else:
            return message
    return message


def _context_of(part: Any) -> Any:
    return part.contextInfo if part.HasField("contextInfo") else None


def map_inbound(
    event: Any, *, app_id_for: Callable[[str], str] = lambda wa_id: wa_id
) -> tuple[InboundMessage, Any] | None:
    """A neonize ``MessageEv`` as an InboundMessage, with the media part to download.

    None for what is not a user message (protocol messages other than revokes, key
    distribution, our own messages echoed from the phone). ``app_id_for`` turns a
    WhatsApp id that a reply or reaction names into the appliance's id.
    """
    info = event.Info
    source = info.MessageSource
    if source.IsFromMe:
        return None
    message = _unwrap(event.Message)
    chat = jid_str(source.Chat)
    sender = _pn_jid(source.Sender, source.SenderAlt)
    if not source.IsGroup and source.Chat.Server == "lid":
        chat = sender
    content: dict[str, Any]
    body: str | None = None
    reply_to: str | None = None
    media = None
    context = None
    if message.HasField("protocolMessage"):
        proto = message.protocolMessage
        if proto.type != PROTOCOL_REVOKE or not proto.key.ID:
            return None
        reply_to = app_id_for(proto.key.ID)
        content = {"type": "revoke", "revoke": {"message_id": reply_to}}
        type_ = "revoke"
    elif message.HasField("reactionMessage"):
        reaction = message.reactionMessage
        reply_to = app_id_for(reaction.key.ID)
        content = {"type": "reaction", "reaction": {"message_id": reply_to, "emoji": reaction.text}}
        type_ = "reaction"
    elif message.conversation:
        body = message.conversation
        content = {"type": "text", "text": {"body": body}}
        type_ = "text"
    elif message.HasField("extendedTextMessage"):
        ext = message.extendedTextMessage
        body = ext.text
        content = {"type": "text", "text": {"body": body}}
        type_ = "text"
        context = _context_of(ext)
    else:
        kind = next((k for k in MEDIA_KINDS if message.HasField(k)), None)
        if kind is None:
            fields = [f.name for f, _ in message.ListFields() if f.name != "messageContextInfo"]
            if not fields or fields == ["senderKeyDistributionMessage"]:
                return None
            type_ = "unsupported"
            content = {"type": "unsupported", "unsupported": {"kind": fields[0]}}
        else:
            part = getattr(message, kind)
            type_ = MEDIA_KINDS[kind]
            described: dict[str, Any] = {"mime_type": part.mimetype}
            if getattr(part, "caption", ""):
                described["caption"] = body = part.caption
            if kind == "documentMessage" and part.fileName:
                described["filename"] = part.fileName
            if part.fileSHA256:
                described["sha256"] = part.fileSHA256.hex()
            if part.fileLength:
                described["file_size"] = part.fileLength
            if kind == "audioMessage" and part.PTT:
                described["voice"] = True
            content = {"type": type_, type_: described}
            context = _context_of(part)
            media = message
    if context is not None and context.stanzaID:
        reply_to = app_id_for(context.stanzaID)
        content["context"] = {"message_id": reply_to}
    inbound = InboundMessage(
        id=info.ID,
        chat_jid=chat,
        sender_jid=sender,
        type=type_,
        content=content,
        body=body,
        sender_name=info.Pushname or None,
        reply_to=reply_to,
        timestamp=float(info.Timestamp or 0) or time.time(),
        received_at=time.monotonic(),
    )
    return inbound, media


# -- the id map ----------------------------------------------------------------------------


def _private_file(path: Path) -> None:
    """Create ``path`` if missing, mode 0600 either way."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class IdMap:
    """appliance message id <-> WhatsApp message id, durable (SQLite, autocommit)."""

    def __init__(self, path: Path) -> None:
        _private_file(path)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=DELETE")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS sent (app_id TEXT PRIMARY KEY, wa_id TEXT, "
            "chat TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL)"
        )
        self.conn.execute("CREATE INDEX IF NOT EXISTS sent_wa ON sent (wa_id)")
        self.conn.execute("DELETE FROM sent WHERE at < ?", (time.time() - IDMAP_KEEP_S,))

    def wa_id(self, app_id: str) -> str | None:
        row = self.conn.execute("SELECT wa_id FROM sent WHERE app_id = ?", (app_id,)).fetchone()
        return row[0] if row else None

    def app_id(self, wa_id: str) -> str:
        row = self.conn.execute("SELECT app_id FROM sent WHERE wa_id = ?", (wa_id,)).fetchone()
        return row[0] if row else wa_id

    def attempt(self, app_id: str, chat: str) -> int:
        self.conn.execute(
            "INSERT INTO sent (app_id, chat, attempts, at) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (app_id) DO UPDATE SET attempts = attempts + 1",
            (app_id, chat, time.time()),
        )
        return self.conn.execute(
            "SELECT attempts FROM sent WHERE app_id = ?", (app_id,)
        ).fetchone()[0]

    def accepted(self, app_id: str, wa_id: str) -> None:
        self.conn.execute("UPDATE sent SET wa_id = ? WHERE app_id = ?", (wa_id, app_id))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


# -- Go client map guard -------------------------------------------------------------------


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
    async def shared(self) -> Any:
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
    async def exclusive(self) -> Any:
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
CLIENT_START_WINDOW_S = 5.0  # how long a start holds the gate if no event comes first


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
        self._live: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._pools: weakref.WeakKeyDictionary[Any, tuple[ThreadPoolExecutor, int]] = (
            weakref.WeakKeyDictionary()
        )

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


# -- the engine ----------------------------------------------------------------------------


class WebEngine(Engine):
    needs_media_files = True  # neonize uploads bytes; it cannot send by link or our id

    def __init__(
        self,
        account_id: str,
        settings: dict[str, Any],
        engine_state: dict[str, Any],
        host: EngineHost,
        *,
        session_root: Path,
        client_factory: ClientFactory | None = None,
        media_downloader: Callable[[Any, Any], Awaitable[bytes]] | None = None,
    ) -> None:
        super().__init__(account_id, settings, engine_state, host)
        self.session_dir = Path(session_root) / account_id
        self.client_factory = client_factory or default_client_factory
        self.media_downloader = media_downloader  # (client, message proto) -> bytes
        self.client: Any = None
        self.qr_code: str | None = None
        self.qr_refreshes = 0
        self.phone: str | None = None
        # Kept in the engine state: reconnecting during a ban only earns a longer one.
        self.banned_until: float = float(engine_state.get("banned_until") or 0.0)
        self._ids: IdMap | None = None
        self._generation = 0
        self._connect_task: asyncio.Future[Any] | None = None
        self._connected = asyncio.Event()
        self._closed: asyncio.Future[str] | None = None
        self._first_event = asyncio.Event()
        self._last_traffic = time.monotonic()
        self._probe_now = asyncio.Event()  # wakes the watchdog before its idle wait ends
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()  # id -> chat, sender
        self.update_settings(settings)

    def update_settings(self, settings: dict[str, Any]) -> None:
        super().update_settings(settings)
        self.config = WebSettings.model_validate(settings)
        self.pairing_timeout_s: float = self.config.pairing_timeout_s
        self.watchdog_idle_s: float = self.config.watchdog_idle_s
        self.probe_timeout_s: float = self.config.probe_timeout_s
        self.reconnect_grace_s: float = self.config.reconnect_grace_s

    # -- files ---------------------------------------------------------------------------

    @property
    def session_db(self) -> Path:
        return self.session_dir / "session.db"

    def _prepare_session_dir(self) -> None:
        self.session_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.session_dir, 0o700)
        _private_file(self.session_db)

    def _tighten_files(self) -> None:
        """SQLite's -wal/-shm/-journal files follow the umask: make them 0600 too."""
        with contextlib.suppress(OSError):
            for path in self.session_dir.iterdir():
                if path.is_file():
                    os.chmod(path, 0o600)

    # -- connect -------------------------------------------------------------------------

    async def connect(self) -> str | None:
        if self.banned_until > time.time():
            raise WebEngineError(self._ban_reason())
        await self._dispose_client()
        self._prepare_session_dir()
        if self._ids is None:
            self._ids = IdMap(self.session_dir / "ids.db")
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        self._connected.clear()
        self._first_event.clear()
        self.qr_code = None
        self._generation += 1
        uuid = f"{self.account_id}#{self._generation}"
        async with GO_GATE.exclusive():
            try:
                client = self.client_factory(str(self.session_db), uuid)
                GO_THREADS.acquire(loop)
                self.client = client
                self._register(client)
                task = await client.connect()
            except WebEngineError:
                raise
            except Exception as exc:
                raise WebEngineError(f"web engine could not start: {_describe(exc)}") from exc
            self._connect_task = task if isinstance(task, asyncio.Future) else None
            if self._connect_task is not None:
                self._connect_task.add_done_callback(self._on_connect_task_done)
            # Hold the gate until the Go side has registered the client (first event).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_event.wait(), CLIENT_START_WINDOW_S)
        self._tighten_files()
        waiter = asyncio.create_task(self._connected.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, self._closed},
                timeout=self.pairing_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if self._closed.done():
            reason = await self._outcome(self._closed)  # raises LoggedOut / WebEngineError
            raise WebEngineError(f"connection closed while connecting: {reason}")
        if not done:
            await self._dispose_client()
            raise WebEngineError(
                f"not linked within {self.pairing_timeout_s:g}s: scan the QR code or use a "
                "pairing code, then connect again"
            )
        self.qr_code = None
        self._last_traffic = time.monotonic()
        self._tighten_files()
        self.phone = await self._own_phone()
        if not self.engine_state.get("paired") or self.engine_state.get("phone") != self.phone:
            self.engine_state = {**self.engine_state, "paired": True, "phone": self.phone}
            await self.host.save_engine_state(self.engine_state)
        return self.phone

    async def _own_phone(self) -> str | None:
        me = getattr(self.client, "me", None)
        if me is None or not jid_str(getattr(me, "JID", None)):
            with contextlib.suppress(Exception):
                async with GO_GATE.shared():
                    me = await self.client.get_me()
        user = getattr(getattr(me, "JID", None), "User", "")
        return f"+{user}" if user.isdigit() else self.engine_state.get("phone")

    def _on_connect_task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            self._finish("client task cancelled")
            return
        exc = task.exception()
        if exc is not None:
            self._fail(WebEngineError(f"web engine stopped: {_describe(exc)}"))
        else:
            self._finish("client stopped")

    def _finish(self, reason: str) -> None:
        self._first_event.set()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(reason)

    def _fail(self, exc: BaseException) -> None:
        self._first_event.set()
        if self._closed is not None and not self._closed.done():
            self._closed.set_exception(exc)

    def _ban_reason(self) -> str:
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.banned_until))
        return f"temporarily banned by WhatsApp until {until}"

    # -- events --------------------------------------------------------------------------

    def _register(self, client: Any) -> None:
        from neonize.proto import Neonize_pb2 as ev

        handlers: dict[Any, Callable[[Any], Awaitable[None]]] = {
            ev.Message: self._on_message,
            ev.Receipt: self._on_receipt,
            ev.Connected: self._on_connected,
            ev.Disconnected: self._on_disconnected,
            ev.LoggedOut: self._on_logged_out,
            ev.TemporaryBan: self._on_temporary_ban,
            ev.ConnectFailure: self._on_connect_failure,
            ev.StreamReplaced: self._on_stream_replaced,
            ev.ClientOutdated: self._on_client_outdated,
            ev.KeepAliveTimeout: self._on_keepalive_timeout,
            ev.KeepAliveRestored: self._on_traffic,
            ev.QR: self._on_qr_event,
            ev.PairStatus: self._on_pair_status,
        }
        generation = self._generation
        for kind, handler in handlers.items():
            client.event(kind)(self._guarded(handler, generation))

        async def on_qr(_client: Any, data: bytes) -> None:
            if generation == self._generation:
                await self._on_qr(data.decode() if isinstance(data, bytes) else str(data))

        client.qr(on_qr)

    def _guarded(
        self, handler: Callable[[Any], Awaitable[None]], generation: int
    ) -> Callable[[Any, Any], Awaitable[None]]:
        async def run(_client: Any, event: Any) -> None:
            if generation != self._generation:
                return  # an event of a client we already replaced
            self._first_event.set()
            self._last_traffic = time.monotonic()
            try:
                await handler(event)
            except Exception:
                log.exception("web engine event failed", extra={"account_id": self.account_id})
                raise

        return run

    async def _on_qr(self, code: str) -> None:
        self._first_event.set()
        self.qr_code = code
        self.qr_refreshes += 1
        await self.host.on_state("pairing", reason=f"scan the QR code (code {self.qr_refreshes})")

    async def _on_qr_event(self, event: Any) -> None:
        if event.Codes:
            await self._on_qr(event.Codes[0])

    async def _on_pair_status(self, event: Any) -> None:
        if event.Error:
            await self.host.on_state("pairing", reason=f"linking failed: {event.Error}")

    async def _on_traffic(self, _event: Any) -> None:
        return None

    async def _on_connected(self, _event: Any) -> None:
        self._connected.set()

    async def _on_disconnected(self, _event: Any) -> None:
        self._connected.clear()
        if self.reconnect_grace_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), self.reconnect_grace_s)
                return  # whatsmeow reconnected by itself
        self._finish("disconnected by WhatsApp")

    async def _on_logged_out(self, event: Any) -> None:
        reason = LOGOUT_REASONS.get(event.Reason, "logged out")
        self._fail(LoggedOut(f"WhatsApp ended the session ({reason}): link the phone again"))

    async def _on_temporary_ban(self, event: Any) -> None:
        self.banned_until = time.time() + max(0, int(event.Expire or 0))
        self.engine_state = {**self.engine_state, "banned_until": self.banned_until}
        await self.host.save_engine_state(self.engine_state)
        why = TEMP_BAN_REASONS.get(event.Code, f"code {event.Code}")
        self._fail(WebEngineError(f"{self._ban_reason()} ({why})"))

    async def _on_connect_failure(self, event: Any) -> None:
        if event.Reason in LOGOUT_REASONS:
            await self._on_logged_out(event)
        elif event.Reason == FAILURE_CLIENT_OUTDATED:
            await self._on_client_outdated(event)
        elif event.Reason != FAILURE_TEMP_BANNED:  # a TemporaryBan event follows
            self._fail(WebEngineError(f"WhatsApp refused the connection: {event.Message}"))

    async def _on_stream_replaced(self, _event: Any) -> None:
        self._finish("the session was opened by another client (stream replaced)")

    async def _on_client_outdated(self, _event: Any) -> None:
        self._fail(WebEngineError("WhatsApp says this client is outdated: upgrade neonize"))

    async def _on_keepalive_timeout(self, event: Any) -> None:
        # Not traffic: the watchdog probes now (it may be sleeping out a long idle wait).
        self._last_traffic = time.monotonic() - self.watchdog_idle_s
        self._probe_now.set()

    async def _on_receipt(self, event: Any) -> None:
        if event.Type == RECEIPT_DELIVERED:
            status = "delivered"
        elif event.Type in (RECEIPT_READ, RECEIPT_READ_SELF, RECEIPT_PLAYED):
            status = "read"
        else:
            return
        for wa_id in event.MessageIDs:
            app_id = self._ids.app_id(wa_id) if self._ids is not None else wa_id
            await self.host.on_receipt(app_id, status)

    async def _on_message(self, event: Any) -> None:
        app_id_for = self._ids.app_id if self._ids is not None else (lambda i: i)
        mapped = map_inbound(event, app_id_for=app_id_for)
        if mapped is None:
            return
        inbound, media = mapped
        if media is not None and self.download_media_enabled(self.config.download_media):
            inbound = await self._with_media(inbound, media)
        self._remember(inbound.id, inbound.chat_jid, inbound.sender_jid)
        await self._commit(inbound)

    async def _commit(self, inbound: InboundMessage) -> None:
        """Hand the message to the host (returns after its commit). whatsmeow acknowledges
        the message once this handler returns, even if it failed, and never delivers it
        again: so a failed commit (a locked database) is tried again a few times, well
        within ACK_COMMIT_TIMEOUT_S, before giving up."""
        for delay in (*COMMIT_RETRY_S, None):
            try:
                await self.host.on_inbound([inbound])
                return
            except Exception as exc:
                if delay is None:
                    raise
                log.warning(
                    "committing an inbound message failed; trying again",
                    extra={
                        "account_id": self.account_id,
                        "message_id": inbound.id,
                        "error": _describe(exc),
                    },
                )
                await asyncio.sleep(delay)

    async def _with_media(self, inbound: InboundMessage, message: Any) -> InboundMessage:
        """Download the media; on failure keep the message and record why."""
        part = inbound.content[inbound.type]
        try:
            if self.media_downloader is not None:
                data = await self.media_downloader(self.client, message)
            else:
                async with GO_GATE.shared():
                    data = await self.client.download_any(message)
        except Exception as exc:
            part["download_error"] = _describe(exc)
            return inbound
        mime = part.get("mime_type") or "application/octet-stream"
        return _replace(inbound, media=(mime, data))

    def _remember(self, message_id: str, chat: str, sender: str) -> None:
        self._recent[message_id] = (chat, sender)
        while len(self._recent) > RECENT_INBOUND:
            self._recent.popitem(last=False)

    # -- serving ---------------------------------------------------------------------------

    async def run_until_closed(self) -> str:
        """Serve until the connection ends; LoggedOut / WebEngineError when it must."""
        closed = self._closed
        if closed is None:
            return "not connected"
        while not closed.done():
            idle = time.monotonic() - self._last_traffic
            woken = asyncio.ensure_future(self._probe_now.wait())
            try:
                await asyncio.wait(
                    {closed, woken},
                    timeout=max(0.01, self.watchdog_idle_s - idle),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                woken.cancel()
            self._probe_now.clear()
            if closed.done() or time.monotonic() - self._last_traffic < self.watchdog_idle_s:
                continue
            problem = await self._probe()
            if problem is None:
                self._last_traffic = time.monotonic()
                continue
            await self._dispose_client()
            return (
                f"watchdog: no traffic for {self.watchdog_idle_s:g}s and the probe failed "
                f"({problem})"
            )
        return await self._outcome(closed)

    async def _outcome(self, closed: asyncio.Future[str]) -> str:
        """The connection's end: dispose the client; LoggedOut also forgets the session."""
        await self._dispose_client()
        try:
            return closed.result()
        except LoggedOut:
            await self.forget_session()
            self.engine_state = {**self.engine_state, "paired": False}
            await self.host.save_engine_state(self.engine_state)
            raise

    async def _probe(self) -> str | None:
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
            return _describe(exc)
        return None

    # -- linking ---------------------------------------------------------------------------

    async def pair_phone(self, phone: str) -> str:
        """A pairing code for ``phone`` (E.164); only while the account is pairing."""
        digits = phone.strip().lstrip("+")
        if not digits.isdigit() or not 7 <= len(digits) <= 15:
            raise ValueError("phone must be an E.164 number such as +905551112233")
        if self.client is None or self._connected.is_set():
            raise WebEngineError("the account is not waiting to be linked: connect it first")
        try:
            async with GO_GATE.shared():
                code = await self.client.PairPhone(digits, self.config.show_push_notification)
        except Exception as exc:
            raise WebEngineError(f"could not get a pairing code: {_describe(exc)}") from exc
        await self.host.on_state("pairing", reason="enter the pairing code on the phone")
        return str(code)

    def qr_png(self, scale: int = 8) -> bytes | None:
        return self._render_qr("png", scale)

    def qr_svg(self, scale: int = 8) -> bytes | None:
        return self._render_qr("svg", scale)

    def _render_qr(self, kind: str, scale: int) -> bytes | None:
        if not self.qr_code:
            return None
        import segno  # neonize depends on it; pure Python

        out = io.BytesIO()
        segno.make_qr(self.qr_code, error="l").save(out, kind=kind, scale=scale, border=4)
        return out.getvalue()

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> None:
        if self.banned_until > time.time():
            raise SendError(
                self._ban_reason(),
                permanent=False,
                retry_after_s=self.banned_until - time.time(),
            )
        if self.client is None or self._ids is None or not self._connected.is_set():
            raise SendError("not connected", permanent=False)
        if self._ids.wa_id(message.id) is not None:
            return  # WhatsApp accepted this id before: a retry sends nothing again
        running = self._inflight.get(message.id)
        if running is None:
            outgoing = await self._build(message)
            attempts = self._ids.attempt(message.id, message.to_jid)
            if attempts > 1:
                log.warning(
                    "re-sending a message whose earlier attempt had no answer",
                    extra={"account_id": self.account_id, "message_id": message.id},
                )
            running = asyncio.create_task(self._hand_over(message, outgoing))
            self._inflight[message.id] = running
            running.add_done_callback(lambda _t: self._inflight.pop(message.id, None))
        # Shielded: if the worker gives up waiting, the id is still recorded on success.
        await asyncio.shield(running)

    async def _hand_over(self, message: OutboundMessage, outgoing: Any) -> str:
        try:
            async with GO_GATE.shared():
                response = await self.client.send_message(_to_jid(message.to_jid), outgoing)
        except Exception as exc:
            raise _send_error(exc) from exc
        wa_id = str(getattr(response, "ID", "") or "")
        if not wa_id:
            raise SendError("WhatsApp returned no message id", permanent=False)
        assert self._ids is not None
        self._ids.accepted(message.id, wa_id)
        self._last_traffic = time.monotonic()
        return wa_id

    async def _build(self, message: OutboundMessage) -> Any:
        from neonize.proto.waCommon.WACommon_pb2 import MessageKey
        from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

        content = message.content
        kind = message.type
        context = self._reply_context(message, e2e)
        if kind == "text":
            body = content["text"]["body"]
            if context is None:
                return e2e.Message(conversation=body)
            return e2e.Message(
                extendedTextMessage=e2e.ExtendedTextMessage(text=body, contextInfo=context)
            )
        if kind == "reaction":
            target = content["reaction"]["message_id"]
            chat, sender = self._recent.get(target, (message.to_jid, message.to_jid))
            wa_target = self._ids.wa_id(target) if self._ids is not None else None
            from_me = wa_target is not None
            key = MessageKey(remoteJID=message.to_jid, fromMe=from_me, ID=wa_target or target)
            if chat.endswith("@g.us") and not from_me:
                key.participant = sender
            return e2e.Message(
                reactionMessage=e2e.ReactionMessage(
                    key=key,
                    text=content["reaction"]["emoji"],
                    senderTimestampMS=int(time.time() * 1000),
                )
            )
        if kind in ("image", "document", "audio", "video"):
            return await self._build_media(message, context)
        raise SendError(f"the web engine cannot send {kind!r} messages", permanent=True)

    def _reply_context(self, message: OutboundMessage, e2e: Any) -> Any:
        target = message.reply_to or (message.content.get("context") or {}).get("message_id")
        if not target or message.type == "reaction":
            return None
        wa_target = self._ids.wa_id(target) if self._ids is not None else None
        _chat, sender = self._recent.get(target, (message.to_jid, message.to_jid))
        context = e2e.ContextInfo(stanzaID=wa_target or target, quotedMessage=e2e.Message())
        if wa_target is None:  # quoting them, not us
            context.participant = sender
        return context

    async def _build_media(self, message: OutboundMessage, context: Any) -> Any:
        part = message.content[message.type]
        if not message.media_path:
            raise SendError(
                "media must be resolved to a stored file before the web engine sends it",
                permanent=True,
            )
        try:
            data = await asyncio.to_thread(Path(message.media_path).read_bytes)
        except OSError as exc:
            raise SendError(f"media file unreadable: {exc}", permanent=True) from exc
        caption = part.get("caption")
        client = self.client
        try:
            async with GO_GATE.shared():  # uploads to WhatsApp's media servers
                if message.type == "image":
                    built = await client.build_image_message(data, caption=caption)
                elif message.type == "video":
                    built = await client.build_video_message(data, caption=caption)
                elif message.type == "audio":
                    built = await client.build_audio_message(data)
                else:
                    built = await client.build_document_message(
                        data,
                        caption=caption,
                        filename=part.get("filename") or "file",
                        mimetype=message.media_type,
                    )
        except Exception as exc:
            raise _send_error(exc) from exc
        if context is not None:
            getattr(built, f"{message.type}Message").contextInfo.MergeFrom(context)
        return built

    async def mark_read(self, chat_jid: str, message_ids: list[str]) -> None:
        if self.client is None or not message_ids:
            return
        from neonize.utils.enum import ReceiptType

        by_sender: dict[str, list[str]] = {}
        for message_id in message_ids:
            _chat, sender = self._recent.get(message_id, (chat_jid, chat_jid))
            by_sender.setdefault(sender, []).append(message_id)
        async with GO_GATE.shared():
            for sender, ids in by_sender.items():
                await self.client.mark_read(
                    *ids,
                    chat=_to_jid(chat_jid),
                    sender=_to_jid(sender),
                    receipt=ReceiptType.READ,
                )

    # -- ending ----------------------------------------------------------------------------

    async def logout(self) -> None:
        client = self.client
        if client is not None:
            try:
                async with GO_GATE.shared():
                    await asyncio.wait_for(client.logout(), self.probe_timeout_s)
            except Exception as exc:  # forget the credentials all the same
                log.warning(
                    "web logout at WhatsApp failed",
                    extra={"account_id": self.account_id, "error": _describe(exc)},
                )
        await self._dispose_client()
        await self.forget_session()
        self.engine_state = {**self.engine_state, "paired": False}
        await self.host.save_engine_state(self.engine_state)

    async def forget_session(self) -> None:
        if self._ids is not None:
            self._ids.close()
            self._ids = None
        await asyncio.to_thread(shutil.rmtree, self.session_dir, True)

    async def close(self) -> None:
        await self._dispose_client()
        self._finish("closed")
        for task in list(self._inflight.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self.probe_timeout_s)
        if self._ids is not None:
            self._ids.close()
            self._ids = None

    async def _dispose_client(self) -> None:
        """Stop the Go client (if any) and wait for its connect task to end."""
        client, task = self.client, self._connect_task
        self.client, self._connect_task = None, None
        self._connected.clear()
        self._generation += 1  # late events of the old client are ignored
        if client is None:
            return
        GO_THREADS.release(asyncio.get_running_loop())
        async with GO_GATE.exclusive():
            try:
                await asyncio.wait_for(client.stop(), self.probe_timeout_s)
            except Exception as exc:
                log.warning(
                    "stopping the web client failed",
                    extra={"account_id": self.account_id, "error": _describe(exc)},
                )
        if task is not None and not task.done():
            task.remove_done_callback(self._on_connect_task_done)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), self.probe_timeout_s)


# -- helpers -------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _replace(inbound: InboundMessage, **changes: Any) -> InboundMessage:
    from dataclasses import replace

    return replace(inbound, **changes)


def _to_jid(jid: str) -> Any:
    from neonize.proto.Neonize_pb2 import JID

    user, _, server = jid.partition("@")
    return JID(
        User=user,
        Server=server or "s.whatsapp.net",
        Device=0,
        RawAgent=0,
        Integrator=0,
        IsEmpty=False,
    )


PERMANENT_SEND_HINTS = ("not on whatsapp", "invalid jid", "no such", "not-acceptable", "forbidden")


def _send_error(exc: BaseException) -> SendError:
    if isinstance(exc, SendError):
        return exc
    text = _describe(exc)
    permanent = any(h in text.lower() for h in PERMANENT_SEND_HINTS)
    return SendError(f"WhatsApp refused the message: {text}", permanent=permanent)
