"""A fake WhatsApp at the neonize boundary: the web engine runs its own code against it.

Two halves that talk JSON lines over TCP on loopback (127.0.0.1 or ::1, nothing else):

- ``FakeWhatsAppServer`` runs in the test process (a thread with its own asyncio loop)
  and plays WhatsApp: it links sessions (a QR code that the test "scans", or a pairing
  code), remembers linked devices (a restarted worker resumes without a QR code),
  gives sends their WhatsApp ids and records them, pushes inbound messages, receipts
  and revokes built with neonize's own protobuf classes, serves media, drops
  connections and logs sessions out.
- ``client_factory(db_path, uuid)`` is what the appliance's test-only setting
  ``WEB_CLIENT_FACTORY=fake_whatsapp:client_factory`` names. It returns a
  ``FakeClient``: the part of neonize's ``NewAClient`` that ``appliance.engines.web``
  uses. Like neonize, it keeps the linked identity in the session database it is
  given, so deleting the session directory really forces linking again. The server's
  address comes from ``APPLIANCE_FAKE_WHATSAPP_ADDR`` (``appliancectl`` hands
  ``APPLIANCE_*`` variables on to the worker) or ``FAKE_WHATSAPP_ADDR``.

Everything the engine sees is what neonize would give it: events are neonize protobuf
messages parsed from the bytes the server sent (every required field set, as the Go
side sends them), errors are neonize's exception classes, QR codes arrive through the
``qr`` callback as bytes. So the engine's mapping (map_inbound, receipts, its id map,
the watchdog) runs as it does against WhatsApp. As with whatsmeow, an inbound message
is acknowledged once its handler returned (the server redelivers unacknowledged
messages when the session connects again), Message handlers run one at a time, other
events concurrently, and a dropped connection is a ``Disconnected`` event followed by
reconnect attempts until the client is stopped.

Wire frames:
  client -> server  {"op": "hello", "account": A, "uuid": U, "device": D | null}
                    {"op": OP, "rid": N, ...}                     a request
                    {"op": "ack", "id": WAID}                     a message was handled
  server -> client  {"rid": N, "result": {...}} | {"rid": N, "error": {"kind", "message"}}
                    {"push": "qr", "code": C}
                    {"push": "paired", "device": D, "user": PHONE}
                    {"push": "forget"}                            the device is gone
                    {"push": "event", "kind": NAME, "b64": B}     a Neonize_pb2 event
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message as ProtoMessage
from neonize.proto import Neonize_pb2 as ev
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

log = logging.getLogger(__name__)

ADDR_ENV = ("APPLIANCE_FAKE_WHATSAPP_ADDR", "FAKE_WHATSAPP_ADDR")
LOOPBACK = ("127.0.0.1", "::1")
DEFAULT_PHONE = "15550001111"
REQUEST_TIMEOUT_S = 90.0
MAX_RECONNECTS = 200  # bounded: about 6 minutes of attempts, then the client gives up
RECEIPT_TYPES = {"delivered": 1, "read": 4, "read-self": 5, "played": 6}
REASON_LOGGED_OUT = 2
PAIR_SUCCESS = 2
MEDIA_KINDS = ("imageMessage", "videoMessage", "audioMessage", "documentMessage", "stickerMessage")


# -- protobuf helpers (both halves) --------------------------------------------------------


def complete(message: ProtoMessage) -> ProtoMessage:
    """Set every unset required field to its zero value, recursively, as Go's proto2
    marshalling of neonize's structs does; returns the message."""
    for f in message.DESCRIPTOR.fields:
        if f.message_type is not None:
            if f.is_repeated:
                for item in getattr(message, f.name):
                    complete(item)
            elif f.is_required or message.HasField(f.name):
                complete(getattr(message, f.name))
        elif f.is_required and not message.HasField(f.name):
            setattr(message, f.name, f.default_value)
    return message


def jid(value: str, device: int = 0) -> ev.JID:
    user, _, server = value.partition("@")
    return ev.JID(
        User=user,
        Server=server or "s.whatsapp.net",
        Device=device,
        RawAgent=0,
        Integrator=0,
        IsEmpty=False,
    )


def jid_text(value: ev.JID) -> str:
    return f"{value.User}@{value.Server}" if value.User else ""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _dumps(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode() + b"\n"


def sniff_mimetype(data: bytes) -> str:
    """What WhatsApp's uploader would label the bytes (neonize asks libmagic)."""
    signatures = (
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"%PDF", "application/pdf"),
        (b"OggS", "audio/ogg"),
        (b"ID3", "audio/mpeg"),
    )
    for magic, mime in signatures:
        if data.startswith(magic):
            return mime
    if data[4:8] == b"ftyp":
        return "video/mp4"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _loopback_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if host not in LOOPBACK:
        raise ValueError(f"the fake WhatsApp must be on loopback, not {host!r}")
    return host, int(port)


# == the server (test process) ===============================================================


@dataclass
class Sent:
    """One message a client handed to the fake WhatsApp."""

    account: str
    id: str  # the WhatsApp id the server assigned
    to: str  # user@server
    message: dict[str, Any]  # the waE2E.Message as a dict (protobuf field names)
    proto: e2e.Message
    at: float

    @property
    def kind(self) -> str:
        return next(iter(self.message), "")


@dataclass
class ChatPresenceSent:
    """A typing indicator a client sent (neonize's ChatPresence / ChatPresenceMedia)."""

    account: str
    chat: str
    state: int  # 0 composing, 1 paused
    media: int  # 0 text, 1 audio


@dataclass
class Read:
    account: str
    ids: list[str]
    chat: str
    sender: str


@dataclass
class _Device:
    account: str
    phone: str


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.account: str | None = None
        self.device: str | None = None
        self.pairing = False
        self.pair_phone: str | None = None
        self.pair_code: str | None = None
        self.closed = False

    @property
    def paired(self) -> bool:
        return self.device is not None and not self.closed

    def send(self, frame: dict[str, Any]) -> None:
        if not self.closed:
            self.writer.write(_dumps(frame))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()


@dataclass
class _Account:
    name: str
    conn: _Conn | None = None
    qr_codes: list[str] = field(default_factory=list)
    hellos: list[str | None] = field(default_factory=list)  # device id sent, None: unlinked
    pending: dict[str, str] = field(default_factory=dict)  # unacknowledged messages: id -> b64
    queued: list[tuple[str, str]] = field(default_factory=list)  # events for the next connect
    acks: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)  # message id -> times pushed
    send_failures: list[tuple[str, str]] = field(default_factory=list)
    send_delay_s: float = 0.0
    hang_probes: bool = False
    probes: int = 0
    refuse_until: float = 0.0
    logouts: int = 0
    # History sync chunks not yet acknowledged: key -> b64 (sent again on every connect).
    pending_history: dict[str, str] = field(default_factory=dict)
    # Profile pictures: jid -> (picture id, bytes), or "none" / "hidden".
    pictures: dict[str, tuple[str, bytes] | str] = field(default_factory=dict)
    picture_asks: int = 0
    picture_downloads: int = 0
    # whatsmeow's chat-settings store of the linked device: jid -> archived, pinned,
    # muted_until (Unix seconds, as neonize's get_chat_settings reports it).
    chat_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    chat_settings_reads: int = 0


class FakeWhatsAppServer:
    """WhatsApp, as far as the web engine can tell. Start it, hand its ``address`` to the
    appliance, and drive it from the test (every method is thread-safe and bounded)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in LOOPBACK:
            raise ValueError("the fake WhatsApp listens on loopback only")
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._accounts: dict[str, _Account] = {}
        self._devices: dict[str, _Device] = {}
        self._sent: list[Sent] = []
        self._reads: list[Read] = []
        self._blobs: dict[str, tuple[bytes, str]] = {}
        self._uploads: list[tuple[str, bytes]] = []
        self._conns: set[_Conn] = set()
        self._app_state: list[tuple[str, ev.PatchInfo]] = []  # (account, patch) as sent
        self._presences: list[ChatPresenceSent] = []
        self._blocked: dict[str, set[str]] = {}  # account -> blocked jids

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if self.host != "::1" else f"[::1]:{self.port}"

    def start(self) -> FakeWhatsAppServer:
        started = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, self.host, self.port, limit=64 * 1024**2)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=main, name="fake-whatsapp", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake WhatsApp did not start within 10 s")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        def shutdown() -> None:
            for conn in list(self._conns):
                conn.close()
            if self._server is not None:
                self._server.close()
            loop.stop()

        loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeWhatsAppServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the server's loop (where all its state lives); its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the fake WhatsApp is not running")
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    def wait(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Poll ``predicate`` (called in the server loop) until truthy; bounded."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self._call(predicate)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"fake WhatsApp: timed out after {timeout_s}s: {what}")
            time.sleep(0.05)

    def _account(self, name: str) -> _Account:
        if name not in self._accounts:
            self._accounts[name] = _Account(name)
        return self._accounts[name]

    # -- the connection -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            while not conn.closed:
                line = await reader.readline()
                if not line:
                    break
                self._frame(conn, json.loads(line))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("fake WhatsApp: connection ended: %r", exc)
        finally:
            conn.close()
            self._conns.discard(conn)
            if conn.account is not None:
                account = self._account(conn.account)
                if account.conn is conn:
                    account.conn = None

    def _frame(self, conn: _Conn, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        if op == "hello":
            self._hello(conn, frame)
            return
        account = self._account(conn.account or "")
        if op == "ack":
            account.pending.pop(frame["id"], None)
            account.pending_history.pop(frame["id"], None)
            account.acks[frame["id"]] = account.acks.get(frame["id"], 0) + 1
            return
        rid = frame["rid"]
        handler = getattr(self, f"_op_{op}", None)
        try:
            if handler is None:
                raise _Refused("NeonizeError", f"unknown operation {op!r}")
            result = handler(conn, account, frame)
        except _Refused as exc:
            conn.send({"rid": rid, "error": {"kind": exc.kind, "message": exc.message}})
            return
        if result is _NO_ANSWER:
            return
        delay = account.send_delay_s if op == "send" else 0.0
        answer = {"rid": rid, "result": result}
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, conn.send, answer)
        else:
            conn.send(answer)

    def _hello(self, conn: _Conn, frame: dict[str, Any]) -> None:
        account = self._account(frame["account"])
        conn.account = account.name
        device = frame.get("device")
        account.hellos.append(device)
        if time.monotonic() < account.refuse_until:
            conn.close()
            return
        old = account.conn
        if old is not None and old is not conn and not old.closed:
            # WhatsApp keeps one connection per device: the older one is replaced.
            self._push(old, ev.StreamReplaced())
            old.close()
        account.conn = conn
        if device is None:
            conn.pairing = True
            self._new_qr(account)
        elif self._devices.get(device, _Device("", "")).account == account.name:
            conn.device = device
            self._push(conn, ev.Connected(status=True))
            self._flush(account)
        else:  # unlinked from the phone, or logged out: the stored keys are worthless
            conn.send({"push": "forget"})
            self._push(conn, ev.LoggedOut(OnConnect=True, Reason=REASON_LOGGED_OUT))
            conn.close()

    def _push(self, conn: _Conn, event: ProtoMessage) -> None:
        conn.send(self._event_frame(event))

    @staticmethod
    def _event_frame(event: ProtoMessage) -> dict[str, Any]:
        data = complete(event).SerializeToString()
        return {"push": "event", "kind": type(event).__name__, "b64": _b64(data)}

    def _deliver(self, account: _Account, event: ProtoMessage) -> None:
        """An event for the account now, or when it next connects."""
        frame = self._event_frame(event)
        if isinstance(event, ev.Message):
            account.pending[event.Info.ID] = frame["b64"]
        if account.conn is not None and account.conn.paired:
            account.conn.send(frame)
            if isinstance(event, ev.Message):
                account.delivered[event.Info.ID] = account.delivered.get(event.Info.ID, 0) + 1
        elif not isinstance(event, ev.Message):
            account.queued.append((frame["kind"], frame["b64"]))

    def _flush(self, account: _Account) -> None:
        conn = account.conn
        assert conn is not None
        for kind, data in account.queued:
            conn.send({"push": "event", "kind": kind, "b64": data})
        account.queued.clear()
        for message_id, data in account.pending.items():  # unacknowledged: again
            conn.send({"push": "event", "kind": "Message", "b64": data})
            account.delivered[message_id] = account.delivered.get(message_id, 0) + 1
        for key, data in account.pending_history.items():
            conn.send({"push": "event", "kind": "HistorySync", "b64": data, "ack": key})

    def _new_qr(self, account: _Account) -> str:
        keys = ",".join(_b64(secrets.token_bytes(32)) for _ in range(3))
        code = f"2@{secrets.token_urlsafe(36)},{keys}"
        account.qr_codes.append(code)
        assert account.conn is not None
        account.conn.send({"push": "qr", "code": code})
        return code

    def _link(self, account: _Account, phone: str) -> str:
        conn = account.conn
        if conn is None or not conn.pairing or conn.closed:
            raise AssertionError(f"fake WhatsApp: {account.name} is not waiting to be linked")
        device = f"dev-{secrets.token_hex(6)}"
        self._devices[device] = _Device(account.name, phone)
        conn.pairing = False
        conn.device = device
        conn.send({"push": "paired", "device": device, "user": phone})
        self._push(
            conn,
            ev.PairStatus(
                ID=jid(f"{phone}@s.whatsapp.net", device=7),
                Status=PAIR_SUCCESS,
                Platform="android",
            ),
        )
        self._push(conn, ev.Connected(status=True))
        self._flush(account)
        return device

    # -- requests -------------------------------------------------------------------------

    def _paired_conn(self, conn: _Conn, kind: str) -> None:
        if not conn.paired:
            raise _Refused(kind, "websocket not connected")

    def _op_send(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "SendMessageError")
        if account.send_failures:
            kind, text = account.send_failures.pop(0)
            raise _Refused(kind, text)
        message = e2e.Message.FromString(_unb64(frame["b64"]))
        wa_id = "3EB0" + secrets.token_hex(9).upper()
        record = Sent(
            account=account.name,
            id=wa_id,
            to=frame["to"],
            message=MessageToDict(message, preserving_proto_field_name=True),
            proto=message,
            at=time.time(),
        )
        self._sent.append(record)
        return {"id": wa_id, "timestamp": int(record.at)}

    def _op_upload(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "UploadError")
        data = _unb64(frame["b64"])
        self._uploads.append((account.name, data))
        return self._store_blob(data, sniff_mimetype(data))

    def _store_blob(self, data: bytes, mimetype: str) -> dict[str, Any]:
        direct_path = f"/v/t62.7118-24/{secrets.token_hex(12)}.enc"
        self._blobs[direct_path] = (data, mimetype)
        return {
            "url": f"https://mmg.whatsapp.net{direct_path}",  # never fetched: a label only
            "direct_path": direct_path,
            "media_key": _b64(secrets.token_bytes(32)),
            "sha256": _b64(hashlib.sha256(data).digest()),
            "enc_sha256": _b64(hashlib.sha256(b"enc" + data).digest()),
            "length": len(data),
            "mimetype": mimetype,
        }

    def _op_download(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "DownloadError")
        blob = self._blobs.get(frame["direct_path"])
        if blob is None:
            raise _Refused("DownloadError", "failed to download media: 404 Not Found")
        return {"b64": _b64(blob[0])}

    def _op_probe(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "GetBlocklistError")
        account.probes += 1
        return _NO_ANSWER if account.hang_probes else {"dhash": "", "jids": []}

    def _op_pair_phone(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        if not conn.pairing:
            raise _Refused("PairPhoneError", "the client is not waiting to be linked")
        alphabet = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
        code = "".join(secrets.choice(alphabet) for _ in range(8))
        conn.pair_phone = frame["phone"]
        conn.pair_code = f"{code[:4]}-{code[4:]}"
        return {"code": conn.pair_code}

    def _op_mark_read(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "MarkReadError")
        self._reads.append(Read(account.name, frame["ids"], frame["chat"], frame["sender"]))
        return {}

    def _op_logout(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "LogoutError")
        self._devices.pop(conn.device or "", None)
        account.logouts += 1
        asyncio.get_running_loop().call_soon(conn.close)  # after the answer is written
        return {}

    # -- what the test does: linking ------------------------------------------------------

    def qr(self, account: str, timeout_s: float = 20, after: int = 0) -> str:
        """The account's newest QR code once it has more than ``after`` of them."""

        def newest() -> str | None:
            codes = self._account(account).qr_codes
            return codes[-1] if len(codes) > after else None

        return str(self.wait(newest, timeout_s, f"a QR code for {account}"))

    def qr_count(self, account: str) -> int:
        return int(self._call(lambda: len(self._account(account).qr_codes)))

    def refresh_qr(self, account: str) -> str:
        """WhatsApp rotates the QR code about every 20 s; do it now."""
        return str(self._call(lambda: self._new_qr(self._account(account))))

    def scan(self, account: str, phone: str = DEFAULT_PHONE, timeout_s: float = 20) -> str:
        """The phone scans the account's QR code: the session is linked to ``phone``."""
        self.wait(lambda: self._pairing(account), timeout_s, f"{account} waiting to be linked")
        return str(self._call(lambda: self._link(self._account(account), phone)))

    def enter_pairing_code(self, account: str, code: str) -> str:
        """The phone's user types the pairing code: linked to the number it was made for."""

        def enter() -> str:
            target = self._account(account)
            conn = target.conn
            if conn is None or conn.pair_code is None or conn.pair_phone is None:
                raise AssertionError(f"fake WhatsApp: no pairing code was made for {account}")
            if code != conn.pair_code:
                raise AssertionError(f"fake WhatsApp: wrong code {code!r} for {account}")
            return self._link(target, conn.pair_phone)

        return str(self._call(enter))

    def _pairing(self, account: str) -> bool:
        conn = self._account(account).conn
        return conn is not None and conn.pairing and not conn.closed

    def connected(self, account: str) -> bool:
        """A linked client of the account is connected now."""

        def check() -> bool:
            conn = self._account(account).conn
            return conn is not None and conn.paired

        return bool(self._call(check))

    def linked(self, account: str) -> bool:
        """WhatsApp knows a device of the account (whether connected or not)."""
        return bool(self._call(lambda: any(d.account == account for d in self._devices.values())))

    def hellos(self, account: str) -> list[str | None]:
        """Each connection attempt's stored device (None: it came without one)."""
        return list(self._call(lambda: list(self._account(account).hellos)))

    def logouts(self, account: str) -> int:
        return int(self._call(lambda: self._account(account).logouts))

    # -- what the test does: messages -----------------------------------------------------

    def sent(self, account: str | None = None) -> list[Sent]:
        return list(
            self._call(lambda: [s for s in self._sent if account is None or s.account == account])
        )

    def wait_sent(self, account: str, count: int, timeout_s: float = 20) -> list[Sent]:
        """At least ``count`` sends of the account; all of them."""

        def enough() -> list[Sent] | None:
            mine = [s for s in self._sent if s.account == account]
            return mine if len(mine) >= count else None

        return list(self.wait(enough, timeout_s, f"{count} sends from {account}"))

    def uploads(self, account: str) -> list[bytes]:
        return list(self._call(lambda: [d for a, d in self._uploads if a == account]))

    def reads(self, account: str) -> list[Read]:
        return list(self._call(lambda: [r for r in self._reads if r.account == account]))

    def receipt(
        self, account: str, ids: list[str], status: str = "delivered", chat: str | None = None
    ) -> None:
        """The recipient's phone confirms ``ids`` (WhatsApp ids): delivered, read or played."""

        def push() -> None:
            to = chat
            if to is None:
                known = {s.id: s.to for s in self._sent if s.account == account}
                to = known[ids[0]]
            source = ev.MessageSource(Chat=jid(to), Sender=jid(to), IsFromMe=True)
            event = ev.Receipt(
                MessageSource=source,
                MessageIDs=ids,
                Timestamp=int(time.time()),
                Type=RECEIPT_TYPES[status],
            )
            self._deliver(self._account(account), event)

        self._call(push)

    def push_message(
        self,
        account: str,
        message: e2e.Message,
        *,
        chat: str,
        sender: str | None = None,
        sender_alt: str | None = None,
        message_id: str | None = None,
        push_name: str = "",
        timestamp: int | None = None,
        from_me: bool = False,
    ) -> str:
        """An inbound message event for the account; its WhatsApp id. Held (and sent
        again on every connect) until the client acknowledges it."""
        wa_id = message_id or "3A" + secrets.token_hex(9).upper()
        is_group = chat.endswith("@g.us")
        source = ev.MessageSource(
            Chat=jid(chat),
            Sender=jid(sender or chat),
            IsFromMe=from_me,
            IsGroup=is_group,
        )
        if sender_alt:
            source.SenderAlt.CopyFrom(jid(sender_alt))
        kinds = [f.name for f, _ in message.ListFields()]
        media = next((k for k in kinds if k in MEDIA_KINDS), None)
        event = ev.Message(
            Info=ev.MessageInfo(
                MessageSource=source,
                ID=wa_id,
                Type="media" if media else "text",
                MediaType=media.removesuffix("Message") if media else "",
                Pushname=push_name,
                Timestamp=timestamp or int(time.time()),
            ),
            Message=message,
        )
        self._call(lambda: self._deliver(self._account(account), event))
        return wa_id

    def push_text(self, account: str, chat: str, body: str, **kw: Any) -> str:
        reply_to = kw.pop("reply_to", None)
        if reply_to is None:
            return self.push_message(account, e2e.Message(conversation=body), chat=chat, **kw)
        context = e2e.ContextInfo(stanzaID=reply_to, quotedMessage=e2e.Message())
        text = e2e.ExtendedTextMessage(text=body, contextInfo=context)
        return self.push_message(account, e2e.Message(extendedTextMessage=text), chat=chat, **kw)

    def add_media(self, data: bytes, mimetype: str | None = None) -> dict[str, Any]:
        """Put bytes on the fake media servers; the fields a media message points with."""
        return dict(self._call(lambda: self._store_blob(data, mimetype or sniff_mimetype(data))))

    def push_image(
        self, account: str, chat: str, data: bytes, *, caption: str = "", **kw: Any
    ) -> str:
        blob = self.add_media(data, kw.pop("mimetype", None))
        image = e2e.ImageMessage(
            URL=blob["url"],
            directPath=blob["direct_path"],
            mediaKey=_unb64(blob["media_key"]),
            fileSHA256=_unb64(blob["sha256"]),
            fileEncSHA256=_unb64(blob["enc_sha256"]),
            fileLength=blob["length"],
            mimetype=blob["mimetype"],
            caption=caption,
        )
        return self.push_message(account, e2e.Message(imageMessage=image), chat=chat, **kw)

    def push_revoke(
        self, account: str, chat: str, target_id: str, *, sender: str | None = None, **kw: Any
    ) -> str:
        """The sender deletes ``target_id`` for everyone (a protocol message)."""
        key = MessageKey(remoteJID=chat, fromMe=False, ID=target_id)
        if chat.endswith("@g.us") and sender:
            key.participant = sender
        revoke = e2e.ProtocolMessage(key=key, type=e2e.ProtocolMessage.REVOKE)
        return self.push_message(
            account, e2e.Message(protocolMessage=revoke), chat=chat, sender=sender, **kw
        )

    def push_history(self, account: str, data: ProtoMessage) -> str:
        """A HistorySync chunk (waHistorySync.HistorySync) for the account; its key. As
        with whatsmeow, the chunk counts as received once the client's handler returned:
        until then it is sent again on every connect (pushing the same chunk again is
        WhatsApp re-sending it)."""
        key = "hist-" + secrets.token_hex(6)
        frame = self._event_frame(ev.HistorySync(Data=data))

        def deliver() -> None:
            acc = self._account(account)
            acc.pending_history[key] = frame["b64"]
            if acc.conn is not None and acc.conn.paired:
                acc.conn.send({**frame, "ack": key})

        self._call(deliver)
        return key

    def history_pending(self, account: str) -> int:
        """History chunks the client has not acknowledged yet."""
        return int(self._call(lambda: len(self._account(account).pending_history)))

    def set_picture(self, account: str, jid_: str, picture: bytes | str) -> None:
        """``jid_``'s profile picture as ``account`` sees it: bytes, "none" or "hidden"."""
        value = picture if isinstance(picture, str) else ("pic-" + secrets.token_hex(4), picture)
        self._call(lambda: self._account(account).pictures.__setitem__(jid_, value))

    def picture_counts(self, account: str) -> tuple[int, int]:
        """(profile picture requests, picture downloads) of the account."""
        acc = self._call(lambda: self._account(account))
        return acc.picture_asks, acc.picture_downloads

    def _op_picture(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "GetProfilePictureError")
        account.picture_asks += 1
        found = account.pictures.get(frame["jid"], "none")
        if found == "hidden":  # whatsmeow's ErrProfilePictureUnauthorized
            raise _Refused(
                "GetProfilePictureError", "the user has hidden their profile picture from you"
            )
        if isinstance(found, str):  # ErrProfilePictureNotSet
            raise _Refused(
                "GetProfilePictureError", "that user or group does not have a profile picture"
            )
        return {"url": f"https://pps.whatsapp.net/fake/{found[0]}", "id": found[0]}

    def _op_picture_download(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        account.picture_downloads += 1
        wanted = frame["url"].rsplit("/", 1)[-1]
        for found in account.pictures.values():
            if not isinstance(found, str) and found[0] == wanted:
                return {"b64": _b64(found[1])}
        raise _Refused("DownloadError", "404 picture not found")

    def push_event(self, account: str, event: ProtoMessage) -> None:
        """Any other neonize event (KeepAliveTimeout, TemporaryBan, ...), now or at connect."""
        self._call(lambda: self._deliver(self._account(account), event))

    def acked(self, account: str, message_id: str) -> int:
        """How often the client acknowledged the message (0: not yet)."""
        return int(self._call(lambda: self._account(account).acks.get(message_id, 0)))

    def delivered(self, account: str, message_id: str) -> int:
        """How often the message was pushed to a client."""
        return int(self._call(lambda: self._account(account).delivered.get(message_id, 0)))

    def wait_acked(self, account: str, message_id: str, timeout_s: float = 20) -> None:
        self.wait(
            lambda: self._account(account).acks.get(message_id),
            timeout_s,
            f"{account} to acknowledge {message_id}",
        )

    # -- what the test does: faults -------------------------------------------------------

    def fail_sends(
        self, account: str, count: int = 1, message: str = "server returned error 479"
    ) -> None:
        """The next ``count`` sends of the account fail as whatsmeow reports it
        (neonize raises SendMessageError with the Go error's text)."""

        def arm() -> None:
            self._account(account).send_failures.extend([("SendMessageError", message)] * count)

        self._call(arm)

    def delay_sends(self, account: str, seconds: float) -> None:
        self._call(lambda: setattr(self._account(account), "send_delay_s", seconds))

    def hang_probes(self, account: str, hang: bool = True) -> None:
        """Round trips (the engine's watchdog probe) get no answer."""
        self._call(lambda: setattr(self._account(account), "hang_probes", hang))

    def probes(self, account: str) -> int:
        return int(self._call(lambda: self._account(account).probes))

    def drop(self, account: str, refuse_for_s: float = 0.0) -> None:
        """Cut the account's connection; refuse reconnects for ``refuse_for_s``."""

        def cut() -> None:
            target = self._account(account)
            target.refuse_until = time.monotonic() + refuse_for_s
            if target.conn is not None:
                target.conn.close()

        self._call(cut)

    def log_out(self, account: str, reason: int = REASON_LOGGED_OUT) -> None:
        """The phone removes the linked device: the session ends for good."""

        def remove() -> None:
            target = self._account(account)
            for device_id, device in list(self._devices.items()):
                if device.account == account:
                    del self._devices[device_id]
            conn = target.conn
            if conn is not None and not conn.closed:
                conn.send({"push": "forget"})
                self._push(conn, ev.LoggedOut(OnConnect=False, Reason=reason))
                asyncio.get_running_loop().call_soon(conn.close)

        self._call(remove)

    # -- actions: app-state patches, typing indicators --------------------------------------

    def _op_app_state(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "SendAppStateError")
        patch = ev.PatchInfo.FromString(_unb64(frame["b64"]))
        self._app_state.append((account.name, patch))
        for mutation in patch.Mutations:  # whatsmeow's re-sync applies it to its store
            self._apply_mutation(account, list(mutation.Index), mutation.Value)
        return {}

    @staticmethod
    def _apply_mutation(account: _Account, index: list[str], value: Any) -> None:
        """What whatsmeow's dispatchAppState puts in its chat-settings store."""
        if len(index) < 2:
            return
        kind, chat = index[0], index[1]
        settings = account.chat_settings.setdefault(
            chat, {"archived": False, "pinned": False, "muted_until": 0}
        )
        if kind == "archive":
            settings["archived"] = value.archiveChatAction.archived
        elif kind == "pin_v1":
            settings["pinned"] = value.pinAction.pinned
        elif kind == "mute":
            end = value.muteAction.muteEndTimestamp
            settings["muted_until"] = (
                (-1 if end == -1 else end // 1000) if value.muteAction.muted else 0
            )

    def phone_changes_chat(
        self,
        account: str,
        chat: str,
        *,
        archived: bool | None = None,
        pinned: bool | None = None,
        muted_until: int | None = None,
    ) -> None:
        """The phone archives, pins or mutes (``muted_until``: Unix seconds, -1 always,
        0 unmuted) a chat: app-state sync brings it into the linked device's store, and
        no event reaches Python (neonize 0.5.2 passes none on)."""
        from neonize.proto.waSyncAction import WAWebProtobufSyncAction_pb2 as sync

        def change() -> None:
            acc = self._account(account)
            if archived is not None:
                value = sync.SyncActionValue(
                    archiveChatAction=sync.ArchiveChatAction(archived=archived)
                )
                self._apply_mutation(acc, ["archive", chat], value)
            if pinned is not None:
                value = sync.SyncActionValue(pinAction=sync.PinAction(pinned=pinned))
                self._apply_mutation(acc, ["pin_v1", chat], value)
            if muted_until is not None:
                mute = sync.MuteAction(muted=muted_until != 0)
                if muted_until:
                    mute.muteEndTimestamp = -1 if muted_until == -1 else muted_until * 1000
                self._apply_mutation(acc, ["mute", chat], sync.SyncActionValue(muteAction=mute))

        self._call(change)

    def chat_settings_reads(self, account: str) -> int:
        return int(self._call(lambda: self._account(account).chat_settings_reads))

    def _op_chat_settings(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "GetChatSettingsError")
        account.chat_settings_reads += 1
        found = account.chat_settings.get(frame["jid"])
        return {"found": found is not None, **(found or {})}

    def _op_chat_presence(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "SendChatPresenceError")
        presence = ChatPresenceSent(account.name, frame["chat"], frame["state"], frame["media"])
        self._presences.append(presence)
        return {}

    def _op_blocklist(self, conn: _Conn, account: _Account, frame: dict[str, Any]) -> Any:
        self._paired_conn(conn, "UpdateBlocklistError")
        blocked = self._blocked.setdefault(account.name, set())
        if frame["action"] == "block":
            blocked.add(frame["jid"])
        else:
            blocked.discard(frame["jid"])
        return {"jids": sorted(blocked)}

    def blocked(self, account: str) -> set[str]:
        """The jids the account has blocked at WhatsApp."""
        return set(self._call(lambda: set(self._blocked.get(account, set()))))

    def app_state(self, account: str) -> list[ev.PatchInfo]:
        """The app-state patches (archive, pin, mute, read) the account sent, in order."""
        return list(self._call(lambda: [p for a, p in self._app_state if a == account]))

    def presences(self, account: str) -> list[ChatPresenceSent]:
        return list(self._call(lambda: [p for p in self._presences if p.account == account]))


class _Refused(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_NO_ANSWER = object()


# == the client (inside the worker) ==========================================================


def client_factory(db_path: str, uuid: str) -> FakeClient:
    """WEB_CLIENT_FACTORY: (session db path, client uuid) -> a client for the fake."""
    for name in ADDR_ENV:
        if os.environ.get(name):
            return FakeClient(db_path, uuid, os.environ[name])
    raise RuntimeError(f"the fake WhatsApp client needs {ADDR_ENV[0]}=127.0.0.1:PORT")


class _Events:
    """neonize's ``client.event``: ``event(kind)(handler)`` registers a handler."""

    def __init__(self) -> None:
        self.handlers: dict[type, Callable[[Any, Any], Awaitable[None]]] = {}
        self.qr_handler: Callable[[Any, bytes], Awaitable[None]] | None = None

    def __call__(self, kind: type) -> Callable[[Any], Any]:
        def register(handler: Callable[[Any, Any], Awaitable[None]]) -> Any:
            self.handlers[kind] = handler
            return handler

        return register

    def qr(self, handler: Callable[[Any, bytes], Awaitable[None]]) -> Any:
        self.qr_handler = handler
        return handler


class FakeClient:
    """The subset of ``neonize.aioze.client.NewAClient`` the web engine uses."""

    def __init__(self, db_path: str, uuid: str, address: str) -> None:
        self.name = db_path
        self.uuid = uuid.encode()
        self.account = uuid.partition("#")[0]
        self.host, self.port = _loopback_address(address)
        self.event = _Events()
        self.qr = self.event.qr
        self.me: ev.Device | None = None
        self.connected = False
        self.connect_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._requests: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._rid = 0
        self._stopping = False
        self._stopped = asyncio.Event()
        self._expect_close = False
        self._inbox: asyncio.Queue[ev.Message | tuple[Any, str] | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unpark = threading.Event()
        self._parked: asyncio.Future[Any] | None = None

    # -- the session store: what neonize keeps in its sqlite file ------------------------

    def _store(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.name, isolation_level=None)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS whatsmeow_device (device TEXT PRIMARY KEY, user TEXT)"
        )
        return conn

    def _device(self) -> tuple[str, str] | None:
        if not os.path.exists(self.name):
            return None
        with contextlib.closing(self._store()) as conn:
            row = conn.execute("SELECT device, user FROM whatsmeow_device").fetchone()
        return (row[0], row[1]) if row else None

    def _save_device(self, device: str, user: str) -> None:
        with contextlib.closing(self._store()) as conn:
            conn.execute("DELETE FROM whatsmeow_device")
            conn.execute("INSERT INTO whatsmeow_device VALUES (?, ?)", (device, user))

    def _forget_device(self) -> None:
        if os.path.exists(self.name):
            with contextlib.closing(self._store()) as conn:
                conn.execute("DELETE FROM whatsmeow_device")

    def _me(self) -> ev.Device:
        stored = self._device()
        device = ev.Device(Initialized=stored is not None)
        if stored is not None:
            device.JID.CopyFrom(jid(f"{stored[1]}@s.whatsapp.net", device=7))
        return complete(device)

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> asyncio.Task[None]:
        """Like neonize: a task that runs while the client lives (until ``stop``). Like
        neonize, the client also holds a thread of the loop's default executor for its
        whole life (there, the blocking Go ``Neonize()`` call)."""
        loop = asyncio.get_running_loop()
        self._parked = loop.run_in_executor(None, self._unpark.wait)
        self.connect_task = loop.create_task(self._run())
        self._spawn(self._consume())
        return self.connect_task

    async def _run(self) -> None:
        failures = 0
        ever = False
        while not self._stopping:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, limit=64 * 1024**2), 5
                )
            except (OSError, TimeoutError) as exc:
                if not ever:  # whatsmeow's Connect fails: neonize's task raises
                    raise _exc("NeonizeError", f"failed to dial whatsapp: {exc}") from None
                failures += 1
                if failures > MAX_RECONNECTS:
                    raise _exc("NeonizeError", "gave up reconnecting") from None
                await self._pause(min(2.0, 0.05 * 2**failures))
                continue
            ever = True
            failures = 0
            self._writer = writer
            stored = self._device()
            self._write({"op": "hello", "account": self.account, "uuid": self.uuid.decode(),
                         "device": stored[0] if stored else None})  # fmt: skip
            try:
                await self._read(reader)
            finally:
                self._writer = None
                with contextlib.suppress(Exception):
                    writer.close()
                self._fail_requests("websocket disconnected")
            was_connected, self.connected = self.connected, False
            if self._stopping:
                break
            if self._expect_close:  # logged out or replaced: no reconnect
                await self._stopped.wait()
                break
            if was_connected:
                self._dispatch(ev.Disconnected, complete(ev.Disconnected(status=True)))
            await self._pause(0.1)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ConnectionError, ValueError):
                return
            if not line:
                return
            frame = json.loads(line)
            if "rid" in frame:
                waiter = self._requests.pop(frame["rid"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
                continue
            push = frame.get("push")
            if push == "qr":
                handler = self.event.qr_handler
                if handler is not None:
                    self._spawn(handler(self, frame["code"].encode()))
            elif push == "paired":
                self._save_device(frame["device"], frame["user"])
                self.me = self._me()
            elif push == "forget":
                self._forget_device()
                self._expect_close = True
            elif push == "event":
                kind = getattr(ev, frame["kind"])
                event = kind.FromString(_unb64(frame["b64"]))
                if frame.get("ack"):  # a history chunk: handled in turn, then acknowledged
                    self._inbox.put_nowait((event, frame["ack"]))
                else:
                    self._dispatch(kind, event)

    def _dispatch(self, kind: type, event: Any) -> None:
        if kind is ev.Connected:
            self.connected = True
            self.me = self._me()
        elif kind in (ev.StreamReplaced, ev.LoggedOut):
            self._expect_close = True
        if kind is ev.Message:
            self._inbox.put_nowait(event)  # one at a time, acknowledged after the handler
            return
        handler = self.event.handlers.get(kind)
        if handler is not None:
            self._spawn(handler(self, event))

    async def _consume(self) -> None:
        while not self._stopping:
            event = await self._inbox.get()
            if event is None or self._stopping:
                return
            ack_id = event[1] if isinstance(event, tuple) else event.Info.ID
            if isinstance(event, tuple):
                event = event[0]
            handler = self.event.handlers.get(type(event))
            if handler is not None:
                try:
                    await asyncio.wait_for(handler(self, event), REQUEST_TIMEOUT_S)
                except Exception:
                    # whatsmeow acknowledges once the handler returned, however it ended
                    log.exception("fake WhatsApp client: message handler failed")
            if self._writer is not None:
                self._write({"op": "ack", "id": ack_id})

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("fake WhatsApp client: handler raised %r", task.exception())

    def _write(self, frame: dict[str, Any]) -> None:
        if self._writer is not None:
            self._writer.write(_dumps(frame))

    async def _request(self, op: str, error: str, **fields: Any) -> dict[str, Any]:
        # neonize makes each Go call on the loop's default executor: so does the fake.
        await asyncio.to_thread(_go_call)
        if self._writer is None or self._stopping:
            raise _exc(error, "websocket not connected")
        self._rid += 1
        rid = self._rid
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._requests[rid] = waiter
        try:
            self._write({"op": op, "rid": rid, **fields})
            answer = await asyncio.wait_for(waiter, REQUEST_TIMEOUT_S)
        finally:
            self._requests.pop(rid, None)
        if "error" in answer:
            raise _exc(answer["error"]["kind"], answer["error"]["message"])
        return dict(answer["result"])

    def _fail_requests(self, why: str) -> None:
        for waiter in self._requests.values():
            if not waiter.done():
                waiter.set_result({"error": {"kind": "NeonizeError", "message": why}})
        self._requests.clear()

    # -- NewAClient's methods ------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self.connected and self._writer is not None

    @property
    def is_logged_in(self) -> bool:
        return self._device() is not None

    async def stop(self) -> None:
        await asyncio.to_thread(_go_call)
        self._unpark.set()
        self._stopping = True
        self._stopped.set()
        self.connected = False
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        self._fail_requests("client stopped")
        # Handlers already running finish (neonize does not cancel them); messages not
        # yet handled stay unacknowledged, so WhatsApp delivers them again later.
        self._inbox.put_nowait(None)

    async def disconnect(self) -> None:
        self._expect_close = True
        writer = self._writer
        if writer is not None:
            writer.close()

    async def get_me(self) -> ev.Device:
        return self._me()

    async def get_blocklist(self) -> ev.Blocklist:
        await self._request("probe", "GetBlocklistError")
        return complete(ev.Blocklist())

    async def PairPhone(  # neonize spells it so
        self, phone: str, show_push_notification: bool, *_args: Any, **_kw: Any
    ) -> str:
        answer = await self._request(
            "pair_phone", "PairPhoneError", phone=phone, push=show_push_notification
        )
        return str(answer["code"])

    async def send_message(self, to: ev.JID | str, message: e2e.Message | str, **_kw: Any) -> Any:
        if isinstance(to, str):
            to = jid(to if "@" in to else f"{to}@s.whatsapp.net")
        if isinstance(message, str):
            message = e2e.Message(conversation=message)
        answer = await self._request(
            "send", "SendMessageError", to=jid_text(to), b64=_b64(message.SerializeToString())
        )
        response = ev.SendResponse(ID=answer["id"], Timestamp=answer["timestamp"])
        response.Message.CopyFrom(message)
        return complete(response)

    async def _upload(self, data: bytes) -> dict[str, Any]:
        return await self._request("upload", "UploadError", b64=_b64(data))

    @staticmethod
    def _media_fields(up: dict[str, Any]) -> dict[str, Any]:
        return {
            "URL": up["url"],
            "directPath": up["direct_path"],
            "mediaKey": _unb64(up["media_key"]),
            "fileSHA256": _unb64(up["sha256"]),
            "fileEncSHA256": _unb64(up["enc_sha256"]),
            "fileLength": up["length"],
        }

    async def build_image_message(
        self, file: bytes, caption: str | None = None, **_kw: Any
    ) -> e2e.Message:
        up = await self._upload(_as_bytes(file))
        part = e2e.ImageMessage(caption=caption, mimetype=up["mimetype"], **self._media_fields(up))
        return e2e.Message(imageMessage=part)

    async def build_video_message(
        self, file: bytes, caption: str | None = None, **_kw: Any
    ) -> e2e.Message:
        up = await self._upload(_as_bytes(file))
        part = e2e.VideoMessage(caption=caption, mimetype=up["mimetype"], **self._media_fields(up))
        return e2e.Message(videoMessage=part)

    async def build_audio_message(self, file: bytes, ptt: bool = False, **_kw: Any) -> e2e.Message:
        up = await self._upload(_as_bytes(file))
        part = e2e.AudioMessage(PTT=ptt, mimetype=up["mimetype"], **self._media_fields(up))
        return e2e.Message(audioMessage=part)

    async def build_document_message(
        self,
        file: bytes,
        caption: str | None = None,
        title: str | None = None,
        filename: str | None = None,
        mimetype: str | None = None,
        **_kw: Any,
    ) -> e2e.Message:
        up = await self._upload(_as_bytes(file))
        part = e2e.DocumentMessage(
            caption=caption,
            title=title,
            fileName=filename,
            mimetype=mimetype or up["mimetype"],
            **self._media_fields(up),
        )
        return e2e.Message(documentMessage=part)

    async def build_sticker_message(
        self, file: bytes | str, passthrough: bool = False, **_kw: Any
    ) -> e2e.Message:
        """As neonize 0.5.2: a still image becomes a square WebP (its
        ``original_sticker`` and Pillow, as neonize does); ``passthrough`` sends a WebP
        as is and refuses anything else with ``ConvertStickerError``."""
        from io import BytesIO

        from neonize.utils.calc import original_sticker

        data = _as_bytes(file)
        if passthrough:
            if sniff_mimetype(data) != "image/webp":
                raise _exc(
                    "ConvertStickerError", "File is not a webp, which is required for passthrough."
                )
        else:
            out = BytesIO()
            original_sticker(BytesIO(data)).save(out, format="webp", save_all=True, loop=0)
            data = out.getvalue()
        up = await self._upload(data)
        part = e2e.StickerMessage(
            mimetype=up["mimetype"], isAnimated=False, **self._media_fields(up)
        )
        return e2e.Message(stickerMessage=part)

    async def download_any(self, message: e2e.Message, path: str | None = None) -> bytes | None:
        part = next((getattr(message, k) for k in MEDIA_KINDS if message.HasField(k)), None)
        if part is None or not part.directPath:
            raise _exc("DownloadError", "no downloadable media in the message")
        answer = await self._request("download", "DownloadError", direct_path=part.directPath)
        data = _unb64(answer["b64"])
        if path:
            with open(path, "wb") as fh:
                fh.write(data)
            return None
        return data

    async def get_profile_picture(self, jid_: ev.JID, *_args: Any) -> ev.ProfilePictureInfo:
        answer = await self._request("picture", "GetProfilePictureError", jid=jid_text(jid_))
        return ev.ProfilePictureInfo(URL=answer["url"], ID=answer["id"], Type="image")

    async def fetch_profile_picture(self, url: str) -> bytes:
        """Stands in for the https download from WhatsApp's picture servers (which
        neonize leaves to the caller): the engine uses it when the client has it."""
        answer = await self._request("picture_download", "DownloadError", url=url)
        return _unb64(answer["b64"])

    async def mark_read(
        self, *message_ids: str, chat: ev.JID, sender: ev.JID, receipt: Any, **_kw: Any
    ) -> None:
        await self._request(
            "mark_read",
            "MarkReadError",
            ids=list(message_ids),
            chat=jid_text(chat),
            sender=jid_text(sender),
        )

    async def get_chat_settings(self, user: ev.JID) -> ev.LocalChatSettings:
        answer = await self._request("chat_settings", "GetChatSettingsError", jid=jid_text(user))
        if not answer["found"]:  # whatsmeow's zero LocalChatSettings, as neonize converts it
            return ev.LocalChatSettings(
                Found=False, MutedUntil=-62135596800, Pinned=False, Archived=False
            )
        muted = answer["muted_until"]
        return ev.LocalChatSettings(
            Found=True,
            MutedUntil=float(muted if muted else -62135596800),
            Pinned=answer["pinned"],
            Archived=answer["archived"],
        )

    async def send_app_state(self, patch_info: ev.PatchInfo) -> None:
        await self._request(
            "app_state", "SendAppStateError", b64=_b64(patch_info.SerializeToString())
        )

    async def update_blocklist(self, jid_: ev.JID, action: Any) -> ev.Blocklist:
        answer = await self._request(
            "blocklist",
            "UpdateBlocklistError",
            jid=jid_text(jid_),
            action=str(getattr(action, "value", action)),
        )
        return complete(ev.Blocklist(JIDs=[jid(j) for j in answer["jids"]]))

    async def send_chat_presence(self, jid_: ev.JID, state: Any, media: Any) -> None:
        await self._request(
            "chat_presence",
            "SendPresenceError",
            chat=jid_text(jid_),
            state=int(getattr(state, "value", state)),
            media=int(getattr(media, "value", media)),
        )

    async def logout(self) -> None:
        await self._request("logout", "LogoutError")
        self._expect_close = True
        self._forget_device()


def _go_call() -> None:
    """Where neonize would run Go code (a thread of the loop's default executor)."""


def _as_bytes(file: bytes | str) -> bytes:
    if isinstance(file, bytes):
        return file
    with open(file, "rb") as fh:
        return fh.read()


def _exc(kind: str, message: str) -> Exception:
    """neonize's exception class of that name (NeonizeError if there is none)."""
    from neonize import exc as neonize_exc

    cls = getattr(neonize_exc, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = neonize_exc.NeonizeError
    return cls(message)
