"""How the trace is carried through the worker (appliance/observability/tracing.py):
events keep the traceparent of the span that wrote them, also through the group
commit; batches of inbound messages get a trace each; receipts find their send's
trace; claims appear in each job's trace. Off, every helper is a no-op that returns
its input (the default code path is the one without tracing)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from appliance.messaging import store
from appliance.observability import tracing
from appliance.observability.context import traceparent_var
from tests.unit.conftest import OpenDb


@pytest.fixture
def exporter() -> Any:
    exporter = InMemorySpanExporter()
    assert tracing.setup_tracing("test", exporter=exporter)
    yield exporter
    tracing.shutdown_tracing()


def _parent_of(traceparent: str) -> int:
    return int(traceparent.split("-")[2], 16)


def test_off_every_helper_is_a_no_op(db_path: Path, open_db: OpenDb) -> None:
    assert not tracing.enabled()

    async def work(conn: Any) -> int:
        return await store.append_event(conn, "account.status", None, {}, time.time())

    assert tracing.carry(work) is work
    assert tracing.within("00-" + "a" * 32 + "-" + "b" * 16 + "-01") is tracing.within(None)
    assert tracing.stored_traceparent() is None
    tracing.remember("acc:m1")
    assert tracing.recall("acc:m1") is None
    with tracing.per_item("x", lambda: pytest.fail("items are not made when off")) as traces:
        traces.enter("m1")
        traces.record("y", time.time_ns())
        assert traces.ids == {} and traceparent_var.get() is None

    async def main() -> None:
        token = traceparent_var.set("00-" + "a" * 32 + "-" + "b" * 16 + "-01")
        try:
            async with open_db(db_path) as db:
                event_id = await db.write_batched(work)
                row = await store.event_row(db, event_id)
                assert row is not None and row.traceparent is None  # nothing stored
        finally:
            traceparent_var.reset(token)

    asyncio.run(main())


def test_events_written_through_the_group_commit_name_their_callers_span(
    db_path: Path, open_db: OpenDb, exporter: InMemorySpanExporter
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:

            async def caller(name: str) -> tuple[int, str]:
                with tracing.span(name) as span:
                    assert span is not None
                    event_id = await db.write_batched(
                        lambda conn: store.append_event(
                            conn, "account.status", None, {"who": name}, time.time()
                        )
                    )
                    return event_id, tracing.traceparent_of(span)

            # Callers waiting together share one transaction, written by the first
            # caller's task: each event still names its own caller's span.
            results = await asyncio.gather(*(caller(f"c{i}") for i in range(8)))
            assert len({tp for _, tp in results}) == 8
            for event_id, traceparent in results:
                row = await store.event_row(db, event_id)
                assert row is not None and row.traceparent == traceparent
            (after,) = await store.event_rows_after(db, results[-1][0] - 1, 1)
            assert after.traceparent == results[-1][1]
            # Written outside any span: no traceparent, the delivery starts its own trace.
            async with db.write() as conn:
                bare = await store.append_event(conn, "account.status", None, {}, time.time())
            row = await store.event_row(db, bare)
            assert row is not None and row.traceparent is None

    asyncio.run(main())


def test_a_batch_gets_a_trace_per_item_and_the_var_is_restored(
    exporter: InMemorySpanExporter,
) -> None:
    outer = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    token = traceparent_var.set(outer)
    try:
        items = [("m1", {"appliance.message_id": "m1"}), ("m2", {"appliance.message_id": "m2"})]
        with tracing.per_item("inbound", lambda: items, kind="consumer") as traces:
            started = time.time_ns()
            traces.enter("m1")
            assert traceparent_var.get() == traces.get("m1")
            assert tracing.stored_traceparent() == traces.get("m1")
            traces.enter("m2")
            assert traceparent_var.get() == traces.get("m2")
            traces.record("inbound.commit", started)
        assert traceparent_var.get() == outer  # the batch's block leaves the var as it was
    finally:
        traceparent_var.reset(token)
    spans = exporter.get_finished_spans()
    roots = {s.attributes["appliance.message_id"]: s for s in spans if s.name == "inbound"}
    assert set(roots) == {"m1", "m2"}
    assert all(s.parent is None for s in roots.values())  # each a new trace, not the outer one
    assert roots["m1"].context.trace_id != roots["m2"].context.trace_id
    commits = [s for s in spans if s.name == "inbound.commit"]
    assert sorted(s.parent.span_id for s in commits if s.parent) == sorted(
        r.context.span_id for r in roots.values()
    )


def test_a_failing_batch_marks_every_item_span(exporter: InMemorySpanExporter) -> None:
    with (
        pytest.raises(RuntimeError),
        tracing.per_item("inbound", lambda: [("m1", {}), ("m2", {})]) as traces,
    ):
        traces.enter("m1")
        raise RuntimeError("disk full")
    assert traceparent_var.get() is None
    spans = exporter.get_finished_spans()
    assert len(spans) == 2 and all(not s.status.is_ok for s in spans)


def test_receipts_recall_their_send_and_claims_join_each_jobs_trace(
    exporter: InMemorySpanExporter,
) -> None:
    with tracing.span("send") as send:
        assert send is not None
        tracing.remember("acc:m1")
    assert tracing.recall("acc:m1") == tracing.traceparent_of(send)
    assert tracing.recall("acc:other") is None
    with tracing.within(tracing.recall("acc:m1")), tracing.span("receipt") as receipt:
        assert receipt is not None
    assert receipt.parent is not None and receipt.parent.span_id == send.get_span_context().span_id

    request = "00-" + "e" * 32 + "-" + "f" * 16 + "-01"
    started = time.time_ns()
    tracing.record_claims("send", [{"traceparent": request}, {"account_id": "x"}, "odd"], started)
    (claim,) = [s for s in exporter.get_finished_spans() if s.name == "claim send"]
    assert claim.parent is not None and claim.parent.span_id == _parent_of(request)
    assert claim.start_time == started and claim.end_time is not None
    assert claim.attributes is not None and claim.attributes["appliance.claimed"] == 3


def test_remembered_sends_are_bounded(exporter: InMemorySpanExporter) -> None:
    with tracing.span("send"):
        for i in range(tracing.LINKS_KEPT + 10):
            tracing.remember(f"acc:{i}")
    assert tracing.recall("acc:0") is None
    assert tracing.recall(f"acc:{tracing.LINKS_KEPT + 9}") is not None
