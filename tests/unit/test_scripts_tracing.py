"""Spans of the scripts process (appliance/scripting/main.py): with tracing on, a run
is a ``script.run`` span, child of the worker's span named in the run's frame, and each
host call a ``host <fn>`` span inside it whose traceparent reaches the worker with the
call (so what the worker writes for it joins the trace). Real V8 child, real socket."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from appliance.ipc.scripts_client import ScriptsClient
from appliance.ipc.scripts_protocol import HostCallParams, HostCallResult, Limits, RunParams
from appliance.observability import tracing
from appliance.observability.context import traceparent_var
from appliance.scripting.main import ScriptsServer
from appliance.scripting.pool import ChildPool


@pytest.fixture
def exporter() -> Any:
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("test", exporter=exporter)
    yield exporter
    tracing.shutdown_tracing()


def _span_id(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


def _run_script(code: str, seen: list[tuple[str, str | None]]) -> Any:
    async def host(call: HostCallParams) -> HostCallResult:
        seen.append((call.fn, traceparent_var.get()))
        return HostCallResult(value={"id": "m1"} if call.fn == "reply" else None)

    async def main() -> Any:
        # A short path: Unix socket paths are limited to about 100 bytes.
        with tempfile.TemporaryDirectory(prefix="scr") as tmp:
            socket = Path(tmp) / "s.sock"
            server = ScriptsServer(socket, ChildPool(1, memory_mb=768))
            await server.start()
            client = ScriptsClient(socket, host)
            await client.start()
            try:
                assert await client.wait_connected(30)
                with tracing.span("pipeline script") as worker_span:
                    params = RunParams(
                        run_id="run_1",
                        script_id="scr_1",
                        code=code,
                        trigger={"id": "m0", "chat_id": "1@s.whatsapp.net", "body": "hi"},
                        limits=Limits(wall_s=10.0, cpu_s=5.0, heap_mb=32),
                    )
                    result = await client.run(params, timeout_s=60)
                return result, worker_span
            finally:
                await client.stop()
                await server.stop()

    return asyncio.run(main())


def test_a_run_and_its_host_calls_are_spans_in_the_workers_trace(
    exporter: InMemorySpanExporter,
) -> None:
    seen: list[tuple[str, str | None]] = []
    result, worker_span = _run_script("await storage.set('k', 1); await reply('pong');", seen)
    assert result.outcome == "ok", result
    assert worker_span is not None
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run = spans["script.run"]
    worker = worker_span.get_span_context()
    assert run.context.trace_id == worker.trace_id
    assert run.parent is not None and run.parent.span_id == worker.span_id
    assert run.attributes["appliance.script_id"] == "scr_1"
    assert run.attributes["appliance.outcome"] == "ok"
    for fn in ("storage.set", "reply"):
        call = spans[f"host {fn}"]
        assert call.context.trace_id == worker.trace_id
        assert call.parent is not None and call.parent.span_id == run.context.span_id
        # The worker handled the call in the host call's span.
        traceparent = dict(seen)[fn]
        assert traceparent is not None and _span_id(traceparent) == call.context.span_id


def test_a_failed_run_is_an_error_span(exporter: InMemorySpanExporter) -> None:
    result, _ = _run_script("throw new Error('boom');", [])
    assert result.outcome == "error"
    run = next(s for s in exporter.get_finished_spans() if s.name == "script.run")
    assert run.attributes["appliance.outcome"] == "error"
    assert not run.status.is_ok


def test_off_a_run_makes_no_spans() -> None:
    assert not tracing.enabled()
    seen: list[tuple[str, str | None]] = []
    result, worker_span = _run_script("await reply('pong');", seen)
    assert result.outcome == "ok" and worker_span is None
    assert seen == [("reply", None)]
