"""JSON-RPC 2.0 frames between API processes and the worker.

Transport: a Unix stream socket, one JSON object per line (UTF-8, ``\\n``-terminated).
Every frame carries a ``meta`` member with the HTTP request id and the W3C
``traceparent`` of the caller (an extension member; JSON-RPC 2.0 ignores it)::

    -> {"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {},
        "meta": {"request_id": "4bf9...", "traceparent": "00-...-...-01"}}
    <- {"jsonrpc": "2.0", "id": 7, "result": {"pong": true, "pid": 812},
        "meta": {"request_id": "4bf9...", "traceparent": "00-...-...-01"}}

Notifications (no ``id``) flow from the worker to subscribed clients::

    <- {"jsonrpc": "2.0", "method": "event", "params": {...}, "meta": {...}}

Methods, their parameter and result models, are listed in ``METHODS``.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

MAX_FRAME_BYTES = 4 * 1024 * 1024

# Standard JSON-RPC 2.0 error codes, plus one server-defined code.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SHUTTING_DOWN = -32000
REFUSED = -32001  # the method refused the request; data.http_status says how to answer


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PingParams(_Model):
    pass


class PingResult(_Model):
    pong: bool
    pid: int


class StatusParams(_Model):
    pass


class QueueCounts(_Model):
    queued: int
    leased: int
    done: int
    dead: int


class StatusResult(_Model):
    pid: int
    role: str
    started_at: float
    uptime_s: float
    schema_version: int
    connections: int
    subscribers: int
    draining: bool
    queues: dict[str, QueueCounts]


class SubscribeParams(_Model):
    topics: list[str]


class SubscribeResult(_Model):
    subscribed: list[str]


class PokeParams(_Model):
    """Wake the worker: new durable work is waiting (the API never waits for it)."""

    topic: Literal["send", "accounts", "sandbox_inbox", "webhooks"]
    account_id: str | None = None


class PokeResult(_Model):
    ok: bool


class SandboxLoadParams(_Model):
    account_id: str
    rate_per_s: float = Field(gt=0, le=20_000)
    duration_s: float = Field(gt=0, le=600)


class SandboxLoadResult(_Model):
    started: bool


class SandboxStatsParams(_Model):
    account_id: str


class SandboxStatsResult(_Model):
    load_injected: int
    load_committed: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_max: float | None
    running: bool


class WebQrParams(_Model):
    account_id: str
    format: Literal["raw", "png", "svg"] = "png"


class WebQrResult(_Model):
    qr: str  # the raw string, or base64 of the PNG / SVG


class WebPairParams(_Model):
    account_id: str
    phone: str = Field(pattern=r"^\+[1-9][0-9]{6,14}$")


class WebPairResult(_Model):
    code: str


METHODS: dict[str, tuple[type[_Model], type[_Model]]] = {
    "ping": (PingParams, PingResult),
    "status": (StatusParams, StatusResult),
    "subscribe": (SubscribeParams, SubscribeResult),
    "poke": (PokeParams, PokeResult),
    "sandbox.load": (SandboxLoadParams, SandboxLoadResult),
    "sandbox.stats": (SandboxStatsParams, SandboxStatsResult),
    "web.qr": (WebQrParams, WebQrResult),
    "web.pair": (WebPairParams, WebPairResult),
}

# Notifications the worker publishes (method name = topic):
#   "events": {"last_id": N}  new rows in the event log, up to id N


def encode(frame: dict[str, Any]) -> bytes:
    return orjson.dumps(frame) + b"\n"


def decode(line: bytes) -> Any:
    return orjson.loads(line)


def request(id_: int, method: str, params: dict[str, Any], meta: dict[str, str | None]) -> bytes:
    return encode({"jsonrpc": "2.0", "id": id_, "method": method, "params": params, "meta": meta})


def result(id_: Any, value: Any, meta: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "id": id_, "result": value, "meta": meta})


def error(id_: Any, code: int, message: str, meta: dict[str, Any], data: Any = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return encode({"jsonrpc": "2.0", "id": id_, "error": err, "meta": meta})


def notification(method: str, params: Any, meta: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "method": method, "params": params, "meta": meta})
