"""Retention (appliance/inbox/retention.py, retention_store.py, retention_job.py): the
cut-off logic, and one pass of the job against a real migrated SQLite file and media
directory, with a fixed clock: exactly what is past its age goes, in bounded batches,
media files with their messages."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Paths, Settings, load_settings
from appliance.db.database import Database
from appliance.inbox import retention_store as store
from appliance.inbox.retention import (
    DAY_S,
    batches_needed,
    cutoff,
    deletable_event_ceiling,
    due,
)
from appliance.inbox.retention_job import RetentionJob
from appliance.messaging import store as messaging_store
from appliance.messaging.media import save_media
from tests.samples import png
from tests.unit.conftest import OpenDb

NOW = 1_800_000_000.0
PEER = "905551110001@s.whatsapp.net"


def test_cutoff_and_schedule() -> None:
    assert cutoff(NOW, None) is None
    assert cutoff(NOW, 2) == NOW - 2 * DAY_S
    with pytest.raises(ValueError):
        cutoff(NOW, 0)
    assert due(None, NOW, 86400)
    assert not due(NOW - 86399, NOW, 86400)
    assert due(NOW - 86400, NOW, 86400)
    assert batches_needed(0, 500) == 0
    assert batches_needed(1001, 500) == 3
    with pytest.raises(ValueError):
        batches_needed(1, 0)


@pytest.mark.parametrize(
    ("newest", "fanned_out", "pending", "ceiling"),
    [
        (100, 100, None, 99),  # never the newest event
        (100, 40, None, 40),  # never one the fan-out has not read
        (100, 100, 30, 29),  # never one a pending delivery needs
        (1, 1, None, 0),
        (0, 0, None, 0),
        (100, 100, 1, 0),
    ],
)
def test_event_ceiling(newest: int, fanned_out: int, pending: int | None, ceiling: int) -> None:
    assert deletable_event_ceiling(newest, fanned_out, pending) == ceiling


def _settings(tmp_path: Path, **env: str) -> Settings:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(f"DATA_DIR={tmp_path / 'data'}\n", encoding="utf-8")
    return load_settings(paths, environ={f"APPLIANCE_{k}": v for k, v in env.items()})


async def _message(
    db: Database, account: str, message_id: str, at: float, *, out: bool = True, **extra: Any
) -> None:
    async with db.write() as conn:
        if out:
            await messaging_store.insert_outbound(
                conn,
                account_id=account,
                message_id=message_id,
                chat_jid=PEER,
                type_="text",
                body=f"text of {message_id}",
                content={"type": "text", "text": {"body": "x"}},
                reply_to=None,
                media_id=extra.get("media_id"),
                client_key=None,
                now=at,
            )
            status = extra.get("status", "sent")
            await conn.execute(
                "UPDATE messages SET status = ? WHERE account_id = ? AND id = ?",
                (status, account, message_id),
            )
        else:
            await messaging_store.insert_inbound(
                conn,
                account_id=account,
                message_id=message_id,
                chat_jid=PEER,
                sender_jid=PEER,
                sender_name=None,
                type_="text",
                body="hello",
                content={"type": "text", "text": {"body": "hello"}},
                reply_to=None,
                media_id=None,
                wa_timestamp=at,
                now=at,
            )


async def _media(db: Database, settings: Settings, account: str, at: float) -> tuple[str, Path]:
    record = await save_media(db, settings, account, png())
    async with db.write() as conn:
        await conn.execute(
            "UPDATE media SET created_at = ? WHERE account_id = ? AND id = ?",
            (at, account, record.id),
        )
    return record.id, settings.media_dir / account / record.id


async def _ids(db: Database, sql: str, *params: Any) -> set[Any]:
    return {r[0] for r in await db.fetchall(sql, params)}


def test_one_pass_deletes_exactly_what_is_past_its_age(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, RETENTION_BATCH_SIZE="3", RETENTION_BATCH_PAUSE_MS="0")
    old, young = NOW - 2 * DAY_S - 1, NOW - 2 * DAY_S + 60

    async def body(db: Database) -> None:
        async with db.write() as conn:
            for account in ("keep", "trim"):
                await messaging_store.create_account(
                    conn,
                    account_id=account,
                    name=account,
                    engine="sandbox",
                    engine_settings={},
                    settings={},
                    now=old,
                )
            await store.set_account_retention(conn, "trim", 2, NOW)
            await store.set_settings(conn, events_days=1, audit_days=30, now=NOW)
        # trim: 9 old messages (two with media, one inbound), 2 young, 1 old still queued.
        sent_media, sent_file = await _media(db, settings, "trim", old)
        shared_media, shared_file = await _media(db, settings, "trim", old)
        _, unused_old_file = await _media(db, settings, "trim", old)
        unused_young, unused_young_file = await _media(db, settings, "trim", young)
        for i in range(6):
            await _message(db, "trim", f"OLD{i}", old - i)
        await _message(db, "trim", "OLDMEDIA", old, media_id=sent_media)
        await _message(db, "trim", "OLDSHARED", old, media_id=shared_media)
        await _message(db, "trim", "YOUNGSHARED", young, media_id=shared_media)
        await _message(db, "trim", "OLDIN", old, out=False)
        await _message(db, "trim", "YOUNG", young)
        await _message(db, "trim", "OLDQUEUED", old, status="queued")
        # keep: no retention row, everything stays.
        await _message(db, "keep", "ANCIENT", old - 100 * DAY_S)
        # Events: backdate all but the newest; a pending delivery guards one.
        async with db.write() as conn:
            await conn.execute("UPDATE events SET created_at = ?", (NOW - 2 * DAY_S,))
            young_event = await messaging_store.append_event(conn, "webhook.test", None, {}, NOW)
            guarded = await messaging_store.append_event(
                conn, "webhook.test", None, {}, NOW - 2 * DAY_S
            )
            await conn.execute("UPDATE webhook_cursor SET last_event_id = ?", (guarded + 1,))
            newest = await messaging_store.append_event(conn, "webhook.test", None, {}, NOW)
            await conn.execute(
                "INSERT INTO webhook_endpoints (id, url, event_types, secret, created_at, "
                "updated_at) VALUES ('wh1', 'http://127.0.0.1:9/', '[\"*\"]', x'00', 0, 0)"
            )
            await conn.execute(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, "
                "created_at, updated_at) VALUES ('wh1', ?, 'webhook.test', 0, 0)",
                (guarded,),
            )
            for i in range(7):
                await conn.execute(
                    "INSERT INTO audit_log (at, action) VALUES (?, 'test')",
                    (NOW - 31 * DAY_S if i < 5 else NOW - 29 * DAY_S,),
                )
            # Engine actions (events_days=1): finished ones past a day go, a young one
            # and a queued one (however old) stay.
            for action_id, status, done_at in (
                *((f"act_old{i}", "done" if i % 2 else "failed", old) for i in range(4)),
                ("act_young", "done", NOW - 60),
                ("act_queued", "queued", None),
            ):
                await conn.execute(
                    "INSERT INTO engine_actions (id, account_id, chat_jid, type, status, "
                    "created_at, updated_at, done_at) VALUES (?, 'trim', ?, 'read', ?, ?, ?, ?)",
                    (action_id, PEER, status, old - 10, old - 10, done_at),
                )
        events_before = await _ids(db, "SELECT id FROM events")
        # An orphan file (no row), old enough for the sweep.
        orphan = settings.media_dir / "trim" / "med_orphanorphan00"
        orphan.write_bytes(b"x")
        os.utime(orphan, (time.time() - 7200, time.time() - 7200))

        job = RetentionJob(db, settings, clock=lambda: NOW)
        started, run_id = await job.start("manual")
        assert started and run_id is not None
        again, same = await job.start("manual")
        assert not again and same == run_id
        assert job._task is not None
        await asyncio.wait_for(job._task, 60)

        assert await _ids(db, "SELECT id FROM messages WHERE account_id = 'trim'") == {
            "YOUNG",
            "YOUNGSHARED",
            "OLDQUEUED",
        }
        assert await _ids(db, "SELECT id FROM messages WHERE account_id = 'keep'") == {"ANCIENT"}
        # Media: the old message's file went with it; the shared one stays (a young
        # message uses it); an unused old upload goes, an unused young one stays.
        assert await _ids(db, "SELECT id FROM media") == {shared_media, unused_young}
        assert not sent_file.exists() and not unused_old_file.exists()
        assert shared_file.exists() and unused_young_file.exists()
        assert not orphan.exists()
        # The FTS index lost the deleted bodies.
        assert not await db.fetchall(
            "SELECT rowid FROM messages_fts WHERE messages_fts MATCH '\"OLD0\"'"
        )
        # Events: every old one (the inbound message's) but the one a pending delivery
        # needs; the young ones and the newest stay.
        kept_events = await _ids(db, "SELECT id FROM events")
        assert kept_events == {young_event, guarded, newest}
        deleted_events = events_before - kept_events
        assert len(deleted_events) == 1
        assert len(await db.fetchall("SELECT id FROM audit_log")) == 2

        run = store.run_out(await store.run_row(db, run_id))
        assert run.error is None and run.finished_at == NOW
        assert run.deleted["messages"] == 9
        assert run.deleted["media"] == 2
        assert run.deleted["audit"] == 5
        assert run.deleted["orphan_media"] == 1
        assert run.deleted["events"] == 1
        assert run.deleted["engine_actions"] == 4
        assert await _ids(db, "SELECT id FROM engine_actions") == {"act_young", "act_queued"}
        # Batches of at most 3: 9 messages take 3 (and one that finds none), never one big one.
        assert run.batches >= batches_needed(9, 3) + batches_needed(5, 3)

    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())


def test_the_schedule_survives_restarts(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path, RETENTION_INTERVAL_S="86400")

    async def main() -> None:
        async with open_db(db_path) as db:
            assert await store.last_started_at(db) is None
            async with db.write() as conn:
                run_id = await store.start_run(conn, "schedule", NOW - 100)
            # A worker stopped mid-pass: the next start closes that run, saying so.
            job = RetentionJob(db, settings, clock=lambda: NOW)
            task = asyncio.create_task(job.run_forever(first_delay_s=3600))
            await asyncio.sleep(0.2)
            task.cancel()
            run = store.run_out(await store.run_row(db, run_id))
            assert run.finished_at == NOW and run.error and "interrupted" in run.error
            assert await store.last_started_at(db) == NOW - 100
            assert not due(await store.last_started_at(db), NOW, settings.retention_interval_s)

    asyncio.run(main())


def test_appliancectl_check_reports_database_and_media_sizes(
    open_db: OpenDb, tmp_path: Path
) -> None:
    from appliance.cli import storage_report

    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        async with open_db(settings.database_path) as db:
            async with db.write() as conn:
                await messaging_store.create_account(
                    conn,
                    account_id="a1",
                    name="a1",
                    engine="sandbox",
                    engine_settings={},
                    settings={},
                    now=NOW,
                )
            await save_media(db, settings, "a1", png())
            await save_media(db, settings, "a1", png(3, 3))

    asyncio.run(main())
    lines = storage_report(settings)
    assert lines[0].startswith("database size ") and "KiB" in lines[0]
    assert lines[1] == "database rows: messages 0, media 2, events 0, audit_log 0, contacts 0"
    size = sum(p.stat().st_size for p in (settings.media_dir / "a1").iterdir())
    assert lines[2] == f"media size {size} B in 2 files ({settings.media_dir})"
