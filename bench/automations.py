#!/usr/bin/env python3
"""Automations under inbound load: 50 auto-reply rules and 5 active scripts vs none.

One installation (``install.sh --prefix <tmp> --no-start``, see ``_common.Installation``)
with 2 API processes, the worker and the scripts process, one sandbox account:

1. **none**: the sandbox load mode (``POST .../sandbox/load``) at 500 msg/s for 20 s
   (smoke: 100/s for 1 s) on an account without automations. Reported: the worker's
   injection-to-commit latency p50/p95/max (its LoadStats), as in inbound_load.py.
2. The same account gets 50 auto-reply rules (45 that match nothing the load sends,
   in all five match types, some with conditions; 5 that match every message, with
   conditions on tags, status, business hours and first message and actions reply,
   tags and set_status, cooling down per chat) and 5 active message scripts (each
   on every message whose number ends in its digit: half the messages run one script;
   ``--script-share 1`` runs all five on every message).
3. **automations**: the same load again. Reported: the same latencies, and the ratio
   of the two p95s (goal: within 2x); then, waiting (bounded) until every trigger
   job and script run has finished: the automation lag (a message's commit to its
   trigger job done) p50/p95, script runs (count, errors), their wall time in the
   scripts process (``script_runs.wall_ms``: the run overhead) and CPU time p50/p95,
   and the lag from a message's commit to its script run's end p50/p95.
4. Isolate memory per run: the used V8 heap at the end of each run, from the
   scripts process's own sandbox pool (``appliance.scripting.pool.ChildPool``, as
   bench/script_runs.py) running the 5 scripts' code on a sample message (20 runs
   each; smoke 1), p50/p95/max; and the resident memory of the scripts process's
   sandbox children sampled during the automations load (max per child).

Everything goes to 127.0.0.1; every wait is bounded by a count and a time limit.
Output: a short human summary, then one line of JSON (the last line of stdout).

    python bench/automations.py            # about 5 minutes on a quiet machine
    python bench/automations.py --smoke    # about a minute (the install is most of it)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Installation, descendants, exit_on_sigterm, memory_kb, source_revision
from inbound_load import ACCOUNT, api, load_run, start_configured, wait_quiet

RULES = 50
SCRIPTS = 5
P95_RATIO_GOAL = 2.0
DRAIN_LIMIT_S = 240.0

# The scripts: each a typical small automation (a host call or two).
SCRIPT_CODE = [
    "log('got ' + message.body);",
    "const n = Number(message.body.split(' ')[1]); if (n % 7 === 0) log('seven', n);",
    "const last = await storage.get('last'); await storage.set('last', message.body);",
    "const recent = await getMessages(message.chat_id, 5); log(recent.length);",
    "let s = 0; for (let i = 0; i < 10000; i++) { s += i % 7; } log(s);",
]


def _rules(tag_seen: int, tag_blocked: int) -> list[dict[str, Any]]:
    """45 rules that match nothing the load sends, 5 that match every message."""
    rules: list[dict[str, Any]] = []
    kinds = ("contains", "exact", "starts", "ends", "regex")
    for i in range(45):
        kind = kinds[i % 5]
        pattern = {
            "contains": f"order status {i}",
            "exact": f"price list {i}",
            "starts": f"help {i}",
            "ends": f"thanks {i}",
            "regex": rf"^(invoice|fatura)\s*#?{i}\d{{3,}}$",
        }[kind]
        rule: dict[str, Any] = {
            "name": f"nomatch-{i}",
            "priority": 10 + i,
            "match_type": kind,
            "pattern": pattern,
            "stop": i % 2 == 0,
            "actions": [{"type": "reply", "text": f"answer {i}"}],
        }
        if i % 3 == 0:
            rule["conditions"] = [{"type": "chat_type", "chat": "private"}]
        rules.append(rule)
    matching = [
        {
            "name": "tag-seen",
            "match_type": "regex",
            "pattern": r"^load \d+$",
            "conditions": [
                {"type": "status", "statuses": ["open", "pending"]},
                {"type": "chat_tags", "excluded": [tag_blocked]},
            ],
            "actions": [{"type": "tags", "add": [tag_seen]}],
        },
        {
            "name": "welcome",
            "match_type": "starts",
            "pattern": "load",
            "conditions": [{"type": "first_message", "idle_s": 86400}],
            "actions": [{"type": "reply", "text": "Welcome!"}],
        },
        {
            "name": "after-hours",
            "match_type": "contains",
            "pattern": "load",
            "conditions": [{"type": "business_hours", "when": "outside"}],
            "actions": [{"type": "reply", "text": "We are closed"}],
        },
        {
            "name": "pending",
            "match_type": "contains",
            "pattern": "load",
            "conditions": [{"type": "chat_tags", "required": [tag_seen]}],
            "actions": [{"type": "set_status", "status": "pending"}],
        },
        {
            "name": "ack",
            "match_type": "ends",
            "pattern": "1",
            "actions": [{"type": "reply", "text": "Noted", "quote": True}],
        },
    ]
    for n, rule in enumerate(matching):
        rules.append({**rule, "priority": 100 + n, "stop": False, "cooldown_s": 3600})
    return rules


def _scripts(share: float) -> list[dict[str, Any]]:
    out = []
    for n, code in enumerate(SCRIPT_CODE):
        script: dict[str, Any] = {"name": f"bench-{n}", "code": code, "trigger": "message"}
        if share < 1:
            # Messages whose number ends in digit n: a tenth each, half of them in all.
            script["filter"] = {"regex": rf"^load \d*{n}$"}
        out.append(script)
    return out


def setup_automations(port: int, key: str, share: float) -> None:
    ids = {}
    for name in ("seen", "blocked"):
        status, body = api(port, "POST", f"/api/accounts/{ACCOUNT}/tags", {"name": name}, key)
        if status != 201:
            raise RuntimeError(f"creating tag {name} failed: {status} {body}")
        ids[name] = body["id"]
    for rule in _rules(ids["seen"], ids["blocked"]):
        status, body = api(port, "POST", f"/api/accounts/{ACCOUNT}/auto-replies", rule, key)
        if status != 201:
            raise RuntimeError(f"creating rule {rule['name']} failed: {status} {body}")
    for script in _scripts(share):
        status, body = api(port, "POST", f"/api/accounts/{ACCOUNT}/scripts", script, key)
        if status != 201:
            raise RuntimeError(f"creating script {script['name']} failed: {status} {body}")


# -- reading the results (the database, read-only) -----------------------------------------


def _query(db_path: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def wait_drained(db_path: Path, since: float, limit_s: float) -> dict[str, Any]:
    """Wait (bounded) until no trigger job is unfinished and no script run is running."""
    t0 = time.monotonic()
    polls = 0
    pending: dict[str, int] = {}
    while time.monotonic() - t0 < limit_s and polls < 10_000:
        polls += 1
        row = _query(
            db_path,
            "SELECT (SELECT COUNT(*) FROM queue_jobs WHERE queue = 'automation' "
            "AND state IN ('queued', 'leased')) AS triggers, "
            "(SELECT COUNT(*) FROM script_runs WHERE state = 'running') AS scripts, "
            "(SELECT COUNT(*) FROM messages WHERE account_id = ? AND direction = 'in' "
            "AND created_at >= ?) AS received",
            ACCOUNT,
            since,
        )[0]
        pending = {k: int(row[k]) for k in ("triggers", "scripts", "received")}
        if not pending["triggers"] and not pending["scripts"] and polls > 2:
            break
        time.sleep(0.5)
    return {"drained": not pending.get("triggers") and not pending.get("scripts"),
            "drain_s": round(time.monotonic() - t0, 1), "left": pending}  # fmt: skip


def automation_figures(db_path: Path, since: float) -> dict[str, Any]:
    lag = [
        (r["done"] - r["created"]) * 1000
        for r in _query(
            db_path,
            "SELECT created_at AS created, updated_at AS done FROM queue_jobs "
            "WHERE queue = 'automation' AND state = 'done' AND created_at >= ?",
            since,
        )
    ]
    runs = _query(
        db_path,
        "SELECT r.state, r.wall_ms, r.cpu_ms, r.finished_at, m.created_at AS message_at "
        "FROM script_runs r LEFT JOIN messages m ON m.account_id = r.account_id "
        "AND m.id = r.trigger_key WHERE r.account_id = ? AND r.started_at >= ?",
        ACCOUNT,
        since,
    )
    # Run overhead of the runs that ran (a failed run's times say how it failed).
    wall = [float(r["wall_ms"]) for r in runs if r["wall_ms"] is not None and r["state"] == "ok"]
    cpu = [float(r["cpu_ms"]) for r in runs if r["cpu_ms"] is not None and r["state"] == "ok"]
    end_lag = [
        (r["finished_at"] - r["message_at"]) * 1000
        for r in runs
        if r["finished_at"] is not None and r["message_at"] is not None
    ]
    fired = _query(
        db_path,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'automation.fired' AND account_id = ? "
        "AND created_at >= ?",
        ACCOUNT,
        since,
    )[0]["n"]
    states = {
        r["state"]: int(r["n"])
        for r in _query(
            db_path,
            "SELECT state, COUNT(*) AS n FROM queue_jobs WHERE queue = 'automation' "
            "AND created_at >= ? GROUP BY state",
            since,
        )
    }
    errors = {
        str(r["error"])[:200]: int(r["n"])
        for r in _query(
            db_path,
            "SELECT error, COUNT(*) AS n FROM script_runs WHERE account_id = ? "
            "AND started_at >= ? AND state = 'error' GROUP BY error ORDER BY n DESC LIMIT 3",
            ACCOUNT,
            since,
        )
    }
    paused = _query(
        db_path,
        "SELECT COUNT(*) AS n FROM scripts WHERE account_id = ? AND active = 0",
        ACCOUNT,
    )[0]["n"]
    return {
        "trigger_job_states": states,
        "script_errors": errors,
        "scripts_paused": int(paused),
        "trigger_jobs": len(lag),
        "automation_lag_ms_p50": _pct(lag, 0.5),
        "automation_lag_ms_p95": _pct(lag, 0.95),
        "rules_fired": int(fired),
        "script_runs": len(runs),
        "script_runs_error": sum(r["state"] == "error" for r in runs),
        "script_wall_ms_p50": _pct(wall, 0.5),
        "script_wall_ms_p95": _pct(wall, 0.95),
        "script_cpu_ms_p50": _pct(cpu, 0.5),
        "script_cpu_ms_p95": _pct(cpu, 0.95),
        "script_end_lag_ms_p50": _pct(end_lag, 0.5),
        "script_end_lag_ms_p95": _pct(end_lag, 0.95),
    }


class ChildMemory:
    """Samples the resident memory of the scripts process's children (its sandboxes)."""

    def __init__(self, scripts_pid: int | None) -> None:
        self.pid = scripts_pid
        self.max_rss_kb: int = 0
        self.children_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ChildMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        for _ in range(100_000):  # bounded: 0.2 s each, stopped with the run
            if self._stop.is_set() or self.pid is None:
                return
            for child in descendants(self.pid):
                if child == self.pid:
                    continue
                rss = (memory_kb(child) or {}).get("rss_kb") or 0
                self.children_seen.add(child)
                self.max_rss_kb = max(self.max_rss_kb, int(rss))
            self._stop.wait(0.2)


# -- isolate memory per run (the scripts process's pool, in this process) -------------------


async def _heap_per_run(runs: int) -> dict[str, Any]:
    from appliance.ipc.scripts_protocol import HostCallParams, Limits, RunParams
    from appliance.scripting.pool import ChildPool

    pool = ChildPool(1, memory_mb=768, max_runs_per_child=1_000_000)
    await pool.start()

    async def relay(call: HostCallParams) -> tuple[bool, Any]:
        return True, [] if call.fn == "getMessages" else None

    heaps: list[float] = []
    errors: list[str] = []
    try:
        deadline = time.monotonic() + 60
        for n, code in enumerate(SCRIPT_CODE):
            for i in range(runs):
                if time.monotonic() > deadline:
                    break
                params = RunParams(
                    run_id=f"run_{n}_{i}",
                    script_id=f"scr_bench{n}",
                    code=code,
                    trigger={"id": "m", "chat_id": "1@s.whatsapp.net", "body": f"load {i}"},
                    limits=Limits(),
                )
                result = await pool.run(params, relay)
                if result.outcome != "ok":
                    errors.append(str(result.error))
                if result.heap_used_bytes is not None:
                    heaps.append(result.heap_used_bytes / 1024)
    finally:
        await pool.stop()
    return {
        "runs": len(heaps),
        "errors": errors[:3],
        "heap_used_kb_p50": _pct(heaps, 0.5),
        "heap_used_kb_p95": _pct(heaps, 0.95),
        "heap_used_kb_max": round(max(heaps), 1) if heaps else None,
    }


# -- main ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    inst = Installation.create(source=args.source)
    out["install_s"] = round(time.monotonic() - t0, 1)
    print(f"  installed the appliance in {out['install_s']:.0f} s", file=sys.stderr)
    try:
        t0 = time.monotonic()
        pids, key = start_configured(inst, "FULL")
        out["start_s"] = round(time.monotonic() - t0, 1)
        db_path = inst.prefix / "var/lib/appliance/appliance.db"
        worker = next((p for n, p in pids.items() if n.startswith("worker")), None)
        scripts_pid = next((p for n, p in pids.items() if n.startswith("scripts")), None)
        tree = sorted(set().union(*(descendants(p) for p in pids.values())))
        out["machine_busy_before_cores"] = wait_quiet(args.wait_quiet)
        if not args.smoke:  # warm-up: first chats, caches, the page cache
            load_run(inst.port, key, args.rate, 3, worker, tree)
        out["none"] = load_run(inst.port, key, args.rate, args.duration, worker, tree)
        _print("none", out["none"])
        setup_automations(inst.port, key, args.script_share)
        since = time.time()
        with ChildMemory(scripts_pid) as memory:
            out["automations"] = load_run(inst.port, key, args.rate, args.duration, worker, tree)
            _print("automations", out["automations"])
            out["drain"] = wait_drained(db_path, since, args.drain_limit)
        out["sandbox_children_max_rss_kb"] = memory.max_rss_kb
        out["sandbox_children_seen"] = len(memory.children_seen)
        out["figures"] = automation_figures(db_path, since)
    finally:
        with contextlib.suppress(Exception):
            inst.stop()
        inst.remove()
    t0 = time.monotonic()
    out["isolate"] = asyncio.run(_heap_per_run(args.heap_runs))
    out["isolate_s"] = round(time.monotonic() - t0, 1)
    return out


def _print(name: str, r: dict[str, Any]) -> None:
    print(
        f"  [{name}] {r['rate_per_s']:g}/s x {r['duration_s']:g} s: committed"
        f" {r['committed']}/{r['injected']} in {r['elapsed_s']:.1f} s, latency p50"
        f" {r['latency_ms_p50']} p95 {r['latency_ms_p95']} max {r['latency_ms_max']} ms,"
        f" worker {r['worker_cpu_cores']} cores",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="short run (CI): 100/s for 1 s")
    parser.add_argument("--rate", type=float, help="messages per second (500; smoke 100)")
    parser.add_argument("--duration", type=float, help="seconds per load run (20; smoke 1)")
    parser.add_argument(
        "--script-share",
        type=float,
        default=0.5,
        help="1: every script runs on every message; default: each on a tenth (half in all)",
    )
    parser.add_argument("--heap-runs", type=int, help="runs per script for the heap (20)")
    parser.add_argument("--drain-limit", type=float, help="seconds to wait for the backlog")
    parser.add_argument("--source", help="install this git revision instead of the work tree")
    parser.add_argument("--wait-quiet", type=float, default=0.0)
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args(argv)
    args.rate = args.rate or (100.0 if args.smoke else 500.0)
    args.duration = args.duration or (1.0 if args.smoke else 20.0)
    args.heap_runs = args.heap_runs or (1 if args.smoke else 20)
    args.drain_limit = args.drain_limit or (15.0 if args.smoke else DRAIN_LIMIT_S)
    exit_on_sigterm()
    started = time.monotonic()
    result = run(args)
    none, auto = result["none"], result["automations"]
    ratio = (
        round(auto["latency_ms_p95"] / none["latency_ms_p95"], 2)
        if auto["latency_ms_p95"] and none["latency_ms_p95"]
        else None
    )
    met = ratio is not None and ratio <= P95_RATIO_GOAL
    f, iso, drain = result["figures"], result["isolate"], result["drain"]
    print(
        f"automations: {args.rate:g} msg/s x {args.duration:g} s, {RULES} auto-reply rules and"
        f" {SCRIPTS} scripts vs none; source: {args.source or 'work tree'}"
    )
    print(
        f"  inbound p95: none {none['latency_ms_p95']} ms, with automations"
        f" {auto['latency_ms_p95']} ms: ratio {ratio} (goal <= {P95_RATIO_GOAL:g}:"
        f" {'met' if met else 'NOT met'}); p50 {none['latency_ms_p50']} vs"
        f" {auto['latency_ms_p50']} ms"
    )
    print(
        f"  automation lag (commit -> trigger done) p50 {f['automation_lag_ms_p50']}"
        f" p95 {f['automation_lag_ms_p95']} ms over {f['trigger_jobs']} jobs; rules fired"
        f" {f['rules_fired']}; drained: {drain['drained']} after {drain['drain_s']} s"
    )
    print(
        f"  script runs {f['script_runs']} ({f['script_runs_error']} errors); ok runs: wall p50"
        f" {f['script_wall_ms_p50']} p95 {f['script_wall_ms_p95']} ms, cpu p50"
        f" {f['script_cpu_ms_p50']} p95 {f['script_cpu_ms_p95']} ms; commit -> run end p50"
        f" {f['script_end_lag_ms_p50']} p95 {f['script_end_lag_ms_p95']} ms"
    )
    if f["script_errors"] or f["scripts_paused"]:
        print(f"  script errors {f['script_errors']}; scripts paused {f['scripts_paused']}")
    print(f"  trigger jobs by state: {f['trigger_job_states']}")
    print(
        f"  isolate heap used per run p50 {iso['heap_used_kb_p50']} p95"
        f" {iso['heap_used_kb_p95']} max {iso['heap_used_kb_max']} KB ({iso['runs']} runs);"
        f" sandbox child RSS max {result['sandbox_children_max_rss_kb']} KB"
    )
    print(
        f"  wall time {time.monotonic() - started:.0f} s (install {result['install_s']:.0f} s,"
        f" start {result['start_s']:.0f} s); {os.cpu_count()} CPUs"
    )
    out = {
        "bench": "automations",
        "smoke": args.smoke,
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "rules": RULES,
        "scripts": SCRIPTS,
        "script_share": args.script_share,
        "p95_ratio": ratio,
        "p95_ratio_goal": P95_RATIO_GOAL,
        "goal_met": met,
        "results": result,
        "revision": source_revision(args.source),
    }
    print(json.dumps(out, separators=(",", ":")))
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
