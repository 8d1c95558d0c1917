"""OpenTelemetry tracing, off by default.

On with the standard variables, in appliance.env or the environment (the environment
wins): ``OTEL_TRACES_EXPORTER=otlp`` (OTLP over HTTP/protobuf to
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or ``console``;
``OTEL_SERVICE_NAME`` (default ``appliance``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` as the SDK reads them. ``OTEL_SDK_DISABLED=true``
or no exporter (the default ``none``) keeps it off: then ``span`` does nothing but
return, and the trace context keeps travelling as before (``traceparent`` in logs, IPC
frames and webhook headers).

Spans carry the W3C ``traceparent`` across processes: each span sets
``observability.context.traceparent_var`` to its own while it is open, so IPC frames
(appliance/ipc/client.py), logs and jobs stored for later (a send's job keeps the
request's traceparent) name it as the parent. Through the worker (the helpers at the
end): events keep the traceparent of the span that wrote them (``stored_traceparent``;
``carry`` takes it through the group commit), and their webhook deliveries are its
children; an inbound commit starts one trace per message (``per_item``); receipts find
their send's trace (``remember``/``recall``); a claim shows in each job's trace
(``record_claims``). runbook/operations.md draws the resulting traces.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from appliance.observability.context import child_traceparent, traceparent_var

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

Kind = Literal["internal", "server", "client", "producer", "consumer"]
Attributes = Mapping[str, str | int | float | bool]
A = TypeVar("A")
T = TypeVar("T")

_tracer: Tracer | None = None
_provider: Any = None


def enabled() -> bool:
    return _tracer is not None


def otel_environ(env_file: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OTEL_* variables: appliance.env's, overridden by the environment's."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.exists():
        from dotenv import dotenv_values

        for key, value in dotenv_values(env_file).items():
            if key.startswith("OTEL_") and value is not None:
                values[key] = value
    for key, value in (os.environ if environ is None else environ).items():
        if key.startswith("OTEL_"):
            values[key] = value
    return values


def setup_tracing(
    role: str,
    *,
    env_file: Path | None = None,
    exporter: SpanExporter | None = None,
) -> bool:
    """Install the tracer of this process when tracing is on; True when it is.

    ``exporter`` (tests): export every span to it, synchronously, whatever OTEL_* say."""
    global _tracer, _provider
    otel = otel_environ(env_file)
    choice = otel.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    disabled = otel.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if exporter is None and (disabled or choice in ("", "none")):
        return False
    # The SDK reads its settings from os.environ: hand appliance.env's to it.
    for key, value in otel.items():
        os.environ.setdefault(key, value)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = Resource.create(
        {
            "service.name": otel.get("OTEL_SERVICE_NAME", "appliance"),
            "service.instance.id": f"{role}-{os.getpid()}",
            "appliance.role": role,
        }
    )
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif choice == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:  # otlp
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("appliance")
    return True


def shutdown_tracing() -> None:
    """Flush and stop (at process exit; tests)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None
    _links.clear()


def _context_of(traceparent: str | None) -> Any:
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def traceparent_of(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def start_span(
    name: str,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
    start_ns: int | None = None,
) -> Span | None:
    """Start a span (None when tracing is off) whose parent is ``parent`` or the current
    ``traceparent_var``; the caller ends it. ``span`` is the usual way."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    return _tracer.start_span(
        name,
        context=_context_of(parent if parent is not None else traceparent_var.get()),
        kind=getattr(SpanKind, kind.upper()),
        attributes=dict(attributes or {}),
        start_time=start_ns,
    )


_OFF: AbstractContextManager[None] = nullcontext()


def span(
    name: str,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> AbstractContextManager[Span | None]:
    """A span around the block; ``traceparent_var`` names it meanwhile. Off: a shared
    do-nothing context (no generator, no allocation)."""
    if _tracer is None:
        return _OFF
    return _span(name, parent=parent, kind=kind, attributes=attributes)


@contextmanager
def _span(
    name: str,
    *,
    parent: str | None,
    kind: Kind,
    attributes: Mapping[str, str | int | float | bool] | None,
) -> Iterator[Span | None]:
    started = start_span(name, parent=parent, kind=kind, attributes=attributes)
    if started is None:
        yield None
        return
    token = traceparent_var.set(traceparent_of(started))
    try:
        yield started
    except BaseException as exc:
        from opentelemetry.trace import Status, StatusCode

        started.record_exception(exc)
        started.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        traceparent_var.reset(token)
        started.end()


def outgoing_traceparent() -> str:
    """The traceparent to send to another process: the open span's when tracing is on
    (it is the parent there), else a fresh child id of the current trace, as before."""
    if _tracer is not None and traceparent_var.get():
        return traceparent_var.get() or ""
    return child_traceparent(traceparent_var.get())


# -- carrying the trace through the worker --------------------------------------------------
#
# Everything below does nothing (returns its input, or the shared do-nothing context)
# while tracing is off, so the default code path is the one without tracing.


def within(traceparent: str | None) -> AbstractContextManager[None]:
    """``traceparent_var`` names ``traceparent`` in the block (when tracing is on and it
    is given): events written and spans started there belong to that trace."""
    if _tracer is None or not traceparent:
        return _OFF
    return _within(traceparent)


@contextmanager
def _within(traceparent: str) -> Iterator[None]:
    token = traceparent_var.set(traceparent)
    try:
        yield
    finally:
        traceparent_var.reset(token)


def stored_traceparent() -> str | None:
    """What an event or a queued job keeps of the trace: the open span's traceparent
    while tracing is on, else None (nothing stored)."""
    if _tracer is None:
        return None
    return traceparent_var.get() or None


def carry(work: Callable[[A], Awaitable[T]]) -> Callable[[A], Awaitable[T]]:
    """``work`` run later by another task (the group commit's writer) with the caller's
    traceparent, so the events it writes name the caller's span. Off: ``work`` itself."""
    if _tracer is None:
        return work
    traceparent = traceparent_var.get()
    if not traceparent:
        return work

    async def carried(arg: A) -> T:
        token = traceparent_var.set(traceparent)
        try:
            return await work(arg)
        finally:
            traceparent_var.reset(token)

    return carried


def record_span(
    name: str,
    *,
    parent: str,
    start_ns: int,
    end_ns: int | None = None,
    kind: Kind = "internal",
    attributes: Attributes | None = None,
) -> None:
    """A span that already happened (``start_ns`` to ``end_ns``, default now), child of
    ``parent``: one claim of many jobs becomes a claim span in each job's trace."""
    started = start_span(name, parent=parent, kind=kind, attributes=attributes, start_ns=start_ns)
    if started is not None:
        started.end(end_time=end_ns if end_ns is not None else time.time_ns())


def record_claims(queue: str, payloads: Sequence[Any], start_ns: int) -> None:
    """One claim of jobs, as a ``claim <queue>`` span in the trace of each job whose
    payload keeps a ``traceparent`` (sends, automation triggers)."""
    end_ns = time.time_ns()
    for payload in payloads:
        parent = payload.get("traceparent") if isinstance(payload, dict) else None
        if parent:
            record_span(
                f"claim {queue}",
                parent=parent,
                start_ns=start_ns,
                end_ns=end_ns,
                kind="consumer",
                attributes={"appliance.queue": queue, "appliance.claimed": len(payloads)},
            )


class ItemTraces:
    """The spans of a batch's items (``per_item``), by item key."""

    def __init__(self, spans: Mapping[str, Span] | None = None) -> None:
        self._spans = dict(spans or {})
        self.ids = {key: traceparent_of(s) for key, s in self._spans.items()}
        self._token: Any = None

    def get(self, key: str) -> str | None:
        """The item's traceparent (None when off)."""
        return self.ids.get(key)

    def enter(self, key: str) -> None:
        """``traceparent_var`` names the item's span from now until the batch's block
        ends: what is written for this item next (its events, jobs) joins its trace."""
        traceparent = self.ids.get(key)
        if traceparent is None:
            return
        token = traceparent_var.set(traceparent)
        if self._token is None:
            self._token = token

    def record(self, name: str, start_ns: int, *, kind: Kind = "internal") -> None:
        """A child span of every item, from ``start_ns`` to now (a step they shared)."""
        if not self._spans:
            return
        end_ns = time.time_ns()
        for traceparent in self.ids.values():
            record_span(name, parent=traceparent, start_ns=start_ns, end_ns=end_ns, kind=kind)

    def _close(self, exc: BaseException | None) -> None:
        if self._token is not None:
            traceparent_var.reset(self._token)
            self._token = None
        if exc is not None:
            from opentelemetry.trace import Status, StatusCode

            for s in self._spans.values():
                s.record_exception(exc)
                s.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        for s in self._spans.values():
            s.end()


_NO_ITEMS = ItemTraces()


@contextmanager
def _per_item(
    name: str, items: Sequence[tuple[str, Attributes]], kind: Kind
) -> Iterator[ItemTraces]:
    spans: dict[str, Span] = {}
    for key, attributes in items:
        started = start_span(name, parent="", kind=kind, attributes=attributes)
        if started is not None:
            spans[key] = started
    traces = ItemTraces(spans)
    try:
        yield traces
    except BaseException as exc:
        traces._close(exc)
        raise
    traces._close(None)


def per_item(
    name: str,
    items: Callable[[], Sequence[tuple[str, Attributes]]],
    *,
    kind: Kind = "internal",
) -> AbstractContextManager[ItemTraces]:
    """A new trace for each item of a batch handled together (an inbound commit: one
    trace per message), its root span open around the block. ``items`` (called only
    when tracing is on) gives each item's key and attributes. Off: nothing is made."""
    if _tracer is None:
        return nullcontext(_NO_ITEMS)
    return _per_item(name, items(), kind)


class _Message(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...


def inbound_items(account_id: str, messages: Sequence[_Message]) -> list[tuple[str, Attributes]]:
    """``per_item``'s items for inbound messages: key = message id."""
    return [
        (
            m.id,
            {
                "appliance.account_id": account_id,
                "appliance.message_id": m.id,
                "messaging.type": m.type,
            },
        )
        for m in messages
    ]


# Sends remembered for their receipts: a delivered or read receipt arrives later, from
# the engine's own task, and joins the trace of the send it is about. In memory and
# bounded; past that (after a restart, or after LINKS_KEPT newer sends) the worker reads
# the traceparent the send kept on its message (appliance/messaging/trace_links.py).
LINKS_KEPT = 10_000
_links: OrderedDict[str, str] = OrderedDict()


def remember(key: str) -> None:
    """Keep the open span's traceparent under ``key`` (tracing on)."""
    if _tracer is None:
        return
    traceparent = traceparent_var.get()
    if traceparent:
        _links[key] = traceparent
        _links.move_to_end(key)
        while len(_links) > LINKS_KEPT:
            _links.popitem(last=False)


def recall(key: str) -> str | None:
    """The traceparent kept under ``key``, if any."""
    if _tracer is None:
        return None
    return _links.get(key)


def end_state(span: Span, outcome: str, limit: str | None = None) -> None:
    """Mark a span with a run's outcome (``ok`` or ``error``; the limit it hit)."""
    span.set_attribute("appliance.outcome", outcome)
    if limit:
        span.set_attribute("appliance.limit", limit)
    if outcome != "ok":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, limit or outcome))
