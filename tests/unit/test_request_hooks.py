"""What every HTTP answer gets from the app's per-request machinery, end to end through
the in-process app (Quart's test client speaks ASGI to it, as Hypercorn does): the
request id and trace context, the security and CORS headers, Cache-Control, the
metrics per route and status, the access line, the server span, and 404/405 in the
error shape. Routes that need no database, so no startup is run."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from quart import Quart

from appliance.api.app import create_app
from appliance.config import Paths, load_settings
from appliance.observability import tracing
from appliance.observability.access_log import ACCESS_LOGGER, log_access_to_file
from appliance.secrets import Secrets

SECRETS = Secrets(
    session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
)
HEX32 = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
CALLER = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


def _app(tmp_path: Path, env: str = "") -> Quart:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(env, encoding="utf-8")
    return create_app(load_settings(paths, environ={}), SECRETS)


def _get(app: Quart, path: str, method: str = "GET", **headers: str) -> Any:
    async def go() -> Any:
        client = app.test_client()
        response = await client.open(path, method=method, headers=headers)
        await response.get_data()
        return response

    return asyncio.run(go())


@pytest.fixture
def restore_logging() -> Iterator[None]:
    access = logging.getLogger(ACCESS_LOGGER)
    saved = (access.handlers[:], access.propagate, access.level)
    access.setLevel(logging.INFO)  # as setup_logging leaves it
    yield
    for handler in access.handlers:
        handler.close()
    access.handlers[:], access.propagate, level = saved
    access.setLevel(level)


# -- request id and trace context ----------------------------------------------------------


def test_a_plain_request_id_is_echoed_and_anything_else_replaced(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert (
        _get(app, "/healthz", **{"X-Request-ID": "trace-42.ok"}).headers["X-Request-ID"]
        == "trace-42.ok"
    )
    for sent in ("bad id with spaces", "x" * 200, ""):
        got = _get(app, "/healthz", **{"X-Request-ID": sent}).headers["X-Request-ID"]
        assert HEX32.match(got), (sent, got)
    first = _get(app, "/healthz").headers["X-Request-ID"]
    second = _get(app, "/healthz").headers["X-Request-ID"]
    assert HEX32.match(first) and HEX32.match(second) and first != second


def test_the_answer_names_a_child_of_the_callers_trace(tmp_path: Path) -> None:
    app = _app(tmp_path)
    child = TRACEPARENT.match(_get(app, "/healthz", traceparent=CALLER).headers["traceparent"])
    assert child is not None
    assert child.group(1) == "ab" * 16 and child.group(2) != "cd" * 8 and child.group(3) == "01"
    zero_trace = "00-" + "0" * 32 + "-" + "1" * 16 + "-01"
    for sent in ({}, {"traceparent": "garbage"}, {"traceparent": zero_trace}):
        fresh = TRACEPARENT.match(_get(app, "/healthz", **sent).headers["traceparent"])
        assert fresh is not None and fresh.group(1) not in ("ab" * 16, "0" * 32), sent


def test_errors_carry_the_request_id_in_the_standard_shape(tmp_path: Path) -> None:
    app = _app(tmp_path)
    missing = _get(app, "/no/such/route", **{"X-Request-ID": "req-404"})
    assert missing.status_code == 404
    body = asyncio.run(missing.get_json())
    assert body["requestId"] == "req-404" == missing.headers["X-Request-ID"]
    assert set(body) == {"error", "requestId"}
    assert missing.headers["Content-Security-Policy"].startswith("default-src 'none'")
    wrong = _get(app, "/healthz", method="DELETE", **{"X-Request-ID": "req-405"})
    assert wrong.status_code == 405
    body = asyncio.run(wrong.get_json())
    assert body["requestId"] == "req-405" and set(body) == {"error", "requestId"}
    assert "GET" in wrong.headers["Allow"]
    assert wrong.headers["Cache-Control"] == "no-store"


# -- headers on every answer -----------------------------------------------------------------


def test_security_headers_and_cache_control_on_json_and_html(tmp_path: Path) -> None:
    app = _app(tmp_path)
    for path, csp in (
        ("/healthz", "default-src 'none'; frame-ancestors 'none'"),
        ("/", "default-src 'self'; img-src 'self' data:"),
    ):
        headers = _get(app, path).headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["Referrer-Policy"] == "no-referrer", path
        assert headers["Cache-Control"] == "no-store", path
        assert headers["Content-Security-Policy"].startswith(csp), path
        assert "Strict-Transport-Security" not in headers, path
        assert len(headers.getlist("Content-Security-Policy")) == 1, path
    https = _app(tmp_path / "https", "PUBLIC_URL=https://gw.example.com\n")
    assert (
        _get(https, "/healthz").headers["Strict-Transport-Security"].startswith("max-age=31536000")
    )


def test_cors_for_listed_origins_only(tmp_path: Path) -> None:
    app = _app(tmp_path, "CORS_ORIGINS=https://crm.example.com/\n")
    ok = _get(app, "/healthz", Origin="https://crm.example.com").headers
    assert ok["Access-Control-Allow-Origin"] == "https://crm.example.com"
    assert ok["Access-Control-Allow-Credentials"] == "true" and ok["Vary"] == "Origin"
    assert "Access-Control-Allow-Methods" not in ok
    pre = _get(app, "/api/users", method="OPTIONS", Origin="https://crm.example.com").headers
    assert pre["Access-Control-Allow-Origin"] == "https://crm.example.com"
    assert "X-CSRF-Token" in pre["Access-Control-Allow-Headers"]
    assert pre["Access-Control-Max-Age"] == "600"
    for other in ("https://evil.example.com", "null"):
        refused = _get(app, "/healthz", Origin=other).headers
        assert "Access-Control-Allow-Origin" not in refused, other
    star = _app(tmp_path / "star", "CORS_ORIGINS=*\n")
    any_origin = _get(star, "/healthz", Origin="https://anything.example").headers
    assert any_origin["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in any_origin


# -- metrics, access log, spans ---------------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_per_route_template_and_status(tmp_path: Path) -> None:
    app = _app(tmp_path)
    ok = {"method": "GET", "route": "/healthz", "status": "200"}
    missing = {"method": "GET", "route": "<unmatched>", "status": "404"}
    wrong = {"method": "DELETE", "route": "<unmatched>", "status": "405"}
    before = {
        "ok": _sample("appliance_http_requests_total", **ok),
        "missing": _sample("appliance_http_requests_total", **missing),
        "wrong": _sample("appliance_http_requests_total", **wrong),
        "timed": _sample(
            "appliance_http_request_duration_seconds_count", method="GET", route="/healthz"
        ),
    }
    for _ in range(3):
        _get(app, "/healthz")
    _get(app, "/nothing/here")
    _get(app, "/healthz", method="DELETE")
    assert _sample("appliance_http_requests_total", **ok) == before["ok"] + 3
    assert _sample("appliance_http_requests_total", **missing) == before["missing"] + 1
    assert _sample("appliance_http_requests_total", **wrong) == before["wrong"] + 1
    timed = _sample("appliance_http_request_duration_seconds_count", method="GET", route="/healthz")
    assert timed == before["timed"] + 3


def test_one_access_line_per_request_with_its_ids(tmp_path: Path, restore_logging: None) -> None:
    (tmp_path / "logs").mkdir()
    path = log_access_to_file(tmp_path / "logs", instance="api_t")
    assert path is not None
    app = _app(tmp_path / "app")
    answer = _get(app, "/healthz", **{"X-Request-ID": "line-1"}, traceparent=CALLER)
    _get(app, "/missing", **{"X-Request-ID": "line-2"})
    logging.getLogger(ACCESS_LOGGER).handlers[0].flush()
    lines = [orjson.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(e["msg"], e["status"], e["request_id"]) for e in lines] == [
        ("GET /healthz 200", 200, "line-1"),
        ("GET /missing 404", 404, "line-2"),
    ]
    assert lines[0]["trace_id"] == "ab" * 16 == answer.headers["traceparent"].split("-")[1]
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] >= 0 for e in lines)


def test_no_access_line_when_the_access_log_is_off(tmp_path: Path, restore_logging: None) -> None:
    path = log_access_to_file(tmp_path, instance="api_t")
    assert path is not None
    app = _app(tmp_path / "app", "ACCESS_LOG=false\n")
    assert _get(app, "/healthz").status_code == 200
    logging.getLogger(ACCESS_LOGGER).handlers[0].flush()
    assert path.read_text(encoding="utf-8") == ""


def test_a_server_span_per_request_named_by_its_route(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("test", exporter=exporter)
    try:
        app = _app(tmp_path)
        answer = _get(app, "/healthz", traceparent=CALLER)
        _get(app, "/nothing")
        spans = exporter.get_finished_spans()
        assert [s.name for s in spans] == ["GET /healthz", "GET <unmatched>"]
        ok, missing = spans
        assert ok.parent is not None and ok.parent.span_id == int("cd" * 8, 16)
        assert ok.context.trace_id == int("ab" * 16, 16)
        # The answer's traceparent names the server span itself.
        assert answer.headers["traceparent"] == tracing.traceparent_of(ok)
        assert ok.attributes is not None and missing.attributes is not None
        assert ok.attributes["http.route"] == "/healthz"
        assert ok.attributes["http.response.status_code"] == 200
        assert ok.attributes["http.request.method"] == "GET"
        assert missing.attributes["http.response.status_code"] == 404
        assert missing.parent is None
    finally:
        tracing.shutdown_tracing()
