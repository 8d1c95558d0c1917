"""The worker's JSON-RPC server on a Unix socket.

The socket is mode 0600 and every connection's peer credentials (SO_PEERCRED) are
checked on accept: only the worker's own user (the API processes, appliancectl after
dropping to the service user) and root are served; anyone else is disconnected at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from appliance.errors import ClientError
from appliance.ipc import protocol
from appliance.observability import tracing
from appliance.observability.context import request_id_var, traceparent_var

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[BaseModel]]

# A subscriber that lets this much output pile up is cut off; it reconnects and
# catches up from durable state instead of slowing the worker.
SUBSCRIBER_BUFFER_LIMIT = 1024 * 1024


def peer_allowed(peer_uid: int, *, server_uid: int) -> bool:
    """Whether a peer with this uid may call the worker: the same user, or root."""
    return peer_uid in (server_uid, 0)


def peer_credentials(sock: socket.socket | None) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def peer_uid(sock: socket.socket | None) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    creds = peer_credentials(sock)
    return None if creds is None else creds[1]


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter, pid: int = 0) -> None:
        self.writer = writer
        self.pid = pid  # the peer's, from SO_PEERCRED (0: not known)
        self.topics: set[str] = set()
        self.last_heard = time.monotonic()  # when its last frame arrived

    def send(self, frame: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame)


class RpcServer:
    def __init__(self, socket_path: Path, *, mode: int = 0o600) -> None:
        self.socket_path = socket_path
        self.mode = mode
        self.server_uid = os.geteuid()
        self.refused_peers = 0
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_Connection] = set()
        self._inflight: set[asyncio.Task[None]] = set()
        self.draining = False
        self.register("subscribe", self._subscribe)

    def register(self, method: str, handler: Handler) -> None:
        if method not in protocol.METHODS:
            raise ValueError(f"method {method!r} is not declared in ipc.protocol.METHODS")
        self._handlers[method] = handler

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def subscriber_count(self) -> int:
        return sum(1 for c in self._connections if c.topics)

    def subscriber_pids(self, topic: str, *, heard_within_s: float | None = None) -> list[int]:
        """The pids of the connected processes subscribed to ``topic`` (a process that
        stopped or died has closed its connection, so it is not among them). With
        ``heard_within_s``, only those that sent a frame that recently: a process whose
        event loop hangs keeps its connection open but goes silent."""
        now = time.monotonic()
        return sorted(
            c.pid
            for c in self._connections
            if topic in c.topics
            and (heard_within_s is None or now - c.last_heard <= heard_within_s)
        )

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.is_socket():
            self.socket_path.unlink()  # left by a killed worker
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=protocol.MAX_FRAME_BYTES
        )
        os.chmod(self.socket_path, self.mode)

    def publish(self, topic: str, params: Any, meta: dict[str, Any] | None = None) -> int:
        """Send a notification to every subscriber of ``topic``; returns how many got it."""
        frame = protocol.notification(topic, params, meta or {})
        sent = 0
        for conn in list(self._connections):
            if topic not in conn.topics:
                continue
            transport = conn.writer.transport
            if transport.get_write_buffer_size() > SUBSCRIBER_BUFFER_LIMIT:
                log.warning("dropping slow IPC subscriber", extra={"topic": topic})
                conn.writer.close()
                continue
            conn.send(frame)
            sent += 1
        return sent

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting connections and requests; wait for in-flight calls."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=timeout_s)
            for task in pending:
                task.cancel()
        for conn in list(self._connections):
            conn.writer.close()
        if self.socket_path.is_socket():
            self.socket_path.unlink()

    async def _subscribe(self, params: protocol.SubscribeParams) -> protocol.SubscribeResult:
        raise AssertionError("handled in _dispatch")  # needs the connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        creds = peer_credentials(writer.get_extra_info("socket"))
        uid = None if creds is None else creds[1]
        if creds is None or not peer_allowed(creds[1], server_uid=self.server_uid):
            self.refused_peers += 1
            log.warning("refused an IPC connection from another user", extra={"peer_uid": uid})
            writer.close()
            return
        conn = _Connection(writer, pid=creds[0])
        self._connections.add(conn)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    conn.send(protocol.error(None, protocol.PARSE_ERROR, "frame too large", {}))
                    break
                except ConnectionError:
                    break
                if not line:
                    break
                conn.last_heard = time.monotonic()
                task = asyncio.create_task(self._dispatch(conn, line))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        finally:
            self._connections.discard(conn)
            writer.close()

    async def _dispatch(self, conn: _Connection, line: bytes) -> None:
        try:
            frame = protocol.decode(line)
        except ValueError:
            conn.send(protocol.error(None, protocol.PARSE_ERROR, "invalid JSON", {}))
            return
        if not isinstance(frame, dict) or frame.get("jsonrpc") != "2.0":
            message = "not a JSON-RPC 2.0 request"
            conn.send(protocol.error(None, protocol.INVALID_REQUEST, message, {}))
            return
        id_ = frame.get("id")
        given_meta = frame.get("meta")
        meta: dict[str, Any] = given_meta if isinstance(given_meta, dict) else {}
        request_id_var.set(meta.get("request_id"))
        traceparent_var.set(meta.get("traceparent"))
        method = frame.get("method")
        if self.draining:
            if id_ is not None:
                message = "worker is shutting down"
                conn.send(protocol.error(id_, protocol.SHUTTING_DOWN, message, meta))
            return
        if method not in self._handlers or not isinstance(method, str):
            if id_ is not None:  # notifications get no answer, not even an error
                conn.send(
                    protocol.error(id_, protocol.METHOD_NOT_FOUND, f"no method {method!r}", meta)
                )
            return
        params_model, _ = protocol.METHODS[method]
        try:
            params = params_model.model_validate(frame.get("params") or {})
        except ValidationError as exc:
            conn.send(
                protocol.error(
                    id_,
                    protocol.INVALID_PARAMS,
                    "invalid params",
                    meta,
                    data=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
                )
            )
            return
        try:
            if isinstance(params, protocol.SubscribeParams):
                conn.topics.update(params.topics)
                value: BaseModel = protocol.SubscribeResult(subscribed=sorted(conn.topics))
            else:
                with tracing.span(
                    f"rpc {method}",
                    parent=meta.get("traceparent") or "",
                    kind="server",
                    attributes={"rpc.method": method},
                ):
                    value = await self._handlers[method](params)
        except ClientError as exc:
            # A refusal the caller should see (e.g. "no such sandbox account").
            conn.send(
                protocol.error(
                    id_, protocol.REFUSED, exc.message, meta, data={"http_status": exc.http_status}
                )
            )
            return
        except Exception:
            log.exception("IPC method failed", extra={"method": method})
            conn.send(protocol.error(id_, protocol.INTERNAL_ERROR, "internal error", meta))
            return
        if id_ is not None:
            conn.send(protocol.result(id_, value.model_dump(mode="json"), meta))
