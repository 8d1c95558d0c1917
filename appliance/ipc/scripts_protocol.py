"""JSON-RPC 2.0 between the worker and the scripts process (run/scripts.sock).

The same framing as ``protocol`` (one JSON object per line, ``meta`` with the request
id and ``traceparent``), but both ends call: the worker asks the scripts process to
``run`` a script, and while the run lasts the scripts process asks the worker to carry
out each host API call of that run (``host``) over the same connection. Only the
worker touches the database, the network or WhatsApp; the scripts process has nothing
but this connection.

    worker  -> scripts  {"method": "run",  "params": {run_id, script_id, code, ...}}
    scripts -> worker   {"method": "host", "params": {run_id, n, fn: "send", args}}
    worker  -> scripts  {"result": {"value": {...}}}            (answer to host)
    scripts -> worker   {"result": {outcome, error, logs, ...}} (answer to run)

``Peer`` is the connection object both ends use.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from appliance.ipc import protocol
from appliance.ipc.protocol import Request, _Model
from appliance.observability.context import request_id_var, traceparent_var

log = logging.getLogger(__name__)

MAX_CODE_CHARS = 100_000
HOST_ERROR = -32010  # a host call refused or failed; the message is shown to the script

HostFn = Literal[
    "reply",
    "send",
    "getMessages",
    "storage.get",
    "storage.set",
    "storage.delete",
    "http.fetch",
    "tags.add",
    "tags.remove",
    "chat.setStatus",
    "chat.assign",
]
HOST_FUNCTIONS: tuple[str, ...] = HostFn.__args__  # type: ignore[attr-defined]


class Limits(_Model):
    """What one run may use; hitting one ends the run with ``limit`` set."""

    wall_s: float = Field(default=10.0, gt=0, le=300)
    cpu_s: float = Field(default=2.0, gt=0, le=120)
    heap_mb: int = Field(default=64, ge=8, le=1024)
    max_host_calls: int = Field(default=100, ge=0, le=100_000)
    max_host_call_bytes: int = Field(default=64 * 1024, ge=256, le=4 * 1024 * 1024)
    max_log_lines: int = Field(default=200, ge=0, le=10_000)
    max_log_chars: int = Field(default=2000, ge=10, le=100_000)


class LogLine(_Model):
    level: Literal["log", "info", "warn", "error", "debug", "system"]
    text: str
    t_ms: float


LimitName = Literal["wall", "cpu", "heap", "host_calls", "host_call_size", "crash"]


class RunResult(_Model):
    outcome: Literal["ok", "error"]
    error: str | None = None
    limit: LimitName | None = None  # which limit ended the run, when one did
    logs: list[LogLine] = []
    host_calls: int = 0
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    heap_used_bytes: int | None = None


class RunParams(Request[RunResult]):
    run_id: str
    script_id: str
    code: str = Field(max_length=MAX_CODE_CHARS)
    trigger: dict[str, Any]  # becomes the script's `message` (frozen copy)
    # becomes the script's `trigger`: {type, event?, occurrence?} (frozen copy)
    context: dict[str, Any] = {}
    limits: Limits = Limits()


class HostCallResult(_Model):
    value: Any = None


class HostCallParams(Request[HostCallResult]):
    run_id: str
    n: int = Field(ge=1)  # the call's number within its run, from 1
    fn: HostFn
    args: list[Any] = []


class PingResult(_Model):
    pong: bool
    pid: int
    runs_in_flight: int
    runs_total: int


class PingParams(Request[PingResult]):
    pass


METHODS: dict[str, tuple[type[Request[Any]], type[_Model]]] = {
    "run": (RunParams, RunResult),
    "host": (HostCallParams, HostCallResult),
    "ping": (PingParams, PingResult),
}
METHOD_OF: dict[type[Request[Any]], str] = {p: name for name, (p, _) in METHODS.items()}


class PeerClosed(ConnectionError):
    """The other end went away (killed, restarted) with calls in flight."""


class RemoteError(Exception):
    """The other end answered a call with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HostCallRefused(Exception):
    """Raised by the worker's host API implementation: the script sees this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


Handler = Callable[[Any], Awaitable[BaseModel]]


class Peer:
    """One end of a connection on which both sides call and answer.

    ``serve()`` reads frames until the connection closes; requests run each in a task
    through ``handlers``, answers resolve ``call``. When the connection closes every
    pending call fails with ``PeerClosed``.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handlers: dict[str, Handler],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handlers = handlers
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    async def call(
        self, params: Request[protocol.ResultT], *, timeout_s: float
    ) -> protocol.ResultT:
        method = METHOD_OF[type(params)]
        _, result_model = METHODS[method]
        if self.closed.is_set():
            raise PeerClosed("connection closed")
        id_ = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        meta = {"request_id": request_id_var.get(), "traceparent": traceparent_var.get()}
        try:
            self.writer.write(protocol.request(id_, method, params.model_dump(mode="json"), meta))
            answer = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(id_, None)
        return result_model.model_validate(answer)  # type: ignore[return-value]

    async def serve(self) -> None:
        try:
            while True:
                try:
                    line = await self.reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    log.warning("scripts IPC: frame too large; closing")
                    break
                except ConnectionError:
                    break
                if not line:
                    break
                try:
                    frame = protocol.decode(line)
                except ValueError:
                    continue
                if not isinstance(frame, dict):
                    continue
                if "method" in frame:
                    task = asyncio.create_task(self._dispatch(frame))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    self._answer(frame)
        finally:
            self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(Exception):
            self.writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(PeerClosed("connection closed"))
        self._pending.clear()
        for task in self._tasks:
            task.cancel()

    def _answer(self, frame: dict[str, Any]) -> None:
        future = self._pending.get(frame.get("id"))  # type: ignore[arg-type]
        if future is None or future.done():
            return
        if "error" in frame:
            err = frame["error"] if isinstance(frame["error"], dict) else {}
            future.set_exception(RemoteError(int(err.get("code", 0)), str(err.get("message"))))
        else:
            future.set_result(frame.get("result"))

    def _send(self, frame: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame)

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        id_ = frame.get("id")
        given = frame.get("meta")
        meta: dict[str, Any] = given if isinstance(given, dict) else {}
        request_id_var.set(meta.get("request_id"))
        traceparent_var.set(meta.get("traceparent"))
        method = frame.get("method")
        handler = self.handlers.get(method) if isinstance(method, str) else None
        if handler is None or not isinstance(method, str):
            self._send(
                protocol.error(id_, protocol.METHOD_NOT_FOUND, f"no method {method!r}", meta)
            )
            return
        params_model, _ = METHODS[method]
        try:
            params = params_model.model_validate(frame.get("params") or {})
        except ValidationError as exc:
            message = "invalid params: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]
            )
            self._send(protocol.error(id_, protocol.INVALID_PARAMS, message, meta))
            return
        try:
            value = await handler(params)
        except HostCallRefused as exc:
            self._send(protocol.error(id_, HOST_ERROR, exc.message, meta))
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scripts IPC method failed", extra={"method": method})
            self._send(protocol.error(id_, protocol.INTERNAL_ERROR, "internal error", meta))
            return
        if id_ is not None:
            self._send(protocol.result(id_, value.model_dump(mode="json"), meta))
