"""A send's trace kept on its message (appliance/messaging/trace_links.py): a receipt
that arrives after a worker restart (the in-memory link gone) still joins the send's
trace; with tracing off nothing is stored. Real SendLoop and Inbound on a migrated
SQLite file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from appliance.config import Settings
from appliance.db.database import Database
from appliance.messaging import store
from appliance.messaging.models import MessageContent
from appliance.messaging.sends import accept_send
from appliance.observability import tracing
from appliance.worker.messaging import AccountRuntime, MessagingService
from tests.unit.conftest import OpenDb
from tests.unit.test_inbound_commit import ACCOUNT, ALICE, _FileEngine, _run


@pytest.fixture
def exporter() -> Any:
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("test", exporter=exporter)
    yield exporter
    tracing.shutdown_tracing()


async def _send(db: Database, service: MessagingService) -> str:
    """Accept one text send, claim its job and hand it to an engine (as the loop does)."""
    async with db.write() as conn:
        accepted = await accept_send(
            conn,
            account_id=ACCOUNT,
            to=ALICE,
            message=MessageContent.model_validate({"type": "text", "text": {"body": "hi"}}),
            client_key=None,
            now=time.time(),
        )
    (job,) = await service.sends.queue.claim(1)
    row = await store.message_row(db, ACCOUNT, accepted.message_id)
    assert row is not None
    with tracing.span("send"):
        assert await service.sends._hand_to_engine(job, _FileEngine())
    return accepted.message_id


def test_a_receipt_after_a_restart_joins_its_sends_trace(
    tmp_path: Path, open_db: OpenDb, db_path: Path, exporter: InMemorySpanExporter
) -> None:
    async def body(
        db: Database, service: MessagingService, _runtime: AccountRuntime, _s: Settings
    ) -> None:
        message_id = await _send(db, service)
        send = next(s for s in exporter.get_finished_spans() if s.name == "send")
        tracing._links.clear()  # what a restart leaves of the in-memory links
        assert tracing.recall(f"{ACCOUNT}:{message_id}") is None
        await service.record_receipt(ACCOUNT, message_id, "delivered")
        receipt = next(s for s in exporter.get_finished_spans() if s.name == "receipt")
        assert receipt.context.trace_id == send.context.trace_id
        assert receipt.parent is not None and receipt.parent.span_id == send.context.span_id
        # A receipt for a message this worker never sent starts its own trace.
        await service.record_receipt(ACCOUNT, "UNKNOWN", "read")
        other = [s for s in exporter.get_finished_spans() if s.name == "receipt"][-1]
        assert other.parent is None

    _run(tmp_path, open_db, db_path, body)


def test_off_nothing_is_kept_on_the_message(tmp_path: Path, open_db: OpenDb, db_path: Path) -> None:
    assert not tracing.enabled()

    async def body(
        db: Database, service: MessagingService, _runtime: AccountRuntime, _s: Settings
    ) -> None:
        message_id = await _send(db, service)
        row = await db.fetchone(
            "SELECT status, traceparent FROM messages WHERE id = ?", [message_id]
        )
        assert row is not None and row["status"] == "sent" and row["traceparent"] is None

    _run(tmp_path, open_db, db_path, body)
