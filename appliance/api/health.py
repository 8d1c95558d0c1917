"""Liveness, readiness and the metrics exposition."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import Any

from pydantic import BaseModel, Field
from quart import Blueprint, Response, jsonify, request
from quart_schema import document_response

from appliance.api.access import metrics_token, public
from appliance.api.errors import error_response
from appliance.api.openapi import responds
from appliance.api.state import state_of
from appliance.db.migrate import latest_version, schema_version
from appliance.db.storage import disk_check
from appliance.errors import IpcError
from appliance.ipc.protocol import PingResult
from appliance.messaging import store as messaging_store
from appliance.observability.metrics import exposition

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


class Health(BaseModel):
    """This process answers."""

    status: str = Field(description="`ok`")
    pid: int


class WebhooksCheck(BaseModel):
    """The webhooks process (``[program:webhooks]``): connected to the worker, as the
    worker reports it in its ``ping`` answer (runbook/readyz.md)."""

    ok: bool = Field(
        description="The webhooks process is connected to the worker and heard from lately"
    )
    pids: list[int] = Field(description="Its process id (empty when it is not running)")
    error: str | None = Field(
        default=None,
        description="Why not: not connected, silent (hung), or not known (the worker is down)",
    )


class ReadinessChecks(BaseModel):
    """Each check with `ok` and its details (runbook/readyz.md has a section per check)."""

    database: dict[str, Any] = Field(description="Readable, schema current")
    worker: dict[str, Any] = Field(description="The worker answers `ping` (its `pid`)")
    webhooks: WebhooksCheck
    shutdown: dict[str, Any] = Field(description="This API process is not stopping")
    disk: dict[str, Any] = Field(description="Free space, no recent write failure")


class Readiness(BaseModel):
    """Ready (200), or not (503) with the checks that fail."""

    status: str = Field(description="`ready`, `not_ready` or `shutting_down`")
    pid: int
    checks: ReadinessChecks
    failing: list[str] = Field(description="Names of the checks that fail")


@bp.get("/healthz")
@public
@document_response(Health, 200)
async def healthz() -> Response:
    """Liveness: this process and its event loop answer. No dependency checks."""
    return jsonify({"status": "ok", "pid": os.getpid()})


async def _check_database() -> dict[str, Any]:
    state = state_of()
    if state.db is None:
        return {"ok": False, "error": "database not open"}
    expected = latest_version()
    try:
        version = await schema_version(state.db)
    except Exception as exc:  # missing table, locked file, I/O error
        return {"ok": False, "error": type(exc).__name__, "expected_version": expected}
    ok = int(version) == expected
    result: dict[str, Any] = {
        "ok": ok,
        "schema_version": int(version),
        "expected_version": expected,
    }
    if not ok:
        result["error"] = "schema not current"
    return result


WEBHOOKS_UNKNOWN = "not known: the worker is not answering"
WEBHOOKS_DOWN = "the webhooks process is not connected to the worker: deliveries are stopped"
WEBHOOKS_SILENT = (
    "the webhooks process is connected but silent (no heartbeat within"
    " WEBHOOKS_SILENT_AFTER_S): it may hang, deliveries may be stopped"
)


def webhooks_check(pong: PingResult | None) -> WebhooksCheck:
    """The webhooks process's liveness from the worker's ping answer (None: no answer).
    It holds a connection to the worker while it runs, subscribed to ``webhooks``."""
    if pong is None:
        return WebhooksCheck(ok=False, pids=[], error=WEBHOOKS_UNKNOWN)
    if not pong.webhooks_pids:
        return WebhooksCheck(ok=False, pids=[], error=WEBHOOKS_DOWN)
    if set(pong.webhooks_pids) <= set(pong.webhooks_silent_pids):
        return WebhooksCheck(ok=False, pids=list(pong.webhooks_pids), error=WEBHOOKS_SILENT)
    return WebhooksCheck(ok=True, pids=list(pong.webhooks_pids))


async def _check_worker() -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``worker`` check and the ``webhooks`` check, both from one ping."""
    state = state_of()
    try:
        pong = await state.worker.ping(timeout_s=state.settings.ready_worker_timeout_s)
    except IpcError as exc:
        return {"ok": False, "error": str(exc)}, webhooks_check(None).model_dump(exclude_none=True)
    webhooks = webhooks_check(pong).model_dump(exclude_none=True)
    return {"ok": True, "pid": pong.pid}, webhooks


@bp.get("/readyz")
@public
@document_response(Readiness, 200)
@document_response(Readiness, 503)
async def readyz() -> Response:
    """Readiness: database current, worker answering, webhooks process connected to it,
    not shutting down, disk not full."""
    state = state_of()
    database, (worker, webhooks) = await asyncio.gather(_check_database(), _check_worker())
    checks = {
        "database": database,
        "worker": worker,
        "webhooks": webhooks,
        "shutdown": {"ok": not state.shutting_down},
    }
    checks["disk"] = disk_check(state.settings.data_dir)  # runbook/disk-full.md
    failing = sorted(name for name, check in checks.items() if not check["ok"])
    if state.shutting_down:
        status = "shutting_down"
    else:
        status = "not_ready" if failing else "ready"
    body = {"status": status, "pid": os.getpid(), "checks": checks, "failing": failing}
    response = jsonify(body)
    response.status_code = 200 if not failing else 503
    return response


@bp.get("/metrics")
@metrics_token
@responds(200, "Prometheus text exposition of every process", "text/plain")
async def metrics() -> Response:
    """Prometheus exposition of every process; Bearer metrics token required."""
    state = state_of()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # The replaced token still works during its grace period (appliancectl rotate).
    accepted = state.secrets.metrics_tokens(time.time())
    matched = [hmac.compare_digest(token.encode(), t.encode()) for t in accepted]
    if scheme.lower() != "bearer" or not any(matched):
        response = error_response(401, "metrics require Authorization: Bearer <metrics-token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    accounts = await _existing_accounts()
    body, content_type = await asyncio.to_thread(exposition, accounts)
    return Response(body, content_type=content_type)


async def _existing_accounts() -> list[str] | None:
    """The ids of the accounts that exist: the per-account gauges of deleted ones are
    left out of the exposition. None (nothing left out) when the database cannot say."""
    state = state_of()
    if state.db is None:
        return None
    try:
        return [account for account, _, _ in await messaging_store.account_states(state.db)]
    except Exception as exc:  # a locked or damaged file: /metrics still answers
        log.warning("metrics: accounts not read", extra={"error": type(exc).__name__})
        return None
