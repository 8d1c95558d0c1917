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
request's traceparent) name it as the parent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from appliance.observability.context import child_traceparent, traceparent_var

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

Kind = Literal["internal", "server", "client", "producer", "consumer"]

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
