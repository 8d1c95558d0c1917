#!/usr/bin/env python3
"""Inbox queries on a large database: p50/p95 of the chat list under each common filter,
and of full-text search, through the HTTP API of the installed appliance.

The database is built for the run (SQLite, the appliance's own schema after its
migrations): 20 accounts, 50,000 chats, 2,000,000 messages (with the full-text index
their triggers maintain), 100 users; smoke: 2 accounts, 400 chats, 8,000 messages,
5 users. Rows are inserted straight into the file while the appliance is stopped, then
the appliance starts on it and the queries run through its API with an admin key and
with an agent's key (filters such as ``assignee=me`` are the caller's).

Which filters exist is read from the appliance's own OpenAPI document (``/openapi.json``)
so that the script measures whatever revision it installs: a filter the revision does not
have is reported as ``absent``. Each query runs sequentially (one keep-alive connection,
so the figure is the server's latency, not a queue), bounded by a count and a time limit.

Goal (issue 13): p95 under 50 ms for each.

    python bench/inbox_queries.py [--smoke] [--source REV] [--check]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Installation, exit_on_sigterm, source_revision

GOAL_P95_MS = 50.0
# Turkish words and names on purpose (dotless i included): the original's users write Turkish.
WORDS = (
    "merhaba",
    "fiyat",
    "sipariş",
    "kargo",
    "teslimat",
    "iade",
    "hello",
    "price",
    "order",
    "shipping",
    "delivery",
    "refund",
    "invoice",
    "fatura",
    "randevu",
    "appointment",
    "adres",
    "address",
    "teşekkürler",
    "thanks",
    "yarın",  # noqa: RUF001
    "tomorrow",
    "indirim",
    "discount",
    "stok",
    "stock",
    "renk",
    "colour",
    "beden",
    "size",
    "ödeme",
    "payment",
    "havale",
    "transfer",
)
FIRST = (
    "Ahmet",
    "Ayşe",
    "Mehmet",
    "Fatma",
    "Ali",
    "Zeynep",
    "Mustafa",
    "Elif",
    "Can",
    "Deniz",
    "Anna",
    "John",
)
LAST = (
    "Yılmaz",  # noqa: RUF001
    "Kaya",
    "Demir",
    "Şahin",
    "Çelik",
    "Yıldız",  # noqa: RUF001
    "Öztürk",
    "Aydın",  # noqa: RUF001
    "Smith",
    "Müller",
    "Rossi",
)


@dataclass(frozen=True)
class Scale:
    accounts: int
    chats: int
    messages: int
    users: int
    requests: int  # per query
    max_seconds: float  # per query


FULL = Scale(accounts=20, chats=50_000, messages=2_000_000, users=100, requests=200,
             max_seconds=60)  # fmt: skip
SMOKE = Scale(accounts=2, chats=400, messages=8_000, users=5, requests=15, max_seconds=10)


def seed(db_path: Path, scale: Scale, rng: random.Random) -> dict[str, Any]:
    """Insert accounts, users and grants, contacts, chats and messages straight into the
    appliance's database (its migrations already applied). Returns what the queries
    need: account ids, the agent user ids, sample names and words."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")  # a build step, not what is measured
    cols = {r[1] for r in conn.execute("PRAGMA table_info(chats)")}
    now = time.time()
    accounts = [f"acct{i:02d}" for i in range(scale.accounts)]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO accounts (id, name, engine, desired, created_at, updated_at) "
        "VALUES (?, ?, 'sandbox', 'disconnected', ?, ?)",
        [(a, f"Account {a}", now, now) for a in accounts],
    )
    agents = []
    for i in range(scale.users):
        cur = conn.execute(
            "INSERT INTO users (username, password_hash, role, all_accounts, active, "
            "created_at, updated_at) VALUES (?, 'x', 'agent', 0, 1, ?, ?)",
            (f"agent{i:03d}", now, now),
        )
        agents.append(cur.lastrowid)
        # Each agent works a few accounts.
        for account in rng.sample(accounts, min(3, len(accounts))):
            conn.execute("INSERT INTO user_grants (user_id, account_id) VALUES (?, ?)",
                         (cur.lastrowid, account))  # fmt: skip
    conn.execute("COMMIT")

    chats: list[tuple[str, str]] = []
    names: list[str] = []
    conn.execute("BEGIN")
    for c in range(scale.chats):
        account = accounts[c % len(accounts)]
        jid = f"90555{c:07d}@s.whatsapp.net"
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        names.append(name)
        chats.append((account, jid))
        conn.execute(
            "INSERT INTO contacts (account_id, jid, phone, name, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (account, jid, f"+90555{c:07d}", name, now),
        )
        conn.execute(
            "INSERT INTO chats (account_id, jid, name, is_group, archived, unread_count, "
            "created_at) VALUES (?, ?, ?, 0, ?, 0, ?)",
            (account, jid, name, int(rng.random() < 0.2), now),
        )
    conn.execute("COMMIT")

    per_chat = max(1, scale.messages // max(1, scale.chats))
    t0 = now - 86_400 * 365
    batch: list[tuple[Any, ...]] = []
    last: dict[tuple[str, str], tuple[str, float]] = {}
    seq = 0

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO messages (account_id, id, chat_jid, direction, sender_jid, type, body, "
            "content, status, wa_timestamp, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'text', ?, ?, ?, ?, ?, ?)",
            batch,
        )
        conn.execute("COMMIT")
        batch.clear()

    # Messages interleave across chats in time, as real traffic does.
    for _ in range(per_chat):
        for account, jid in chats:
            seq += 1
            ts = t0 + seq * (86_400 * 365 / (per_chat * len(chats)))
            inbound = rng.random() < 0.6
            body = " ".join(rng.choices(WORDS, k=rng.randint(2, 9)))
            mid = f"BENCH{seq:010d}"
            batch.append((
                account, mid, jid, "in" if inbound else "out", jid if inbound else None, body,
                json.dumps({"type": "text", "text": {"body": body}}),
                "received" if inbound else "read", ts, ts, ts,
            ))  # fmt: skip
            last[(account, jid)] = (mid, ts)
            if len(batch) >= 20_000:
                flush()
    if batch:
        flush()
    conn.execute("BEGIN")
    conn.executemany(
        "UPDATE chats SET last_message_id = ?, last_message_at = ?, unread_count = ? "
        "WHERE account_id = ? AND jid = ?",
        [(mid, ts, rng.choice((0, 0, 0, 1, 3)), a, j) for (a, j), (mid, ts) in last.items()],
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return {"accounts": accounts, "agents": agents, "names": names, "chat_columns": sorted(cols)}


def chat_list_params(spec: dict[str, Any]) -> set[str]:
    """The query parameters the revision's chat list accepts, from its OpenAPI document."""
    path = spec.get("paths", {}).get("/api/accounts/{account}/chats", {})
    return {p["name"] for p in path.get("get", {}).get("parameters", []) if p.get("in") == "query"}


def measure(client: httpx.Client, key: str, urls: list[str], scale: Scale) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + scale.max_seconds
    for i in range(scale.requests):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        resp = client.get(urls[i % len(urls)], headers={"Authorization": f"Bearer {key}"})
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(p95, 2),
        "statuses": statuses,
        "goal_met": p95 < GOAL_P95_MS and set(statuses) == {200},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = SMOKE if args.smoke else FULL
    rng = random.Random(13)
    inst = Installation.create(source=args.source)
    try:
        inst.configure({
            "API_PROCESSES": "2",
            "API_RATE_LIMIT_PER_MIN": "1000000",
            "API_RATE_LIMIT_PER_ADDR_PER_MIN": "1000000",
        })  # fmt: skip
        inst.start()  # migrations run; then the appliance stops while the data goes in
        admin_key = inst.ctl("api-keys", "create", "bench", "--role", "admin").stdout.strip()
        inst.stop()
        db_path = next(inst.prefix.rglob("appliance.db"))
        t0 = time.monotonic()
        seeded = seed(db_path, scale, rng)
        seed_s = time.monotonic() - t0
        print(f"  seeded {scale.messages:,} messages in {seed_s:.0f} s", file=sys.stderr)
        inst.start()
        accounts = seeded["accounts"]
        agent_account = accounts[0]
        agent_key = inst.ctl(
            "api-keys", "create", "bench-agent", "--role", "agent", "--account", agent_account
        ).stdout.strip()
        base = f"http://127.0.0.1:{inst.port}"
        results: dict[str, Any] = {}
        with httpx.Client(base_url=base, timeout=30) as client:
            spec = client.get("/openapi.json").json()
            params = chat_list_params(spec)
            name_words = [n.split()[0] for n in rng.sample(seeded["names"], 20)]
            queries: list[tuple[str, str | None, str, list[str]]] = [
                # (name, required query parameter, which key, urls)
                ("chats: newest first", None, "admin",
                 [f"/api/accounts/{a}/chats?limit=50" for a in accounts]),
                ("chats: not archived", "archived", "admin",
                 [f"/api/accounts/{a}/chats?limit=50&archived=false" for a in accounts]),
                ("chats: archived", "archived", "admin",
                 [f"/api/accounts/{a}/chats?limit=50&archived=true" for a in accounts]),
                ("chats: unread", "unread", "agent",
                 [f"/api/accounts/{agent_account}/chats?limit=50&unread=true"]),
                ("chats: status open", "status", "admin",
                 [f"/api/accounts/{a}/chats?limit=50&status=open" for a in accounts]),
                ("chats: assigned to me", "assignee", "agent",
                 [f"/api/accounts/{agent_account}/chats?limit=50&assignee=me"]),
                ("chats: unassigned", "assignee", "admin",
                 [f"/api/accounts/{a}/chats?limit=50&assignee=none" for a in accounts]),
                ("chats: by name", "q", "admin",
                 [f"/api/accounts/{accounts[i % len(accounts)]}/chats?limit=50&q={w}"
                  for i, w in enumerate(name_words)]),
                ("messages of a chat", None, "admin",
                 [f"/api/accounts/{accounts[0]}/chats/90555{c:07d}@s.whatsapp.net/messages"
                  f"?limit=50" for c in range(0, min(scale.chats, 2000), len(accounts))]),
                ("search: one account", None, "admin",
                 [f"/api/accounts/{a}/search?q={w}&limit=50"
                  for a, w in zip(accounts * 3, WORDS, strict=False)]),
                ("search: every account", None, "admin",
                 [f"/api/search?q={w}&limit=50" for w in WORDS]),
            ]  # fmt: skip
            keys = {"admin": admin_key, "agent": agent_key}
            for name, needs, who, urls in queries:
                if needs is not None and needs not in params:
                    results[name] = {"absent": f"no `{needs}` parameter in this revision"}
                    continue
                measure(client, keys[who], urls[:3], Scale(**{**scale.__dict__,
                        "requests": 3}))  # fmt: skip
                results[name] = measure(client, keys[who], urls, scale)
        return {"scale": scale.__dict__, "seed_s": round(seed_s, 1), "queries": results}
    finally:
        inst.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny database, few requests (CI)")
    parser.add_argument(
        "--source", help="install this git revision (e.g. HEAD~3) instead of the work tree"
    )
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a p95 >= {GOAL_P95_MS} ms")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    t0 = time.monotonic()
    out = run(args)
    scale = out["scale"]
    print(
        f"inbox_queries: {scale['accounts']} accounts, {scale['chats']:,} chats, "
        f"{scale['messages']:,} messages, {scale['users']} users; "
        f"sequential requests on one keep-alive connection, 2 API processes"
    )
    measured = []
    for name, r in out["queries"].items():
        if "absent" in r:
            print(f"  {name:<24} absent ({r['absent']})")
            continue
        measured.append(r)
        flag = "" if r["goal_met"] else "  NOT met"
        print(
            f"  {name:<24} p50 {r['p50_ms']:>7.2f} ms  p95 {r['p95_ms']:>7.2f} ms  "
            f"({r['requests']} requests, statuses {r['statuses']}){flag}"
        )
    print(f"  goal: p95 < {GOAL_P95_MS:.0f} ms for each; wall time {time.monotonic() - t0:.0f} s")
    out.update(
        smoke=args.smoke,
        source=args.source or "work tree",
        revision=source_revision(args.source),
        goal_p95_ms=GOAL_P95_MS,
        goal_met=all(r["goal_met"] for r in measured),
    )
    print(json.dumps(out, separators=(",", ":")))
    return 1 if args.check and not out["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
