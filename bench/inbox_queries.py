#!/usr/bin/env python3
"""Inbox queries on a large database: p50/p95 of the chat list under each common filter,
and of full-text search, through the HTTP API of the installed appliance.

The database is built for the run (SQLite, the appliance's own schema after its
migrations): 20 accounts, 50,000 chats, 2,000,000 messages (with the full-text index
their triggers maintain), 100 users; smoke: 2 accounts, 400 chats, 8,000 messages,
5 users; with the team inbox's state (statuses, assignees, read positions, three tags
on 1%, 30% and 5% of the chats and their contacts, a note on every fourth chat).
Rows are inserted straight into the file while the appliance is stopped, then
the appliance starts on it and the queries run through its API with an admin key and
with an agent's key (filters such as ``assignee=me`` are the caller's).

Which filters exist is read from the appliance's own OpenAPI document (``/openapi.json``)
so that the script measures whatever revision it installs: a filter the revision does not
have is reported as ``absent``. Each query runs sequentially (one keep-alive connection,
so the figure is the server's latency, not a queue), bounded by a count and a time limit.

Goal (issue 13): p95 under 50 ms for each.

    python bench/inbox_queries.py [--smoke] [--source REV] [--check]
        [--keep-database PATH | --database PATH] [--only PREFIX ...]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Installation, cpu_seconds, exit_on_sigterm, source_revision

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
    granted: dict[str, list[int]] = {}
    for i in range(scale.users):
        cur = conn.execute(
            "INSERT INTO users (username, password_hash, role, all_accounts, active, "
            "created_at, updated_at) VALUES (?, 'x', 'agent', 0, 1, ?, ?)",
            (f"agent{i:03d}", now, now),
        )
        agents.append(cur.lastrowid)
        # Each agent works a few accounts; the first one (the agent key's owner) the first.
        works = rng.sample(accounts, min(3, len(accounts)))
        if i == 0 and accounts[0] not in works:
            works[0] = accounts[0]
        for account in works:
            granted.setdefault(account, []).append(cur.lastrowid)
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
    seed_inbox(conn, chats, accounts, granted, agents[0], rng, now)
    # No ANALYZE: the appliance never runs it, so the planner works as it does in the field.
    conn.close()
    return {"accounts": accounts, "agents": agents, "names": names, "chat_columns": sorted(cols)}


TAGS = (("vip", 0.01), ("lead", 0.3), ("Çok önemli", 0.05))  # (name, share of chats)


def seed_inbox(
    conn: sqlite3.Connection,
    chats: list[tuple[str, str]],
    accounts: list[str],
    granted: dict[str, list[int]],
    me: int,
    rng: random.Random,
    now: float,
) -> None:
    """The team inbox's state: statuses, assignees (``me`` works the first account),
    inbound positions, ``me``'s read positions (half read), tags on chats and their
    contacts, and a private note on every fourth chat."""
    conn.execute("BEGIN")
    rows = []
    for account, jid in chats:
        status = rng.choices(("open", "pending", "resolved", "snoozed"), (50, 15, 30, 5))[0]
        people = granted.get(account) or [None]
        assignee = rng.choice(people) if rng.random() < 0.6 else None
        rows.append((status, now + 86_400 if status == "snoozed" else None, assignee,
                     account, jid))  # fmt: skip
    conn.executemany(
        "UPDATE chats SET status = ?, snoozed_until = ?, assignee_id = ? "
        "WHERE account_id = ? AND jid = ?",
        rows,
    )
    conn.execute(
        "UPDATE chats SET last_inbound_seq = (SELECT MAX(m.seq) FROM messages m "
        "WHERE m.account_id = chats.account_id AND m.chat_jid = chats.jid "
        "AND m.direction = 'in')"
    )
    conn.execute(
        "INSERT INTO chat_reads (user_id, account_id, chat_jid, read_seq, read_at) "
        "SELECT ?, account_id, jid, last_inbound_seq, ? FROM chats "
        "WHERE account_id = ? AND last_inbound_seq IS NOT NULL AND abs(random()) % 2 = 0",
        (me, now, accounts[0]),
    )
    for account in accounts:
        for name, share in TAGS:
            tag_id = conn.execute(
                "INSERT INTO tags (account_id, name, name_key, color, created_at, updated_at) "
                "VALUES (?, ?, ?, '#336699', ?, ?) RETURNING id",
                (account, name, name.casefold(), now, now),
            ).fetchone()[0]
            tagged = [(account, j, tag_id, now) for a, j in chats
                      if a == account and rng.random() < share]  # fmt: skip
            conn.executemany(
                "INSERT INTO chat_tags (account_id, chat_jid, tag_id, created_at) "
                "VALUES (?, ?, ?, ?)",
                tagged,
            )
            conn.executemany(
                "INSERT INTO contact_tags (account_id, contact_jid, tag_id, created_at) "
                "VALUES (?, ?, ?, ?)",
                tagged,
            )
    conn.executemany(
        "INSERT INTO notes (account_id, chat_jid, author, author_name, author_user_id, body, "
        "created_at) VALUES (?, ?, ?, 'agent', ?, ?, ?)",
        [(a, j, f"user:{me}", me, " ".join(rng.choices(WORDS, k=rng.randint(3, 12))), now)
         for a, j in chats[::4]],
    )  # fmt: skip
    conn.execute("COMMIT")


def keep(db_path: Path, dest: Path) -> None:
    """A copy of the seeded database (one consistent file), for ``--database``."""
    dest.unlink(missing_ok=True)
    with sqlite3.connect(db_path) as src, sqlite3.connect(dest) as out:
        src.backup(out)


def reuse(source: Path, db_path: Path, rng: random.Random) -> dict[str, Any]:
    """Put a database kept by ``--keep-database`` in place of the fresh one, and read
    back what the queries need. Comparing two revisions in one sitting then measures
    both on the same rows, without seeding twice: a revision whose migrations are
    newer than the file's applies them when it starts (their time is not measured)."""
    with sqlite3.connect(db_path) as fresh:  # the installation's admin user owns the key
        fresh.row_factory = sqlite3.Row
        admin = fresh.execute("SELECT * FROM users WHERE username = 'admin'").fetchone()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(db_path) as out:
        src.backup(out)
    conn = sqlite3.connect(db_path)
    try:
        if admin is not None:
            cols = [c for c in admin.keys() if c != "id"]  # noqa: SIM118 (a Row iterates values)
            with conn:
                conn.execute(
                    f"INSERT OR IGNORE INTO users ({', '.join(cols)}) "
                    f"VALUES ({', '.join('?' * len(cols))})",
                    [admin[c] for c in cols],
                )
        accounts = [r[0] for r in conn.execute("SELECT id FROM accounts ORDER BY id")]
        agents = [r[0] for r in conn.execute("SELECT id FROM users WHERE role = 'agent' "
                                             "ORDER BY id")]  # fmt: skip
        names = [r[0] for r in conn.execute("SELECT name FROM chats ORDER BY rowid")]
        cols = sorted(r[1] for r in conn.execute("PRAGMA table_info(chats)"))
    finally:
        conn.close()
    rng.random()  # the seed's draws are not replayed: sample names from the file
    return {"accounts": accounts, "agents": agents, "names": names, "chat_columns": cols}


def migrate_file(inst: Installation, db_path: Path) -> None:
    """Apply the installed revision's newer migrations to a ``--database`` copy before
    the appliance starts: on a 2,000,000-message file they can take minutes (index
    rebuilds), longer than ``appliancectl start --wait`` gives the worker."""
    code = (
        "import asyncio, sys, aiosqlite\n"
        "from appliance.db.migrate import migrate\n"
        "async def main():\n"
        "    async with aiosqlite.connect(sys.argv[1], isolation_level=None) as conn:\n"
        "        print(await migrate(conn))\n"
        "asyncio.run(main())\n"
    )
    t0 = time.monotonic()
    result = subprocess.run(
        [str(inst.venv / "bin/python"), "-c", code, str(db_path)],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"migrating {db_path} failed:\n{result.stderr}")
    print(f"  migrations {result.stdout.strip()} applied in {time.monotonic() - t0:.0f} s",
          file=sys.stderr)  # fmt: skip


BASELINE = "baseline: /healthz"
CHATS = "/api/accounts/{account}/chats"
ALL_CHATS = "/api/chats"
COUNTS = "/api/accounts/{account}/inbox/counts"
CONTACTS = "/api/accounts/{account}/contacts"
NOTES_ONE = "/api/accounts/{account}/search/notes"
NOTES_ALL = "/api/search/notes"


def offers(spec: dict[str, Any], path: str, param: str | None) -> bool:
    """Whether the revision's OpenAPI document has this GET path (and query parameter)."""
    get = spec.get("paths", {}).get(path, {}).get("get")
    if get is None:
        return False
    return param is None or any(
        p.get("in") == "query" and p.get("name") == param for p in get.get("parameters", [])
    )


def measure(
    client: httpx.Client, key: str, urls: list[str], scale: Scale, api_pids: list[int]
) -> dict[str, Any]:
    """Sequential requests; wall p50/p95 and the API processes' CPU per request (CPU
    time is what the request costs; wall time on a loaded machine adds the wait)."""
    latencies: list[float] = []
    cpu0 = sum(cpu_seconds(p) for p in api_pids)
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + scale.max_seconds
    for i in range(scale.requests):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        resp = client.get(urls[i % len(urls)], headers={"Authorization": f"Bearer {key}"})
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
    cpu_ms = (sum(cpu_seconds(p) for p in api_pids) - cpu0) * 1000 / max(1, len(latencies))
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    return {
        "requests": len(latencies),
        "api_cpu_ms": round(cpu_ms, 2),
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
        inst.stop()
        db_path = next(inst.prefix.rglob("appliance.db"))
        t0 = time.monotonic()
        if args.database:  # a database seeded before (--keep-database), same scale
            seeded = reuse(Path(args.database), db_path, rng)
            migrate_file(inst, db_path)
        else:
            seeded = seed(db_path, scale, rng)
            if args.keep_database:
                keep(db_path, Path(args.keep_database))
        seed_s = time.monotonic() - t0
        print(f"  seeded {scale.messages:,} messages in {seed_s:.0f} s", file=sys.stderr)
        pids = inst.start()
        api_pids = [pid for name, pid in pids.items() if name.startswith("api")]
        # After the data went in: a database given with --database replaced the file.
        admin_key = inst.ctl("api-keys", "create", "bench", "--role", "admin").stdout.strip()
        accounts = seeded["accounts"]
        agent_account = accounts[0]
        agent_key = inst.ctl(
            "api-keys",
            "create",
            "bench-agent",
            "--role",
            "agent",
            "--account",
            agent_account,
            "--user",
            "agent000",  # the first agent: its chats are "mine"
        ).stdout.strip()
        base = f"http://127.0.0.1:{inst.port}"
        results: dict[str, Any] = {}
        with httpx.Client(base_url=base, timeout=30) as client:
            spec = client.get("/openapi.json").json()
            name_words = [n.split()[0] for n in rng.sample(seeded["names"], 20)]
            mine = agent_account
            chats = "/api/accounts/{a}/chats?limit=50"
            every = [chats.format(a=a) for a in accounts]
            # (name, (path, query parameter) that must exist, which key, urls)
            queries: list[tuple[str, tuple[str, str | None] | None, str, list[str]]] = [
                ("chats: newest first", None, "admin", every),
                ("chats: not archived", (CHATS, "archived"), "admin",
                 [f"{u}&archived=false" for u in every]),
                ("chats: archived", (CHATS, "archived"), "admin",
                 [f"{u}&archived=true" for u in every]),
                ("chats: unread", (CHATS, "unread"), "agent",
                 [f"{chats.format(a=mine)}&unread=true"]),
                ("chats: status open", (CHATS, "status"), "admin",
                 [f"{u}&status=open" for u in every]),
                ("chats: assigned to me", (CHATS, "assignee"), "agent",
                 [f"{chats.format(a=mine)}&assignee=me"]),
                ("chats: unassigned", (CHATS, "assignee"), "admin",
                 [f"{u}&assignee=none" for u in every]),
                ("chats: mine+open+unread", (CHATS, "assignee"), "agent",
                 [f"{chats.format(a=mine)}&assignee=me&status=open&unread=true"]),
                ("chats: tag (1% of chats)", (CHATS, "tag"), "admin",
                 [f"{u}&tag=vip" for u in every]),
                ("chats: tag (30%)", (CHATS, "tag"), "admin",
                 [f"{u}&tag=lead" for u in every]),
                ("chats: tag+unassigned+open", (CHATS, "tag"), "admin",
                 [f"{u}&tag=lead&assignee=none&status=open" for u in every]),
                ("chats: q name", (CHATS, "q"), "admin",
                 [f"{chats.format(a=accounts[i % len(accounts)])}&q={w}"
                  for i, w in enumerate(name_words)]),
                ("chats: q phone (1 chat)", (CHATS, "q"), "admin",
                 [f"{chats.format(a=accounts[c % len(accounts)])}&q=%2B90555{c:07d}"
                  for c in rng.sample(range(scale.chats), 20)]),
                ("chats: q no match", (CHATS, "q"), "admin",
                 [f"{u}&q=zzqx" for u in every]),
                ("all accounts: newest", (ALL_CHATS, None), "admin",
                 ["/api/chats?limit=50"]),
                ("all accounts: agent, open", (ALL_CHATS, "status"), "agent",
                 ["/api/chats?limit=50&status=open"]),
                ("all accounts: mine+unread", (ALL_CHATS, "assignee"), "agent",
                 ["/api/chats?limit=50&assignee=me&unread=true"]),
                ("all accounts: tag (30%)", (ALL_CHATS, "tag"), "admin",
                 ["/api/chats?limit=50&tag=lead"]),
                ("inbox counts: agent", (COUNTS, None), "agent",
                 [f"/api/accounts/{mine}/inbox/counts"]),
                ("inbox counts: admin", (COUNTS, None), "admin",
                 [f"/api/accounts/{a}/inbox/counts" for a in accounts]),
                ("contacts: tag (30%)", (CONTACTS, "tag"), "admin",
                 [f"/api/accounts/{a}/contacts?limit=50&tag=lead" for a in accounts]),
                ("contacts: q name", (CONTACTS, "q"), "admin",
                 [f"/api/accounts/{accounts[i % len(accounts)]}/contacts?limit=50&q={w}"
                  for i, w in enumerate(name_words)]),
                ("messages of a chat", None, "admin",
                 [f"/api/accounts/{accounts[0]}/chats/90555{c:07d}@s.whatsapp.net/messages"
                  f"?limit=50" for c in range(0, min(scale.chats, 2000), len(accounts))]),
                ("search: one account", None, "admin",
                 [f"/api/accounts/{a}/search?q={w}&limit=50"
                  for a, w in zip(accounts * 3, WORDS, strict=False)]),
                ("search: every account", None, "admin",
                 [f"/api/search?q={w}&limit=50" for w in WORDS]),
                ("search: two words", None, "admin",
                 [f"/api/search?q={w}+{v}&limit=50"
                  for w, v in zip(WORDS, WORDS[7:], strict=False)]),
                ("notes: one account", (NOTES_ONE, None), "admin",
                 [f"/api/accounts/{a}/search/notes?q={w}&limit=50"
                  for a, w in zip(accounts * 3, WORDS, strict=False)]),
                ("notes: every account", (NOTES_ALL, None), "admin",
                 [f"/api/search/notes?q={w}&limit=50" for w in WORDS]),
                # Not a goal: the cheapest answer, measured the same way, so a p95 over
                # the goal can be told apart from the machine's load.
                (BASELINE, None, "admin", ["/healthz"]),
            ]  # fmt: skip
            keys = {"admin": admin_key, "agent": agent_key}
            for name, needs, who, urls in queries:
                picked = not args.only or any(name.startswith(p) for p in args.only)
                if not picked and name != BASELINE:  # the baseline always runs
                    continue
                if needs is not None and not offers(spec, *needs):
                    results[name] = {"absent": f"no {needs} in this revision"}
                    continue
                measure(client, keys[who], urls[:3], Scale(**{**scale.__dict__,
                        "requests": 3}), api_pids)  # fmt: skip
                results[name] = measure(client, keys[who], urls, scale, api_pids)
        return {"scale": scale.__dict__, "seed_s": round(seed_s, 1), "queries": results}
    finally:
        inst.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny database, few requests (CI)")
    parser.add_argument(
        "--source", help="install this git revision (e.g. HEAD~3) instead of the work tree"
    )
    parser.add_argument(
        "--keep-database", metavar="PATH", help="save a copy of the seeded database here"
    )
    parser.add_argument(
        "--database",
        metavar="PATH",
        help="use this database (saved by --keep-database at the same scale) instead of "
        "seeding one: compare revisions on the same rows",
    )
    parser.add_argument(
        "--only",
        metavar="PREFIX",
        action="append",
        help="measure only the queries whose name starts with this (repeatable), "
        'e.g. --only "chats:" for the chat list of one account',
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
            print(f"  {name:<28} absent ({r['absent']})")
            continue
        if name != BASELINE:
            measured.append(r)
        flag = "" if r["goal_met"] or name == BASELINE else "  NOT met"
        print(
            f"  {name:<28} p50 {r['p50_ms']:>7.2f} ms  p95 {r['p95_ms']:>7.2f} ms  "
            f"API CPU {r['api_cpu_ms']:>6.2f} ms/req  "
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
