"""OpenTelemetry tracing: off by default; on, one send is one trace across the API
(HTTP request, IPC poke) and the worker (RPC handler, the send, the engine call).

The API app and a real Worker run in this process over the real Unix socket, with an
in-memory exporter (spans of both sides land in it)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from appliance.api.app import create_app
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.observability import tracing
from appliance.observability.context import traceparent_var
from appliance.secrets import Secrets
from appliance.worker.main import Worker
from tests.unit.conftest import key_owner

SECRETS = Secrets(
    session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
)


def test_off_by_default_and_spans_cost_nothing(tmp_path: Path) -> None:
    env = tmp_path / "appliance.env"
    env.write_text("PORT=8080\n")
    assert tracing.setup_tracing("api", env_file=env) is False
    assert not tracing.enabled()
    token = traceparent_var.set("00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    try:
        with tracing.span("nothing") as span:
            assert span is None
            assert traceparent_var.get() == "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    finally:
        traceparent_var.reset(token)
    # OTEL_* lines in appliance.env are the SDK's, not unknown settings.
    env.write_text("PORT=8080\nOTEL_TRACES_EXPORTER=none\nOTEL_SERVICE_NAME=x\n")
    paths = Paths(tmp_path / "root")
    paths.etc.mkdir(parents=True)
    paths.env_file.write_text(env.read_text())
    assert load_settings(paths, environ={}).port == 8080
    assert tracing.otel_environ(paths.env_file, environ={})["OTEL_SERVICE_NAME"] == "x"
    assert tracing.setup_tracing("api", env_file=paths.env_file) is False


def test_one_send_is_one_trace_across_api_and_worker(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("test", exporter=exporter)
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("SEND_CHAT_INTERVAL_MS=0\n", encoding="utf-8")
    settings = load_settings(paths, environ={})

    async def main() -> None:
        worker = Worker(settings, SECRETS)
        await worker.initialize()
        app = create_app(settings, SECRETS)
        try:
            assert worker.db is not None
            async with worker.db.write() as conn:
                _, key, _ = await auth_store.create_api_key(
                    conn,
                    name="t",
                    role=Role.ADMIN,
                    all_accounts=True,
                    accounts=[],
                    created_by="test",
                    owner_user_id=await key_owner(conn),
                    now=time.time(),
                )
            auth = {"Authorization": f"Bearer {key}"}
            async with app.test_app() as test_app:
                client = test_app.test_client()
                r = await client.post(
                    "/api/accounts",
                    json={"id": "tr", "name": "tr", "engine_settings": {"pairing_delay_ms": 0}},
                    headers=auth,
                )
                assert r.status_code == 201, await r.get_data()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    row = await worker.db.fetchone("SELECT state FROM accounts WHERE id = 'tr'")
                    if row is not None and row["state"] == "connected":
                        break
                    await asyncio.sleep(0.05)
                exporter.clear()
                r = await client.post(
                    "/api/accounts/tr/messages",
                    json={"to": "+905551112233", "type": "text", "text": {"body": "hi"}},
                    headers=auth,
                )
                assert r.status_code == 202, await r.get_data()
                message_id = (await r.get_json())["id"]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if any(s.name == "engine.send" for s in exporter.get_finished_spans()):
                        break
                    await asyncio.sleep(0.05)
        finally:
            worker.request_stop()
            await worker.shutdown()
        spans = {s.name: s for s in exporter.get_finished_spans()}
        http = spans["POST /api/accounts/<account>/messages"]
        send, engine = spans["send"], spans["engine.send"]
        poke = spans["ipc notify poke"]
        handler = spans["rpc poke"]
        assert http.parent is None  # the client sent no traceparent: a new trace
        trace_id = http.context.trace_id
        for s in (send, engine, poke, handler):
            assert s.context.trace_id == trace_id, s.name
        # Correctly parented: request -> poke -> worker's handler; request -> send -> engine.
        assert poke.parent is not None and poke.parent.span_id == http.context.span_id
        assert handler.parent is not None and handler.parent.span_id == poke.context.span_id
        assert send.parent is not None and send.parent.span_id == http.context.span_id
        assert engine.parent is not None and engine.parent.span_id == send.context.span_id
        assert send.attributes is not None
        assert send.attributes["appliance.message_id"] == message_id
        assert http.attributes is not None and http.attributes["http.response.status_code"] == 202

    try:
        asyncio.run(main())
    finally:
        tracing.shutdown_tracing()
