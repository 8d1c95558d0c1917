#!/usr/bin/env python3
"""The worker's inbound commit in one process, without supervisord, IPC or HTTP.

Question: how much CPU does committing one inbound message cost, and how many
messages per second does one event loop commit, when batches arrive like the sandbox
load mode delivers them (a batch of ``--per-tick`` messages every 10 ms tick, each
committed by its own task, so that a slow commit lets later ticks pile up)?

``MessagingService.commit_inbound`` (appliance/worker/inbound.py) runs against a fresh
migrated database file (SQLITE_SYNCHRONOUS FULL unless ``--sync NORMAL``) with an
account and no automations. Baseline in the same run: the same rows inserted with
Python's ``sqlite3`` (messages, chat upsert, contact upsert, ``message.received``
event), ``--per-tick`` rows per transaction, back to back. Reported: messages/s, the
ratio to the baseline, and process CPU (all threads) per message in microseconds.

The package is imported from ``PYTHONPATH`` first, so that two revisions can be
compared in one sitting (``PYTHONPATH=/tmp/old python bench/inbound_commit.py``):
run them alternately (A B A B) on a loaded machine and compare the CPU per message.

    python bench/inbound_commit.py            # about 20 s
    python bench/inbound_commit.py --smoke    # about 3 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ACCOUNT = "bench"


def _settings(root: Path, sync: str) -> Any:
    from appliance.config import Paths, load_settings

    paths = Paths(root)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    return load_settings(paths, environ={"APPLIANCE_SQLITE_SYNCHRONOUS": sync})


def _message(n: int, stamp: str) -> Any:
    from appliance.engines.base import InboundMessage

    jid = f"1555{n % 997:07d}@s.whatsapp.net"
    return InboundMessage(
        id=f"BENCH{stamp}{n:08d}",
        chat_jid=jid,
        sender_jid=jid,
        type="text",
        content={"type": "text", "text": {"body": f"load {n}"}},
        body=f"load {n}",
        timestamp=time.time(),
        received_at=time.monotonic(),
    )


async def appliance_run(directory: Path, sync: str, total: int, per_tick: int) -> dict[str, Any]:
    from appliance.db.database import Database
    from appliance.db.migrate import migrate
    from appliance.messaging import store
    from appliance.worker.messaging import AccountRuntime, MessagingService

    settings = _settings(directory / "root", sync)
    db = await Database.open(directory / "appliance.db", synchronous=sync)
    await migrate(db.writer)
    if hasattr(db, "keep_temp_in_memory"):  # as the worker does (older revisions: not)
        await db.keep_temp_in_memory()
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=ACCOUNT,
            name="bench",
            engine="sandbox",
            engine_settings={},
            settings={},
            now=1.0,
        )

    async def publish(_: int) -> None:
        pass

    service = MessagingService(db, settings, publish=publish)
    runtime = AccountRuntime(service, await store.account_row(db, ACCOUNT))
    stamp = f"{int(time.time() * 1000):x}"
    latencies: list[float] = []
    committed = 0

    async def commit(batch: list[Any]) -> None:
        nonlocal committed
        results = await service.commit_inbound(runtime, batch)
        done = time.monotonic()
        committed += sum(results)
        latencies.extend((done - m.received_at) * 1000 for m in batch)

    tasks: set[asyncio.Task[None]] = set()
    cpu0, t0 = time.process_time(), time.monotonic()
    sent = 0
    deadline = t0 + 120.0  # bounded by count and time
    while sent < total and time.monotonic() < deadline:
        batch = [_message(sent + i, stamp) for i in range(min(per_tick, total - sent))]
        sent += len(batch)
        task = asyncio.create_task(commit(batch))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.01)
    while tasks and time.monotonic() < deadline + 60:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    await service.stop(1)
    await db.close()
    latencies.sort()
    return {
        "committed": committed,
        "offered": sent,
        "elapsed_s": round(elapsed, 3),
        "cpu_us_per_msg": round(cpu / max(committed, 1) * 1e6, 1),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)], 1) if latencies else None,
        "burst_msgs_per_s": None,
    }


async def burst_run(directory: Path, sync: str, total: int, per_tick: int) -> dict[str, Any]:
    """Everything offered at once (a backlog): the commit's ceiling."""
    from appliance.db.database import Database
    from appliance.db.migrate import migrate
    from appliance.messaging import store
    from appliance.worker.messaging import AccountRuntime, MessagingService

    settings = _settings(directory / "root2", sync)
    db = await Database.open(directory / "burst.db", synchronous=sync)
    await migrate(db.writer)
    if hasattr(db, "keep_temp_in_memory"):  # as the worker does (older revisions: not)
        await db.keep_temp_in_memory()
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=ACCOUNT,
            name="bench",
            engine="sandbox",
            engine_settings={},
            settings={},
            now=1.0,
        )

    async def publish(_: int) -> None:
        pass

    service = MessagingService(db, settings, publish=publish)
    runtime = AccountRuntime(service, await store.account_row(db, ACCOUNT))
    stamp = f"{int(time.time() * 1000):x}b"
    batches = [
        [_message(n + i, stamp) for i in range(min(per_tick, total - n))]
        for n in range(0, total, per_tick)
    ]
    cpu0, t0 = time.process_time(), time.monotonic()
    async with asyncio.timeout(180):
        results = await asyncio.gather(*(service.commit_inbound(runtime, b) for b in batches))
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    committed = sum(sum(r) for r in results)
    await service.stop(1)
    await db.close()
    return {
        "committed": committed,
        "msgs_per_s": round(committed / elapsed, 1),
        "cpu_us_per_msg": round(cpu / max(committed, 1) * 1e6, 1),
    }


def sqlite3_baseline(directory: Path, sync: str, total: int, per_tick: int) -> dict[str, Any]:
    """The floor: the same rows on plain sqlite3, ``per_tick`` per transaction."""
    import asyncio as _asyncio

    from appliance.db.database import Database
    from appliance.db.migrate import migrate

    path = directory / "baseline.db"

    async def schema() -> None:
        db = await Database.open(path, synchronous=sync)
        await migrate(db.writer)
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO accounts (id, name, engine, engine_settings, settings, created_at, "
                "updated_at) VALUES (?, 'b', 'sandbox', '{}', '{}', 1, 1)",
                (ACCOUNT,),
            )
        await db.close()

    _asyncio.run(schema())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("PRAGMA foreign_keys=ON")
    cpu0, t0 = time.process_time(), time.monotonic()
    for start in range(0, total, per_tick):
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        for n in range(start, min(start + per_tick, total)):
            jid = f"1555{n % 997:07d}@s.whatsapp.net"
            content = json.dumps({"type": "text", "text": {"body": f"load {n}"}})
            conn.execute(
                "INSERT INTO messages (account_id, id, chat_jid, direction, sender_jid, type, "
                "body, content, status, wa_timestamp, created_at, updated_at) VALUES "
                "(?, ?, ?, 'in', ?, 'text', ?, ?, 'received', ?, ?, ?) "
                "ON CONFLICT (account_id, id) DO NOTHING",
                (ACCOUNT, f"B{n:08d}", jid, jid, f"load {n}", content, now, now, now),
            )
            conn.execute(
                "INSERT INTO chats (account_id, jid, is_group, unread_count, last_message_id, "
                "last_message_at, created_at) VALUES (?, ?, 0, 1, ?, ?, ?) "
                "ON CONFLICT (account_id, jid) DO UPDATE SET unread_count = unread_count + 1, "
                "last_message_id = excluded.last_message_id, "
                "last_message_at = excluded.last_message_at",
                (ACCOUNT, jid, f"B{n:08d}", now, now),
            )
            conn.execute(
                "INSERT INTO contacts (account_id, jid, phone, name, updated_at) "
                "VALUES (?, ?, ?, NULL, ?) ON CONFLICT (account_id, jid) DO UPDATE SET "
                "updated_at = excluded.updated_at",
                (ACCOUNT, jid, jid.split("@")[0], now),
            )
            conn.execute(
                "INSERT INTO events (type, account_id, created_at, data) VALUES (?, ?, ?, ?)",
                ("message.received", ACCOUNT, now, content),
            )
        conn.execute("COMMIT")
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    conn.close()
    return {
        "rows_per_s": round(total / elapsed, 1),
        "cpu_us_per_msg": round(cpu / total * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds)")
    parser.add_argument("--messages", type=int, help="messages per run (5000; smoke 300)")
    parser.add_argument("--per-tick", type=int, default=10, help="messages per 10 ms tick")
    parser.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args(argv)
    total = args.messages or (300 if args.smoke else 5000)
    import appliance

    with tempfile.TemporaryDirectory(prefix="bench-inbound-commit-") as tmp:
        directory = Path(tmp)
        base = sqlite3_baseline(directory, args.sync, total, args.per_tick)
        paced = asyncio.run(appliance_run(directory, args.sync, total, args.per_tick))
        burst = asyncio.run(burst_run(directory, args.sync, total, args.per_tick))
    ratio = round(burst["msgs_per_s"] / base["rows_per_s"], 3) if base["rows_per_s"] else None
    print(
        f"inbound_commit ({Path(appliance.__file__).parent}, SYNCHRONOUS={args.sync},"
        f" {total} messages, {args.per_tick} per tick):"
    )
    print(f"  sqlite3 baseline: {base['rows_per_s']} rows/s, {base['cpu_us_per_msg']} us CPU/row")
    print(
        f"  paced (1 batch per 10 ms): {paced['committed']}/{paced['offered']} committed in"
        f" {paced['elapsed_s']} s, p95 {paced['p95_ms']} ms, {paced['cpu_us_per_msg']} us CPU/msg"
    )
    print(
        f"  backlog (all at once): {burst['msgs_per_s']} msg/s, {burst['cpu_us_per_msg']} us"
        f" CPU/msg; ratio to the sqlite3 baseline {ratio}"
    )
    ok = paced["committed"] == total and burst["committed"] == total
    print(
        json.dumps(
            {
                "bench": "inbound_commit",
                "package": str(Path(appliance.__file__).parent),
                "sync": args.sync,
                "messages": total,
                "baseline": base,
                "paced": paced,
                "backlog": burst,
                "ratio_backlog_to_sqlite3": ratio,
                "ok": ok,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
