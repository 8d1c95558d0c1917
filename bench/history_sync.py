#!/usr/bin/env python3
"""History sync import: a 100,000-message history through the real worker, vs bare SQLite.

1. A fake WhatsApp (``tests/fakes/fake_whatsapp.py``: neonize's own protobuf classes,
   JSON lines on 127.0.0.1) runs in this process. One installation
   (``install.sh --prefix <tmp> --no-start``) gets ``ENABLE_TEST_ROUTES=true`` and
   ``WEB_CLIENT_FACTORY=fake_whatsapp:client_factory`` (its venv a ``.pth`` naming
   tests/fakes), is started, and a ``web`` account is linked to the fake.
2. The history: ``--messages`` (100,000; smoke 3,000) text messages over ``--chats``
   (100; smoke 10) chats, a quarter of them our own, in HistorySync chunks of
   ``--chunk`` (5,000; smoke 1,000) messages, newest first, all pushed at once. The
   import ends when the account status's ``sync.messages`` reaches the total; its
   rate is messages / (last stored - first pushed).
3. During the import a child process asks ``GET /healthz`` every 20 ms (bounded by
   count and time): p50 / p95 / max (the goal); the same for ``--idle-s`` before the
   import, so that the machine's own load can be told from the import's. Beside it, for
   the diagnosis: the same from a thread of this process (as runs before 2026-12-02
   measured; it shares the GIL with the fake WhatsApp), ``GET /readyz`` every 100 ms
   (an IPC ping the worker's event loop answers, and a database read: the worker's
   side), CPU seconds per second of every supervised process and of this one, the load
   average, and the worker's per-chunk timings from its log (``map_ms``: protobuf to
   batches on the mapping thread; ``store_ms``: the batches committed, pauses included).
4. Baseline, in the same run: the same rows (messages with ``history = 1`` and their
   full-text trigger, chat upserts) inserted straight into a fresh database with the
   appliance's schema (migrations applied), Python's sqlite3, the same pragmas (WAL,
   synchronous FULL), 500 rows per transaction like the worker's batches.

Goals (issue 12): import rate >= 0.3 x the baseline's rows/s; /healthz p95 < 50 ms
during the import. ``--check`` exits 1 when one is missed.

Output: a short human summary, then one line of JSON (the last line of stdout).

    .venv/bin/python bench/history_sync.py            # a few minutes
    .venv/bin/python bench/history_sync.py --smoke    # well under a minute after install
    .venv/bin/python bench/history_sync.py --pause-ms default,0   # with and without the pause
    .venv/bin/python bench/history_sync.py --messages 20000 --map-nice 0,10,0,10  # A/B
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    Installation,
    cpu_seconds,
    exit_on_sigterm,
    http_get,
    source_revision,
)

ACCOUNT = "hist"
PHONE = "15550009999"
T0 = 1_700_000_000
BATCH = 500


def api(port: int, method: str, path: str, body: Any = None, key: str = "") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def history_rows(messages: int, chats: int) -> list[tuple[str, str, bool, int]]:
    """(chat, id, from me, timestamp) of every message, newest first."""
    rows = []
    for n in range(messages):
        chat = f"1555{n % chats:07d}@s.whatsapp.net"
        rows.append((chat, f"HB{n:08d}", n % 4 == 0, T0 + n))
    rows.reverse()
    return rows


def chunks(rows: list[tuple[str, str, bool, int]], size: int) -> list[Any]:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
    from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs
    from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as web

    out = []
    parts = [rows[i : i + size] for i in range(0, len(rows), size)]
    for order, part in enumerate(parts, start=1):
        data = hs.HistorySync(
            syncType=hs.HistorySync.INITIAL_BOOTSTRAP if order == 1 else hs.HistorySync.FULL,
            chunkOrder=order,
            progress=order * 100 // len(parts),
        )
        by_chat: dict[str, Any] = {}
        for chat, wa_id, from_me, ts in part:
            conv = by_chat.get(chat)
            if conv is None:
                conv = by_chat[chat] = data.conversations.add(ID=chat, name=f"Chat {chat[:11]}")
            info = web.WebMessageInfo(
                key={"remoteJID": chat, "fromMe": from_me, "ID": wa_id},
                message=e2e.Message(conversation=f"history message {wa_id}"),
                messageTimestamp=ts,
                status=web.WebMessageInfo.READ if from_me else web.WebMessageInfo.DELIVERY_ACK,
            )
            conv.messages.add(message=info)
        out.append(data)
    return out


class Sampler(threading.Thread):
    """GET ``path`` every ``interval_s`` until stopped (at most ``max_count`` / ``max_s``)."""

    def __init__(
        self,
        port: int,
        interval_s: float = 0.02,
        max_count: int = 100_000,
        path: str = "/healthz",
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.interval_s = interval_s
        self.max_count = max_count
        self.max_s = 900.0
        self.stop_event = threading.Event()
        self.latencies_ms: list[float] = []
        self.failures = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self.stop_event.is_set() and len(self.latencies_ms) < self.max_count:
            if time.monotonic() > deadline:
                return
            t = time.perf_counter()
            try:
                status, _ = http_get(self.port, self.path, timeout_s=5)
            except OSError:
                status = 0
            if status == 200:
                self.latencies_ms.append((time.perf_counter() - t) * 1000)
            else:
                self.failures += 1
            self.stop_event.wait(self.interval_s)


class ProcessSampler:
    """The same sampling in a child process (``--sample``): the fake WhatsApp, which runs
    in this process and serializes every chunk, cannot delay its requests through this
    process's GIL. Stopped by closing its stdin; prints its latencies as JSON."""

    def __init__(self, port: int, path: str, interval_s: float) -> None:
        argv = [sys.executable, __file__, "--sample", f"{port},{path},{interval_s}"]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO)
        )
        self.latencies_ms: list[float] = []
        self.failures = 0

    def stop(self) -> None:
        out, _ = self.proc.communicate(timeout=60)  # closes its stdin first
        data = json.loads(out.strip().splitlines()[-1])
        self.latencies_ms, self.failures = data["latencies_ms"], data["failures"]


def sample_main(spec: str) -> int:
    """Child process of ProcessSampler: GET ``path`` every ``interval`` s until stdin
    closes (at most 100,000 samples, 900 s)."""
    port_s, path, interval_s = spec.split(",")
    sampler = Sampler(int(port_s), float(interval_s), path=path)
    sampler.start()
    sys.stdin.read()  # until the parent closes it
    sampler.stop_event.set()
    sampler.join(10)
    print(json.dumps({"latencies_ms": sampler.latencies_ms, "failures": sampler.failures}))
    return 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def measure_appliance(args: argparse.Namespace, fake: Any) -> list[dict[str, Any]]:
    """One installation; for each ``--pause-ms`` value in turn: configured, started, a new
    account linked, the history imported and measured, stopped."""
    inst = Installation.create()
    try:
        site = next((inst.venv / "lib").glob("python3*/site-packages"))
        (site / "appliance_bench_fakes.pth").write_text(f"{REPO / 'tests' / 'fakes'}\n")
        os.environ["APPLIANCE_FAKE_WHATSAPP_ADDR"] = fake.address  # appliancectl hands it on
        runs = []
        plan = [(p, nice) for nice in args.nices for p in args.pauses]
        for n, (pause, nice) in enumerate(plan):
            inst.configure(
                {
                    "ENABLE_TEST_ROUTES": "true",
                    "WEB_CLIENT_FACTORY": "fake_whatsapp:client_factory",
                    "API_PROCESSES": "2",
                    "API_RATE_LIMIT_PER_MIN": "1000000",
                    "API_RATE_LIMIT_PER_ADDR_PER_MIN": "1000000",
                    **({"HISTORY_BATCH_PAUSE_MS": str(pause)} if pause is not None else {}),
                    **({"HISTORY_MAP_NICE": str(nice)} if nice is not None else {}),
                }
            )
            pids = inst.start()
            try:
                result = import_once(inst, fake, args, f"{ACCOUNT}{n}", pids)
            finally:
                inst.stop()
            runs.append({"pause_ms": pause, "map_nice": nice, **result})
        return runs
    finally:
        inst.remove()


def import_once(
    inst: Installation, fake: Any, args: argparse.Namespace, account: str, pids: dict[str, int]
) -> dict[str, Any]:
    key = inst.ctl("api-keys", "create", f"bench-{account}", "--role", "admin").stdout.strip()
    status, body = api(
        inst.port,
        "POST",
        "/api/accounts",
        {"id": account, "name": "history", "engine": "web", "settings": {}},
        key=key,
    )
    if status != 201:
        raise RuntimeError(f"creating the web account failed: {status} {body}")
    fake.scan(account, phone=PHONE, timeout_s=60)
    wait_for(lambda: account_status(inst.port, key, account)["state"] == "connected", 60, "link")
    rows = history_rows(args.messages, args.chats)
    data = chunks(rows, args.chunk)
    idle = Sampler(inst.port)  # the same machine before the import: its own load
    idle_child = ProcessSampler(inst.port, "/healthz", 0.02)
    idle.start()
    time.sleep(args.idle_s)
    idle.stop_event.set()
    idle.join(10)
    idle_child.stop()
    # During the import: /healthz (API only: no IPC, no database) from a child process
    # (what the goal judges) and from a thread of this process (as earlier runs measured:
    # it shares the GIL with the fake WhatsApp); /readyz (an IPC ping the worker's event
    # loop answers, plus a database read) shows the worker's side.
    sampler = Sampler(inst.port)
    child = ProcessSampler(inst.port, "/healthz", 0.02)
    ready = ProcessSampler(inst.port, "/readyz", 0.1)
    sampler.start()
    log = inst.prefix / "var/log/appliance/worker.log"
    log_from = log.stat().st_size if log.exists() else 0
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    bench_before = time.process_time()
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    for chunk in data:
        fake.push_history(account, chunk)

    def done() -> bool:
        sync = account_status(inst.port, key, account).get("sync") or {}
        return int(sync.get("messages") or 0) >= args.messages

    wait_for(done, args.max_s, "the import", interval_s=0.1)
    elapsed = time.monotonic() - started
    cpu = {
        name: round((cpu_seconds(pid) - cpu_before[name]) / elapsed, 3)
        for name, pid in pids.items()
    }
    cpu["bench"] = round((time.process_time() - bench_before) / elapsed, 3)
    load_after = os.getloadavg()[0]
    sampler.stop_event.set()
    sampler.join(10)
    child.stop()
    ready.stop()
    sync = account_status(inst.port, key, account)["sync"]
    return {
        "messages": sync["messages"],
        "chunks": sync["chunks"],
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(sync["messages"] / elapsed, 1),
        "healthz": summary(child),
        "healthz_thread": summary(sampler),
        "readyz": summary(ready),
        "healthz_idle": summary(idle_child),
        "healthz_idle_thread": summary(idle),
        "cores": cpu,  # CPU seconds per second of import, per process
        "load": [round(load_before, 2), round(load_after, 2)],
        "phases": chunk_phases(log, log_from),
    }


def chunk_phases(log: Path, offset: int) -> dict[str, Any]:
    """The worker's per-chunk timings ("history chunk imported": map_ms, store_ms)."""
    maps: list[float] = []
    stores: list[float] = []
    try:
        with log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        if "history chunk imported" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "map_ms" in record:
            maps.append(float(record["map_ms"]))
            stores.append(float(record["store_ms"]))
    return {
        "chunks": len(maps),
        "map_ms_p50": percentile(maps, 0.5),
        "map_ms_max": max(maps) if maps else None,
        "store_ms_p50": percentile(stores, 0.5),
        "store_ms_max": max(stores) if stores else None,
        "map_s_total": round(sum(maps) / 1000, 2),
        "store_s_total": round(sum(stores) / 1000, 2),
    }


def summary(sampler: Sampler) -> dict[str, Any]:
    values = sampler.latencies_ms
    return {
        "samples": len(values),
        "failures": sampler.failures,
        "p50_ms": percentile(values, 0.5),
        "p95_ms": percentile(values, 0.95),
        "max_ms": round(max(values), 2) if values else None,
    }


def account_status(port: int, key: str, account: str) -> dict[str, Any]:
    status, body = api(port, "GET", f"/api/accounts/{account}/status", key=key)
    if status != 200:
        raise RuntimeError(f"status: {status} {body}")
    return dict(body)


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The same rows straight into SQLite with the appliance's schema."""
    import asyncio

    from appliance.db.database import Database
    from appliance.db.migrate import migrate

    with tempfile.TemporaryDirectory(prefix="histbase-") as tmp:
        path = Path(tmp) / "baseline.db"

        async def schema() -> None:
            db = await Database.open(path)
            try:
                await migrate(db.writer)
                async with db.write() as conn:
                    await conn.execute(
                        "INSERT INTO accounts (id, name, engine, created_at, updated_at) "
                        "VALUES (?, 'b', 'web', 0, 0)",
                        (ACCOUNT,),
                    )
            finally:
                await db.close()

        asyncio.run(schema())
        rows = history_rows(args.messages, args.chats)
        conn = sqlite3.connect(str(path), isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        now = time.time()
        started = time.perf_counter()
        cpu_started = time.process_time()
        for i in range(0, len(rows), BATCH):
            part = rows[i : i + BATCH]
            conn.execute("BEGIN IMMEDIATE")
            for chat, wa_id, from_me, ts in part:
                body = f"history message {wa_id}"
                conn.execute(
                    "INSERT INTO messages (account_id, id, chat_jid, direction, sender_jid, "
                    "type, body, content, status, wa_timestamp, created_at, updated_at, "
                    "origin, history) VALUES (?, ?, ?, ?, ?, 'text', ?, ?, ?, ?, ?, ?, ?, 1) "
                    "ON CONFLICT (account_id, id) DO NOTHING",
                    (
                        ACCOUNT,
                        wa_id,
                        chat,
                        "out" if from_me else "in",
                        None if from_me else chat,
                        body,
                        json.dumps({"type": "text", "text": {"body": body}}),
                        "read" if from_me else "received",
                        ts,
                        now,
                        now,
                        "phone" if from_me else None,
                    ),
                )
            for chat in {r[0] for r in part}:
                conn.execute(
                    "INSERT INTO chats (account_id, jid, created_at, last_message_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (account_id, jid) DO UPDATE SET "
                    "last_message_at = MAX(COALESCE(last_message_at, 0), excluded.last_message_at)",
                    (ACCOUNT, chat, now, now),
                )
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        conn.close()
    return {
        "rows": len(rows),
        "elapsed_s": round(elapsed, 3),
        # CPU too: on a machine whose load moves, the import and the baseline may run
        # at different loads; rows per CPU second compares them without it.
        "cpu_s": round(cpu_s, 3),
        "load": round(os.getloadavg()[0], 2),
        "rate_per_s": round(len(rows) / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI)")
    parser.add_argument("--messages", type=int, help="history size (100000; smoke 3000)")
    parser.add_argument("--chats", type=int, help="chats (100; smoke 10)")
    parser.add_argument("--chunk", type=int, help="messages per chunk (5000; smoke 1000)")
    parser.add_argument("--max-s", type=float, default=600.0, help="import time cap")
    parser.add_argument("--idle-s", type=float, help="/healthz before the import (10; smoke 2)")
    parser.add_argument(
        "--pause-ms",
        default="",
        help="HISTORY_BATCH_PAUSE_MS values, comma-separated, each measured in turn in the "
        "same installation ('default': the appliance's own); the goals judge the first",
    )
    parser.add_argument(
        "--map-nice",
        default="",
        help="HISTORY_MAP_NICE values, comma-separated, each measured in turn (after "
        "--pause-ms's values) in the same installation ('default': the appliance's own; "
        "0 and 10 repeated interleave without and with the lowered priority)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--sample", help=argparse.SUPPRESS)  # PORT,PATH,INTERVAL: a child
    args = parser.parse_args(argv)
    if args.sample:
        return sample_main(args.sample)
    args.messages = args.messages or (3000 if args.smoke else 100_000)
    args.chats = args.chats or (10 if args.smoke else 100)
    args.chunk = args.chunk or (1000 if args.smoke else 5000)
    args.idle_s = args.idle_s or (2.0 if args.smoke else 10.0)
    args.pauses = [
        None if v.strip() in ("", "default") else int(v) for v in args.pause_ms.split(",")
    ]
    args.nices = [
        None if v.strip() in ("", "default") else int(v) for v in args.map_nice.split(",")
    ]
    exit_on_sigterm()
    sys.path.insert(0, str(REPO))
    from tests.fakes.fake_whatsapp import FakeWhatsAppServer

    with FakeWhatsAppServer() as fake:
        runs = measure_appliance(args, fake)
    base = baseline(args)
    appliance = runs[0]
    ratio = round(appliance["rate_per_s"] / base["rate_per_s"], 3)
    p95 = appliance["healthz"]["p95_ms"]
    goals = {"ratio_ge_0.3": ratio >= 0.3, "healthz_p95_lt_50ms": p95 is not None and p95 < 50}
    print(f"bare SQLite {base['rate_per_s']}/s (the baseline)")
    for run in runs:
        pause = "default" if run["pause_ms"] is None else run["pause_ms"]
        nice = "default" if run["map_nice"] is None else run["map_nice"]
        hz, idle = run["healthz"], run["healthz_idle"]
        print(
            f"HISTORY_BATCH_PAUSE_MS {pause}, HISTORY_MAP_NICE {nice}: {run['messages']} "
            f"messages in {run['chunks']} "
            f"chunks, {run['elapsed_s']} s = {run['rate_per_s']}/s through the worker, ratio "
            f"{round(run['rate_per_s'] / base['rate_per_s'], 3)} (goal >= 0.3); /healthz "
            f"during the import: {hz['samples']} samples, p50 {hz['p50_ms']} ms, p95 "
            f"{hz['p95_ms']} ms (goal < 50), max {hz['max_ms']} ms, failures {hz['failures']}; "
            f"before it (the machine's own load): p50 {idle['p50_ms']} ms, "
            f"p95 {idle['p95_ms']} ms; from a thread beside the fake: p95 "
            f"{run['healthz_thread']['p95_ms']} ms (idle {run['healthz_idle_thread']['p95_ms']});"
            f" /readyz p95 {run['readyz']['p95_ms']} ms; cores {run['cores']}; "
            f"load {run['load']}; worker phases {run['phases']}"
        )
    result = {
        "bench": "history_sync",
        "smoke": args.smoke,
        "revision": source_revision(),
        "appliance": appliance,
        "runs": runs,
        "baseline": base,
        "ratio": ratio,
        "goals": goals,
    }
    print(json.dumps(result))
    return 1 if args.check and not all(goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
