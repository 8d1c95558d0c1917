"""Tracing across processes: a real installation exports its spans over OTLP/HTTP to a
fake collector on 127.0.0.1 (this test decodes the protobuf with opentelemetry-proto).

- One send is one trace: the API process's HTTP span, the worker's claim, send and
  engine call, the receipts, and every webhook delivery of the events they wrote, each
  span the child of the one that caused it; the webhook's ``traceparent`` header names
  the delivery span.
- One simulated inbound message (sandbox engine) is one trace: its receipt by the
  worker, the commit, the pipeline task, the automation (an auto-reply), the reply's
  send, and the deliveries of both messages' events.
- A user script triggered by an inbound message joins that message's trace across three
  processes: the worker's automation step, the ``script.run`` span of the scripts
  process, its ``host <fn>`` spans, and under the ``host reply`` span the worker's send,
  the engine call and the webhook deliveries of what the script wrote.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.integration.conftest import Appliance, bearer, free_port, new_api_key, running_appliance

pytestmark = pytest.mark.integration

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    name: str
    role: str  # the process that made it: api, worker, ...
    pid_instance: str
    attributes: dict[str, Any]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class Collector:
    """A fake OTLP/HTTP trace collector: POST /v1/traces, protobuf bodies."""

    port: int = field(default_factory=free_port)
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def add(self, request: ExportTraceServiceRequest) -> None:
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    got.append(
                        Span(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            role=str(resource.get("appliance.role", "")),
                            pid_instance=str(resource.get("service.instance.id", "")),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self.lock:
            self.spans.extend(got)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@dataclass
class Hook:
    """A webhook receiver on 127.0.0.1 that keeps each delivery's traceparent."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, str]] = field(default_factory=list)  # (webhook-id, traceparent)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook.lock:
                    hook.received.append(
                        (self.headers.get("webhook-id", ""), self.headers.get("traceparent", ""))
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def traceparents(self) -> list[str]:
        with self.lock:
            return [t for _, t in self.received]


def _wait(check: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    h = Hook()
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Appliance]:
    env = (
        "WEBHOOK_ALLOW_NETWORKS=127.0.0.1/32\n"
        "OTEL_TRACES_EXPORTER=otlp\n"
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf\n"
        f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={collector.endpoint}\n"
        "OTEL_BSP_SCHEDULE_DELAY=100\n"
        "OTEL_SERVICE_NAME=appliance-test\n"
    )
    with running_appliance(tmp_path_factory, "trc", env) as app:
        yield app


@pytest.fixture(scope="module")
def admin(traced: Appliance, hook: Hook) -> Iterator[httpx.Client]:
    with bearer(traced, new_api_key(traced, "trace-admin", "admin")) as c:
        created = c.post(
            "/api/accounts", json={"id": "trc", "name": "trc", "engine_settings": FAST_SANDBOX}
        )
        assert created.status_code == 201, created.text
        _wait(
            lambda: _query(
                traced, "SELECT 1 FROM accounts WHERE id = 'trc' AND state = 'connected'"
            ),
            60,
            "the account connected",
        )
        hooked = c.post("/api/webhooks", json={"url": f"http://127.0.0.1:{hook.port}/hook"})
        assert hooked.status_code == 201, hooked.text
        yield c


def _one(spans: list[Span], name: str, **attributes: Any) -> Span:
    found = [
        s
        for s in spans
        if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in spans])
    return found[0]


def _deliveries(spans: list[Span], event_type: str) -> list[Span]:
    return [
        s
        for s in spans
        if s.name == "webhook.deliver" and s.attributes.get("appliance.event_type") == event_type
    ]


def _orphans(spans: list[Span]) -> list[tuple[str, str]]:
    """Spans whose parent is not (yet) among ``spans``. Each process exports on its own
    schedule and a parent ends after its children, so a trace is complete only once
    this is empty: a webhook delivery can reach the collector before the worker's span
    that wrote its event."""
    ids = {s.span_id for s in spans}
    return [(s.name, s.parent_id) for s in spans if s.parent_id and s.parent_id not in ids]


def _assert_one_tree(spans: list[Span]) -> Span:
    """Every span's parent is in the trace, but the root's: one trace, no orphans."""
    roots = [s for s in spans if not s.parent_id]
    assert len(roots) == 1, [(s.name, s.role) for s in roots]
    orphans = _orphans(spans)
    assert not orphans, orphans
    return roots[0]


def test_one_send_is_one_trace_across_api_worker_and_webhooks(
    traced: Appliance, admin: httpx.Client, collector: Collector, hook: Hook
) -> None:
    response = admin.post(
        "/api/accounts/trc/messages",
        json={"to": "+905551112233", "type": "text", "text": {"body": "traced"}},
    )
    assert response.status_code == 202, response.text
    message_id = response.json()["id"]
    trace_id = response.headers["traceparent"].split("-")[1]

    def complete() -> list[Span] | None:
        spans = collector.trace(trace_id)
        names = {s.name for s in spans}
        want = {"send", "engine.send", "claim send", "receipt"}
        if not want <= names:
            return None
        delivered = {
            s.attributes.get("appliance.event_type") for s in spans if s.name == "webhook.deliver"
        }
        if not {"message.sent", "message.delivered", "message.read"} <= delivered:
            return None
        return None if _orphans(spans) else spans

    spans = _wait(complete, 90, "the send's trace with its deliveries")
    by_id = {s.span_id: s for s in spans}
    http = _assert_one_tree(spans)
    assert http.role == "api" and http.name == "POST /api/accounts/<account>/messages"
    assert {s.role for s in spans} >= {"api", "worker"}  # two processes, one trace

    send = _one(spans, "send", **{"appliance.message_id": message_id})
    assert send.role == "worker" and send.parent_id == http.span_id
    claim = _one(spans, "claim send")
    assert claim.role == "worker" and claim.parent_id == http.span_id
    engine = _one(spans, "engine.send")
    assert engine.parent_id == send.span_id
    # The IPC poke: the API's client span, the worker's handler under it.
    pokes = [s for s in spans if s.name.startswith("ipc ") and s.role == "api"]
    assert pokes and all(p.parent_id == http.span_id for p in pokes)
    handlers = [s for s in spans if s.name.startswith("rpc ") and s.role == "worker"]
    assert handlers and all(by_id[h.parent_id] in pokes for h in handlers)
    # Receipts join the send's trace; each event's deliveries are children of the span
    # that wrote the event.
    receipts = [s for s in spans if s.name == "receipt"]
    assert {r.attributes["appliance.status"] for r in receipts} >= {"delivered", "read"}
    assert all(r.parent_id == send.span_id for r in receipts)
    (sent,) = _deliveries(spans, "message.sent")
    # Deliveries run in the webhooks process, under the span that wrote the event.
    assert sent.parent_id == send.span_id and sent.role == "webhooks"
    for event_type in ("message.delivered", "message.read"):
        (delivery,) = _deliveries(spans, event_type)
        assert by_id[delivery.parent_id].name == "receipt"
    # The receiver saw the delivery spans as the traceparent of its requests.
    delivery_ids = {s.span_id for s in spans if s.name == "webhook.deliver"}
    headers = [t for t in hook.traceparents() if t.split("-")[1] == trace_id]
    assert {t.split("-")[2] for t in headers} == delivery_ids


def test_one_inbound_message_is_one_trace_through_automations_and_webhooks(
    traced: Appliance, admin: httpx.Client, collector: Collector, hook: Hook
) -> None:
    rule = admin.post(
        "/api/accounts/trc/auto-replies",
        json={
            "name": "trace",
            "match_type": "contains",
            "pattern": "tracing",
            "actions": [{"type": "reply", "text": "traced reply"}],
        },
    )
    assert rule.status_code == 201, rule.text
    body = {"from": "+905551112244", "id": "TRACEIN1", "type": "text", "text": {"body": "tracing?"}}
    response = admin.post("/api/accounts/trc/sandbox/inbound", json=body)
    assert response.status_code == 202, response.text

    def root() -> Span | None:
        with collector.lock:
            found = [
                s
                for s in collector.spans
                if s.name == "inbound" and s.attributes.get("appliance.message_id") == "TRACEIN1"
            ]
        return found[0] if found else None

    inbound = _wait(root, 60, "the inbound message's span")
    assert inbound.role == "worker" and inbound.parent_id == ""

    def complete() -> list[Span] | None:
        spans = collector.trace(inbound.trace_id)
        names = {s.name for s in spans}
        want = {"inbound.commit", "pipeline mark_as_read", "claim automation", "automation"}
        want |= {"automation auto_replies", "send", "engine.send"}
        delivered = {
            s.attributes.get("appliance.event_type") for s in spans if s.name == "webhook.deliver"
        }
        if want <= names and {"message.received", "message.sent"} <= delivered:
            return None if _orphans(spans) else spans
        return None

    spans = _wait(complete, 90, "the inbound message's trace")
    by_id = {s.span_id: s for s in spans}
    assert _assert_one_tree(spans) == inbound
    assert _one(spans, "inbound.commit").parent_id == inbound.span_id
    assert _one(spans, "pipeline mark_as_read").parent_id == inbound.span_id
    assert _one(spans, "claim automation").parent_id == inbound.span_id
    automation = _one(spans, "automation")
    assert automation.parent_id == inbound.span_id
    step = _one(spans, "automation auto_replies")
    assert step.parent_id == automation.span_id
    reply = _one(spans, "send")
    assert reply.parent_id == step.span_id  # the auto-reply's send continues the trace
    assert _one(spans, "engine.send").parent_id == reply.span_id
    (received,) = _deliveries(spans, "message.received")
    assert received.parent_id == inbound.span_id
    sent = _deliveries(spans, "message.sent")
    assert sent and all(by_id[s.parent_id] == reply for s in sent)
    headers = [t for t in hook.traceparents() if t.split("-")[1] == inbound.trace_id]
    assert received.span_id in {t.split("-")[2] for t in headers}


def _chain(span: Span, by_id: dict[str, Span]) -> list[Span]:
    """The span and its ancestors, up to the root."""
    chain = [span]
    while chain[-1].parent_id:
        chain.append(by_id[chain[-1].parent_id])
    return chain


def test_a_script_run_joins_the_inbound_trace_across_worker_and_scripts_processes(
    traced: Appliance, admin: httpx.Client, collector: Collector, hook: Hook
) -> None:
    created = admin.post(
        "/api/accounts/trc/scripts",
        json={
            "name": "traced script",
            "filter": {"contains": "run my script"},
            "code": "await storage.set('seen', message.body); await reply('scripted reply');",
        },
    )
    assert created.status_code == 201, created.text
    body = {
        "from": "+905551112255",
        "id": "TRACESCR1",
        "type": "text",
        "text": {"body": "please run my script"},
    }
    response = admin.post("/api/accounts/trc/sandbox/inbound", json=body)
    assert response.status_code == 202, response.text

    def root() -> Span | None:
        with collector.lock:
            found = [
                s
                for s in collector.spans
                if s.name == "inbound" and s.attributes.get("appliance.message_id") == "TRACESCR1"
            ]
        return found[0] if found else None

    inbound = _wait(root, 90, "the inbound message's span")

    def complete() -> list[Span] | None:
        spans = collector.trace(inbound.trace_id)
        names = {s.name for s in spans}
        want = {"automation", "automation scripts", "script.run", "host storage.set"}
        want |= {"host reply", "send", "engine.send"}
        delivered = {
            s.attributes.get("appliance.event_type") for s in spans if s.name == "webhook.deliver"
        }
        if not (want <= names and {"message.received", "message.sent"} <= delivered):
            return None
        return None if _orphans(spans) else spans

    spans = _wait(complete, 120, "the script's spans in the inbound message's trace")
    by_id = {s.span_id: s for s in spans}
    assert _assert_one_tree(spans) == inbound and inbound.role == "worker"
    # The scripts process's run span, child of the worker's scripts step.
    run = _one(spans, "script.run", **{"appliance.script_id": created.json()["id"]})
    assert run.role == "scripts"
    assert run.attributes.get("appliance.outcome") == "ok"
    parent = by_id[run.parent_id]
    assert parent.role == "worker"
    assert "automation scripts" in [s.name for s in _chain(parent, by_id)]
    assert _chain(run, by_id)[-1] == inbound
    # Each host call is a span of the scripts process inside the run.
    for fn in ("storage.set", "reply"):
        call = _one(spans, f"host {fn}")
        assert call.role == "scripts" and call.parent_id == run.span_id
    host_reply = _one(spans, "host reply")
    # What the worker did for the reply: the send, its engine call and its delivery.
    send = _one(spans, "send")
    assert send.role == "worker" and send.parent_id == host_reply.span_id
    assert _one(spans, "engine.send").parent_id == send.span_id
    sent = _deliveries(spans, "message.sent")
    assert sent and all(by_id[s.parent_id] == send for s in sent)
    (received,) = _deliveries(spans, "message.received")
    assert received.parent_id == inbound.span_id
    # Three processes, one trace; the receiver saw the delivery spans' traceparents.
    assert {s.role for s in spans} >= {"worker", "scripts"}
    assert run.pid_instance != inbound.pid_instance
    headers = [t for t in hook.traceparents() if t.split("-")[1] == inbound.trace_id]
    assert {s.span_id for s in sent} <= {t.split("-")[2] for t in headers}
