#!/usr/bin/env python3
"""The database side of ``POST .../messages`` in one process, old way against new way.

Question: what does storing one send cost (message row, chat, queue job, and with an
``Idempotency-Key`` the key's claim and stored answer), and what did running it in the
database thread change, measured in one sitting on a machine too busy for absolute
figures?

Each variant runs ``--concurrency`` tasks (like requests in flight across keep-alive
connections) that each store sends back to back, against its own fresh migrated
database file (SYNCHRONOUS=FULL unless ``--sync NORMAL``), ``--sends`` in all:

* ``loop``: ``sends.accept_send`` through ``Database.write_batched`` with every
  statement a round trip to aiosqlite's thread (the code before this change); with a
  key, its claim in its own ``Database.write()`` transaction, then the send, then the
  stored answer (``finish_idempotency_key``), as ``api/idempotency.py`` did.
* ``thread``: the same work through ``write_batched(..., in_thread=True)``: each
  batch's statements in one round trip; the key's claim group-committed too (what the
  API does now).

Variants alternate (loop, thread, loop, thread, ... ``--rounds``); reported per variant:
sends/s, p50/p95 per send, **process CPU per send** (all threads), and the ratios
thread/loop. HTTP parsing, validation and auth are the same in both and not included.

    python bench/send_accept.py             # about 30 s
    python bench/send_accept.py --smoke     # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ACCOUNT = "bench"


async def _open(path: Path, sync: str) -> Any:
    from appliance.db.database import Database
    from appliance.db.migrate import migrate
    from appliance.messaging import store

    db = await Database.open(path, synchronous=sync)
    await migrate(db.writer)
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
    return db


async def variant(path: Path, sync: str, mode: str, keyed: bool, sends: int, conc: int) -> dict:
    from appliance.auth import store as auth_store
    from appliance.messaging import sends as sends_mod
    from appliance.messaging.models import SendMessageIn

    db = await _open(path, sync)
    in_thread = mode == "thread"
    latencies: list[float] = []
    counter = iter(range(sends))

    async def one(n: int) -> None:
        data = SendMessageIn.model_validate(
            {"to": f"+1555{n % 10000:07d}", "type": "text", "text": {"body": f"send {n}"}}
        )
        now = time.time()
        scope, key = "key:1", f"k{n}"
        client_key = f"{scope}|{key}" if keyed else None
        started = time.perf_counter()
        if keyed:

            async def claim(conn: Any) -> Any:
                row = await auth_store.idempotency_record(conn, scope, key, now=now)
                if row is None:
                    await auth_store.claim_idempotency_key(
                        conn, scope, key, fingerprint="f" * 64, now=now, ttl_s=86400
                    )
                return row

            if in_thread:
                await db.write_batched(claim, in_thread=True)
            else:
                async with db.write() as conn:
                    await claim(conn)

        async def store_send(conn: Any) -> Any:
            return await sends_mod.accept_send(
                conn, account_id=ACCOUNT, to=data.to, message=data, client_key=client_key, now=now
            )

        accepted = await db.write_batched(store_send, in_thread=in_thread)
        if keyed:
            body = json.dumps({"id": accepted.message_id}).encode()
            await db.write_batched(
                lambda conn: auth_store.finish_idempotency_key(
                    conn, scope, key, status=202, content_type="application/json", body=body
                ),
                in_thread=in_thread,
            )
        latencies.append((time.perf_counter() - started) * 1000)

    async def client() -> None:
        for n in counter:
            await one(n)

    cpu0, t0 = time.process_time(), time.monotonic()
    async with asyncio.timeout(300):  # bounded by the count and by time
        await asyncio.gather(*(client() for _ in range(conc)))
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    stored = await db.scalar("SELECT COUNT(*) FROM messages")
    await db.close()
    latencies.sort()
    return {
        "sends": len(latencies),
        "stored": stored,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[int(len(latencies) * 0.95)],
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    sends = sum(r["sends"] for r in runs)
    elapsed = sum(r["elapsed_s"] for r in runs)
    return {
        "sends": sends,
        "ok": all(r["stored"] == r["sends"] for r in runs),
        "sends_per_s": round(sends / elapsed, 1),
        "sends_per_s_per_round": [round(r["sends"] / r["elapsed_s"], 1) for r in runs],
        "cpu_us_per_send": round(sum(r["cpu_s"] for r in runs) / sends * 1e6, 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p95_ms": round(statistics.median(r["p95_ms"] for r in runs), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run (seconds)")
    parser.add_argument("--sends", type=int, help="sends per variant and round (1000; smoke 100)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, help="alternating rounds (2; smoke 1)")
    parser.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args(argv)
    sends = args.sends or (100 if args.smoke else 1000)
    rounds = args.rounds or (1 if args.smoke else 2)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-send-accept-") as tmp:
        n = 0
        for r in range(rounds):
            order = ["loop", "thread"] if r % 2 == 0 else ["thread", "loop"]
            for keyed in (False, True):
                for mode in order:
                    n += 1
                    name = f"{mode}{'_idempotency_key' if keyed else ''}"
                    run = asyncio.run(
                        variant(
                            Path(tmp) / f"{n}.db", args.sync, mode, keyed, sends, args.concurrency
                        )
                    )
                    results.setdefault(name, []).append(run)
    combined = {name: combine(runs) for name, runs in results.items()}
    print(
        f"send_accept: {sends} sends x {rounds} round(s) per variant, {args.concurrency} at a"
        f" time, SYNCHRONOUS={args.sync}, variants alternating"
    )
    for name, c in combined.items():
        print(
            f"  {name:<24} {c['sends_per_s']:>8.1f} sends/s  p50 {c['p50_ms']:.1f} ms"
            f"  p95 {c['p95_ms']:.1f} ms  CPU {c['cpu_us_per_send']:.0f} us/send"
            f"  (per round: {', '.join(map(str, c['sends_per_s_per_round']))})"
        )
    ratios: dict[str, dict[str, float]] = {}
    for suffix in ("", "_idempotency_key"):
        old, new = combined[f"loop{suffix}"], combined[f"thread{suffix}"]
        ratios[f"thread/loop{suffix}"] = {
            "sends_per_s": round(new["sends_per_s"] / old["sends_per_s"], 3),
            "cpu_per_send": round(new["cpu_us_per_send"] / old["cpu_us_per_send"], 3),
        }
    key_cost = round(
        combined["thread_idempotency_key"]["cpu_us_per_send"]
        / combined["thread"]["cpu_us_per_send"],
        3,
    )
    for name, r in ratios.items():
        print(f"  {name}: sends/s {r['sends_per_s']}x, CPU per send {r['cpu_per_send']}x")
    print(f"  Idempotency-Key CPU per send over a plain send (thread): {key_cost}x")
    ok = all(c["ok"] for c in combined.values())
    out = {
        "bench": "send_accept",
        "sends": sends,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "sync": args.sync,
        "results": combined,
        "ratios": ratios,
        "idempotency_key_cpu_ratio": key_cost,
        "ok": ok,
    }
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
