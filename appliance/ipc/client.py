"""A persistent JSON-RPC client for API processes, reconnecting with backoff."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from appliance.errors import ClientError, RpcError, WorkerUnavailable, refusal
from appliance.ipc import protocol
from appliance.ipc.reconnect import ReconnectingClient
from appliance.observability import tracing
from appliance.observability.context import (
    child_traceparent,
    request_id_var,
    traceparent_var,
)
from appliance.observability.metrics import IPC_CALLS, IPC_LATENCY

log = logging.getLogger(__name__)

NotificationHandler = Callable[[str, Any, dict[str, Any]], None]


class WorkerClient(ReconnectingClient):
    """One connection to the worker, shared by every request of this process.

    ``call(params)`` sends the method that ``params``' class names in
    ``protocol.METHODS`` and answers its result model. A refusal the worker explains
    (``protocol.REFUSED``) raises the ClientError of its HTTP status (``errors.refusal``);
    other JSON-RPC errors raise RpcError. ``call`` fails fast with WorkerUnavailable when
    there is no connection, so a readiness probe never hangs on a dead worker; a
    background task reconnects with exponential backoff and full jitter.
    """

    task_name = "worker-client"
    lost_message = "lost connection to worker; reconnecting"
    log = log

    def __init__(
        self,
        socket_path: Path,
        *,
        timeout_s: float = 5.0,
        topics: tuple[str, ...] = (),
        on_notification: NotificationHandler | None = None,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 1.0,
    ) -> None:
        super().__init__(socket_path, backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s)
        self.timeout_s = timeout_s
        self.topics = topics
        self.on_notification = on_notification
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None

    async def start(self, wait_s: float = 0.0) -> None:
        self._start_task()
        if wait_s > 0:
            await self.wait_connected(wait_s)

    async def stop(self) -> None:
        await self._stop_task()
        self._fail_pending("client stopped")

    def _close_connection(self) -> None:
        if self._writer is not None:
            self._writer.close()

    async def call(
        self, params: protocol.Request[protocol.ResultT], *, timeout_s: float | None = None
    ) -> protocol.ResultT:
        method = protocol.METHOD_OF[type(params)]
        _, result_model = protocol.METHODS[method]
        start = time.perf_counter()
        outcome = "ok"
        try:
            answer = await self._call(
                method, params.model_dump(mode="json"), timeout_s or self.timeout_s
            )
        except WorkerUnavailable:
            outcome = "unavailable"
            raise
        except (RpcError, ClientError):
            outcome = "error"
            raise
        finally:
            IPC_CALLS.labels(method=method, outcome=outcome).inc()
            IPC_LATENCY.labels(method=method).observe(time.perf_counter() - start)
        # protocol checks at import that result_model is the Request's type argument.
        return cast(protocol.ResultT, result_model.model_validate(answer))

    def notify(self, params: protocol.Request[Any]) -> bool:
        """A JSON-RPC notification (no answer awaited); False when not connected.

        For hints whose loss is harmless, such as "new work is queued": the worker
        also finds the work by polling.
        """
        writer = self._writer
        if writer is None or not self._connected.is_set():
            return False
        method = protocol.METHOD_OF[type(params)]
        with tracing.span(
            f"ipc notify {method}", kind="producer", attributes={"rpc.method": method}
        ):
            meta = {"request_id": request_id_var.get(), "traceparent": traceparent_var.get()}
            writer.write(protocol.notification(method, params.model_dump(mode="json"), meta))
        IPC_CALLS.labels(method=method, outcome="notified").inc()
        return True

    async def ping(self, *, timeout_s: float | None = None) -> protocol.PingResult:
        return await self.call(protocol.PingParams(), timeout_s=timeout_s)

    async def status(self) -> protocol.StatusResult:
        return await self.call(protocol.StatusParams())

    async def _call(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        writer = self._writer
        if writer is None or not self._connected.is_set():
            raise WorkerUnavailable("no connection to the worker")
        id_ = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[id_] = future
        try:
            with tracing.span(f"ipc {method}", kind="client", attributes={"rpc.method": method}):
                meta = {
                    "request_id": request_id_var.get(),
                    "traceparent": traceparent_var.get()
                    if tracing.enabled()
                    else child_traceparent(traceparent_var.get()),
                }
                writer.write(protocol.request(id_, method, params, meta))
                return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise WorkerUnavailable(f"worker did not answer {method!r} in {timeout_s}s") from None
        finally:
            self._pending.pop(id_, None)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        try:
            if self.topics:
                subscribe = protocol.SubscribeParams(topics=list(self.topics))
                writer.write(protocol.request(0, "subscribe", subscribe.model_dump(), {}))
            self._connected.set()
            log.info("connected to worker", extra={"socket": str(self.socket_path)})
            await self._read(reader)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._connected.clear()
            self._writer = None
            writer.close()
            self._fail_pending("connection to the worker closed")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            frame = protocol.decode(line)
            id_ = frame.get("id")
            if id_ is None and "method" in frame:
                if self.on_notification is not None:
                    try:
                        self.on_notification(
                            frame["method"], frame.get("params"), frame.get("meta") or {}
                        )
                    except Exception:
                        log.exception("notification handler failed")
                continue
            future = self._pending.get(id_)
            if future is None or future.done():
                continue  # late answer to a call that timed out, or the subscribe ack
            if "error" in frame:
                err = frame["error"]
                data = err.get("data")
                if err.get("code") == protocol.SHUTTING_DOWN:
                    future.set_exception(WorkerUnavailable(err.get("message", "shutting down")))
                elif err.get("code") == protocol.REFUSED:
                    status = data.get("http_status") if isinstance(data, dict) else None
                    future.set_exception(refusal(status, str(err.get("message"))))
                else:
                    future.set_exception(
                        RpcError(int(err.get("code", 0)), str(err.get("message")), data)
                    )
            else:
                future.set_result(frame.get("result"))

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerUnavailable(reason))
        self._pending.clear()
