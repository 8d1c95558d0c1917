#!/usr/bin/env python3
"""The web panel's server time: the inbox page and a conversation page, signed in with
a cookie session, against ``GET /healthz`` in the same run (the ratio says what the
pages cost beyond the HTTP stack), on the installed appliance with two API processes.

The database is built with ``inbox_queries.seed`` (the appliance's schema after its
migrations, rows inserted while it is stopped): default 2 accounts, 5,000 chats,
100,000 messages; ``--full`` the issue's 20 accounts, 50,000 chats, 2,000,000
messages; ``--smoke`` 2 accounts, 400 chats, 8,000 messages. Requests run one after the
other on one keep-alive connection (the figure is the server's latency, not a queue),
bounded by a count and a time limit. Also reported: the panel's JavaScript and CSS as
shipped, gzip-compressed.

Goal (issue 15): p95 under 150 ms for pages.

    python bench/panel.py [--smoke | --full] [--source REV] [--check]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Installation, exit_on_sigterm, source_revision
from inbox_queries import Scale, seed

GOAL_P95_MS = 150.0
SMOKE = Scale(accounts=2, chats=400, messages=8_000, users=5, requests=20, max_seconds=15)
DEFAULT = Scale(accounts=2, chats=5_000, messages=100_000, users=10, requests=200, max_seconds=60)
FULL = Scale(accounts=20, chats=50_000, messages=2_000_000, users=100, requests=200,
             max_seconds=90)  # fmt: skip


def measure(client: httpx.Client, urls: list[str], scale: Scale) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    size = 0
    deadline = time.monotonic() + scale.max_seconds
    for i in range(scale.requests):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        resp = client.get(urls[i % len(urls)])
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        size = len(resp.content)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(p95, 2),
        "bytes": size,
        "statuses": statuses,
    }


def shipped(client: httpx.Client, page: str) -> dict[str, int]:
    """Bytes of the page's own scripts and stylesheets, gzip-compressed (level 6)."""
    out = {"js_gzip": 0, "css_gzip": 0}
    patterns = (("js", r'<script src="([^"]+)"'), ("css", r'<link rel="stylesheet" href="([^"]+)"'))
    for kind, pattern in patterns:
        for url in re.findall(pattern, page):
            body = client.get(url).content
            out[f"{kind}_gzip"] += len(gzip.compress(body, 6))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = SMOKE if args.smoke else FULL if args.full else DEFAULT
    rng = random.Random(15)
    inst = Installation.create(source=args.source)
    try:
        inst.configure({
            "API_PROCESSES": "2",
            "API_RATE_LIMIT_PER_MIN": "1000000",
            "API_RATE_LIMIT_PER_ADDR_PER_MIN": "1000000",
        })  # fmt: skip
        inst.start()  # migrations run and the admin user is made; then the data goes in
        inst.stop()
        db_path = next(inst.prefix.rglob("appliance.db"))
        t0 = time.monotonic()
        seeded = seed(db_path, scale, rng)
        seed_s = time.monotonic() - t0
        print(f"  seeded {scale.messages:,} messages in {seed_s:.0f} s", file=sys.stderr)
        inst.start()
        password = (inst.env_file.parent / "secrets" / "admin-password").read_text().strip()
        account = seeded["accounts"][0]
        n = len(seeded["accounts"])
        chats = [f"90555{c:07d}%40s.whatsapp.net" for c in range(0, min(scale.chats, 2000), n)]
        base = f"http://127.0.0.1:{inst.port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            signed = client.post("/auth/login", json={"username": "admin", "password": password})
            signed.raise_for_status()
            inbox = client.get(f"/panel/inbox?account={account}")
            assert inbox.status_code == 200 and "chat-list" in inbox.text, inbox.status_code
            opened = client.get(f"/panel/inbox?account={account}&chat={chats[0]}")
            assert opened.status_code == 200, opened.status_code
            assert 'id="composer"' in opened.text
            bytes_shipped = shipped(client, inbox.text)
            targets = {
                "healthz": ["/healthz"],
                "inbox page": [f"/panel/inbox?account={account}"],
                "conversation page": [f"/panel/inbox?account={account}&chat={c}" for c in chats],
            }
            results: dict[str, Any] = {}
            for name, urls in targets.items():
                measure(client, urls[:3], Scale(**{**scale.__dict__, "requests": 3}))  # warm
                results[name] = measure(client, urls, scale)
        health = results["healthz"]["p50_ms"]
        for name in ("inbox page", "conversation page"):
            r = results[name]
            r["ratio_to_healthz_p50"] = round(r["p50_ms"] / health, 1) if health else None
            r["goal_met"] = r["p95_ms"] < GOAL_P95_MS and set(r["statuses"]) == {200}
        return {
            "scale": scale.__dict__,
            "seed_s": round(seed_s, 1),
            "pages": results,
            "shipped": bytes_shipped,
        }
    finally:
        inst.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny database, few requests (CI)")
    size.add_argument("--full", action="store_true", help="50,000 chats, 2,000,000 messages")
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
        f"panel: {scale['accounts']} accounts, {scale['chats']:,} chats, "
        f"{scale['messages']:,} messages; signed-in cookie session, sequential requests on "
        f"one keep-alive connection, 2 API processes"
    )
    pages = out["pages"]
    for name, r in pages.items():
        ratio = r.get("ratio_to_healthz_p50")
        extra = f"  {ratio}x /healthz p50" if ratio is not None else ""
        flag = "" if r.get("goal_met", True) else "  NOT met"
        print(
            f"  {name:<18} p50 {r['p50_ms']:>7.2f} ms  p95 {r['p95_ms']:>7.2f} ms  "
            f"{r['bytes']:>7} bytes ({r['requests']} requests, {r['statuses']}){extra}{flag}"
        )
    s = out["shipped"]
    print(f"  shipped: JavaScript {s['js_gzip']:,} B gzip, CSS {s['css_gzip']:,} B gzip")
    print(f"  goal: p95 < {GOAL_P95_MS:.0f} ms for pages; wall time {time.monotonic() - t0:.0f} s")
    out.update(
        smoke=args.smoke,
        source=args.source or "work tree",
        revision=source_revision(args.source),
        goal_p95_ms=GOAL_P95_MS,
        goal_met=all(r.get("goal_met", True) for r in pages.values()),
    )
    print(json.dumps(out, separators=(",", ":")))
    return 1 if args.check and not out["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
