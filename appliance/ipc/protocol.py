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

Methods, their parameter and result models, are listed in ``METHODS``. Each parameter
model is a ``Request[Result]``: its class names the method and the type of the answer,
so ``await client.call(WebQrParams(account_id="a1"))`` is typed ``WebQrResult``.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

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


ResultT = TypeVar("ResultT", bound=_Model)


class Request(_Model, Generic[ResultT]):
    """The parameters of one method; the type argument is the model of its result."""


# Field types shared with the HTTP API's request models, declared once here.
QrFormat = Literal["png", "svg", "raw"]
E164 = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$")]
MAX_LOAD_RATE_PER_S = 20_000  # sandbox load mode: generated messages per second
MAX_LOAD_DURATION_S = 600


class PingResult(_Model):
    pong: bool
    pid: int
    # The webhooks process's pid(s): the connections subscribed to "webhooks" (only the
    # webhooks process subscribes to it); empty while none is connected. /readyz's
    # ``webhooks`` check.
    webhooks_pids: list[int] = []
    # Of those, the ones not heard from within WEBHOOKS_SILENT_AFTER_S (the process sends a
    # ``ping`` notification every second while its event loop runs): connected but hung.
    webhooks_silent_pids: list[int] = []


class PingParams(Request[PingResult]):
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


class StatusParams(Request[StatusResult]):
    pass


class SubscribeResult(_Model):
    subscribed: list[str]


class SubscribeParams(Request[SubscribeResult]):
    topics: list[str]


class PokeResult(_Model):
    ok: bool


# "events": an API process appended events (contacts); the worker announces them.
# "schedules": a schedule was created or changed; the scheduler looks again.
# "inbox": a snooze was set or changed; the inbox timer looks again.
# "actions": an action that reaches WhatsApp was queued (appliance/messaging/actions.py).
PokeTopic = Literal[
    "send", "accounts", "sandbox_inbox", "webhooks", "events", "schedules", "inbox", "actions"
]


class PokeParams(Request[PokeResult]):
    """Wake the worker: new durable work is waiting (the API never waits for it)."""

    topic: PokeTopic
    account_id: str | None = None


class SandboxLoadResult(_Model):
    started: bool


class SandboxLoadParams(Request[SandboxLoadResult]):
    account_id: str
    rate_per_s: float = Field(gt=0, le=MAX_LOAD_RATE_PER_S)
    duration_s: float = Field(gt=0, le=MAX_LOAD_DURATION_S)


class SandboxStatsResult(_Model):
    load_injected: int
    load_committed: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_max: float | None
    running: bool


class SandboxStatsParams(Request[SandboxStatsResult]):
    account_id: str


class WebQrResult(_Model):
    qr: str  # the raw string, or base64 of the PNG / SVG


class WebQrParams(Request[WebQrResult]):
    account_id: str
    format: QrFormat = "png"


class WebPairResult(_Model):
    code: str = Field(description="Type it on the phone: Linked devices > Link with phone number")


class WebPairParams(Request[WebPairResult]):
    account_id: str
    phone: E164


class ScriptRunResult(_Model):
    run: dict[str, Any]  # automations.scripts_models.ScriptRunOut


class ScriptRunParams(Request[ScriptRunResult]):
    """Run a script now (manual trigger), or dry-run it: effects recorded, not done."""

    account_id: str
    script_id: str
    dry_run: bool = False
    message: dict[str, Any] | None = None  # automations.scripts_models.SampleMessage


class RetentionRunResult(_Model):
    started: bool  # False: a pass was already running (run_id is that one)
    run_id: int | None


class RetentionRunParams(Request[RetentionRunResult]):
    """Start a retention pass now (it runs in the background; see retention_runs)."""


class ContactBlockResult(_Model):
    blocked: bool


class ContactBlockParams(Request[ContactBlockResult]):
    """Block or unblock a contact at WhatsApp (engines with ``block_contacts``)."""

    account_id: str
    jid: str
    blocked: bool
    actor: str | None = None  # who asked ('user:3'), for the contact.updated event
    actor_name: str | None = None


class ChatMarkReadResult(_Model):
    marked: int = Field(description="Messages the engine was asked to mark read")


class ChatMarkReadParams(Request[ChatMarkReadResult]):
    """Tell WhatsApp that messages of a chat were read (team inbox: a user read it)."""

    account_id: str
    chat_id: str
    message_ids: list[str] = Field(max_length=100)


class PictureResult(_Model):
    state: Literal["ok", "none", "hidden"]
    media_id: str | None = None
    checked_at: float


class PictureParams(Request[PictureResult]):
    """A contact's or group's profile picture: the stored answer, or WhatsApp asked
    (lazily, then after the refresh age) and the picture put in the media store."""

    account_id: str
    jid: str
    refresh: bool = False


METHODS: dict[str, tuple[type[Request[Any]], type[_Model]]] = {
    "ping": (PingParams, PingResult),
    "status": (StatusParams, StatusResult),
    "subscribe": (SubscribeParams, SubscribeResult),
    "poke": (PokeParams, PokeResult),
    "sandbox.load": (SandboxLoadParams, SandboxLoadResult),
    "sandbox.stats": (SandboxStatsParams, SandboxStatsResult),
    "web.qr": (WebQrParams, WebQrResult),
    "web.pair": (WebPairParams, WebPairResult),
    "scripts.run": (ScriptRunParams, ScriptRunResult),
    "retention.run": (RetentionRunParams, RetentionRunResult),
    "contacts.block": (ContactBlockParams, ContactBlockResult),
    "chat.mark_read": (ChatMarkReadParams, ChatMarkReadResult),
    "pictures.get": (PictureParams, PictureResult),
}


def result_model_of(params: type[Request[Any]]) -> type[_Model] | None:
    """The type argument of the ``Request[...]`` that ``params`` derives from."""
    for base in params.__mro__:
        args = base.__pydantic_generic_metadata__["args"] if issubclass(base, BaseModel) else ()
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], _Model):
            return args[0]
    return None


# The method a parameter model calls; each entry's result model is its type argument.
METHOD_OF: dict[type[Request[Any]], str] = {}
for _name, (_params, _result) in METHODS.items():
    if result_model_of(_params) is not _result:
        raise TypeError(
            f"METHODS[{_name!r}]: {_params.__name__} is not Request[{_result.__name__}]"
        )
    METHOD_OF[_params] = _name

# Notifications the worker publishes (method name = topic):
#   "events": {"last_id": N}  new rows in the event log, up to id N
#   "webhooks": {}            endpoints changed or deliveries were replayed (the API's
#                             poke "webhooks", for the webhooks process)


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
