#!/usr/bin/env python3
"""``POST /api/accounts/<id>/messages`` requests per second, against ``GET /healthz``.

One installation (``install.sh --prefix <tmp> --no-start``) with ``API_PROCESSES=2``,
API rate limits of 1,000,000 a minute, ``SEND_CHAT_INTERVAL_MS=0`` and
``SEND_ACCOUNT_RATE_PER_S=10000`` (so the worker is not paced; ``--account-rate 20``
measures the accept path with the worker at the default pace instead), ``appliancectl
start``, an admin API key (``appliancectl api-keys create``) and a sandbox account
with fast simulation settings, waited for until ``connected``. Then, in one run and
with the same load generator:

1. ``GET /healthz``                                    the ceiling of the HTTP stack
2. ``POST .../messages``, text to varied recipients (10,000 numbers), Bearer key
3. the same with a fresh ``Idempotency-Key`` on every request

After each send phase the worker's progress is followed in the database (opened
read-only): how many of the messages accepted in that phase reached ``sent`` (or
later: delivered, read) within 30 s of the end of the load. The next phase waits,
bounded, until the previous one drained, so they do not overlap.

Load: ``wrk`` (2 threads, 32 keep-alive connections, 10 s; smoke 2 s) with a Lua
script that builds each request (and bounds the request count per thread) when it
is on PATH, else an asyncio + httpx generator of the same shape (two processes of 16
connections). On a 2-core machine the generator competes with the appliance for CPU;
the summary shows how the CPU time was split. The goal: sends at >= 0.5x healthz.

Output: a short human summary, then one line of JSON (the last line of stdout).

    python bench/send_rps.py            # about 3 minutes
    python bench/send_rps.py --smoke    # under a minute (install included)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Installation, cpu_seconds, descendants, wait_all_running
from _otlp_sink import OtlpSink
from inbound_load import (
    FAST_SANDBOX,
    MachineCpu,
    api,
    create_installation,
    exit_on_sigterm,
    revision_of,
    wait_connected,
    wait_quiet,
)

HERE = Path(__file__).resolve()
ACCOUNT = "send"
GOAL_RATIO = 0.5
SENT_WINDOW_S = 30.0  # "reached sent within 30 s after the load"
DRAIN_MAX_S = 90.0  # then wait at most this much more before the next phase
UNPACED = 10_000.0  # SEND_ACCOUNT_RATE_PER_S's maximum: the worker sends as fast as it can
# A safety bound on the request count, far above what 2 cores serve: when it is hit
# (the output says so), the rate is no longer trustworthy.
MAX_RPS_BOUND = 100_000
RECIPIENTS = 10_000
SENT_STATES = ("sent", "delivered", "read")

WRK_LUA = """\
-- One benchmark phase. wrk's -d bounds the time, this the request count per thread.
local limit = {limit}
local method = "{method}"
local target = "{path}"
local auth = "{auth}"
local use_key = {use_key}
local run_id = "{run_id}"
local recipients = {recipients}
local counter = 0
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function request()
  counter = counter + 1
  if counter >= limit then wrk.thread:stop() end
  if method == "GET" then
    return wrk.format("GET", target)
  end
  local n = tid * 10000000 + counter
  local headers = {{["Content-Type"] = "application/json", ["Authorization"] = auth}}
  if use_key then
    headers["Idempotency-Key"] = run_id .. "-" .. tid .. "-" .. counter
  end
  local body = string.format(
    '{{"to":"+1556%07d","type":"text","text":{{"body":"bench %d"}}}}', n % recipients, n)
  return wrk.format("POST", target, headers, body)
end

-- Status counts per thread, and the first error answer, for the report.
codes = {{}}
first_error = ""

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
  if status >= 300 and first_error == "" then
    first_error = status .. " " .. string.sub(body or "", 1, 300)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local merged = {{}}
  local err = ""
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("codes")) do merged[code] = (merged[code] or 0) + n end
    if err == "" then err = t:get("first_error") end
  end
  local parts = {{}}
  for code, n in pairs(merged) do table.insert(parts, string.format('"%d":%d', code, n)) end
  err = string.gsub(err, '"', "'")
  err = string.gsub(err, string.char(92), "/")
  err = string.gsub(err, "%c", " ")
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"codes":{{%s}},"first_error":"%s"}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max, table.concat(parts, ","), err))
end
"""


# -- load generators ---------------------------------------------------------------------------


def run_wrk(
    port: int, phase: dict[str, Any], args: argparse.Namespace, duration_s: float, tmp: Path
) -> dict[str, Any]:
    limit = int(MAX_RPS_BOUND * duration_s / args.threads) + 1
    script = tmp / f"{phase['name']}.lua"
    script.write_text(
        WRK_LUA.format(
            limit=limit,
            method=phase["method"],
            path=phase["path"],
            auth=f"Bearer {phase['key']}",
            use_key="true" if phase["idempotency"] else "false",
            run_id=secrets.token_hex(6),
            recipients=RECIPIENTS,
        )
    )
    argv = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(duration_s))}s",
        "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}{phase['path']}",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    match = re.search(r"^WRKJSON (\{.*\})$", proc.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no WRKJSON line from wrk:\n{proc.stdout}\n{proc.stderr}")
    w = json.loads(match.group(1))
    elapsed = w["duration_us"] / 1e6
    return {
        "requests": w["requests"],
        "rps": round(w["requests"] / elapsed, 1) if elapsed else 0.0,
        "p50_ms": w["p50_us"] / 1000,
        "p90_ms": w["p90_us"] / 1000,
        "p95_ms": w["p95_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "socket_errors": w["connect"] + w["read"] + w["write"] + w["timeout"],
        "non_2xx": w["status"],
        "status_codes": w["codes"],
        "first_error": w["first_error"] or None,
        "count_capped": w["requests"] >= (limit - 1) * args.threads,
    }


async def _py_load(
    port: int, phase: dict[str, Any], connections: int, duration_s: float, limit: int, tid: int
) -> dict[str, Any]:
    """asyncio + httpx: ``connections`` keep-alive connections, one request at a time each."""
    import httpx

    run_id = secrets.token_hex(6)
    deadline = time.monotonic() + duration_s
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "non_2xx": 0}
    issued = 0  # a unique number per request: recipient, body and Idempotency-Key
    codes: dict[str, int] = {}
    first_error = ""
    headers = {"Authorization": f"Bearer {phase['key']}"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, limits=limits, timeout=10
    ) as client:

        async def one_connection() -> None:
            nonlocal first_error, issued
            while issued < limit and time.monotonic() < deadline:
                issued += 1
                n = tid * 10_000_000 + issued
                t0 = time.perf_counter()
                try:
                    if phase["method"] == "GET":
                        resp = await client.get(phase["path"])
                    else:
                        extra = {}
                        if phase["idempotency"]:
                            extra["Idempotency-Key"] = f"{run_id}-{tid}-{n}"
                        resp = await client.post(
                            phase["path"],
                            json={
                                "to": f"+1556{n % RECIPIENTS:07d}",
                                "type": "text",
                                "text": {"body": f"bench {n}"},
                            },
                            headers=extra,
                        )
                except httpx.HTTPError:
                    counts["errors"] += 1
                    await asyncio.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - t0)
                counts["requests"] += 1
                codes[str(resp.status_code)] = codes.get(str(resp.status_code), 0) + 1
                if not 200 <= resp.status_code < 300:
                    counts["non_2xx"] += 1
                    if not first_error:
                        first_error = f"{resp.status_code} {resp.text[:300]}"

        started = time.monotonic()
        await asyncio.gather(*(one_connection() for _ in range(connections)))
        elapsed = time.monotonic() - started
    return {
        **counts,
        "codes": codes,
        "first_error": first_error,
        "elapsed_s": elapsed,
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
    }


def run_pyload(
    port: int, phase: dict[str, Any], args: argparse.Namespace, duration_s: float
) -> dict[str, Any]:
    """One process per wrk 'thread', each with connections/threads connections."""
    per = max(1, args.connections // args.threads)
    limit = int(MAX_RPS_BOUND * duration_s / args.threads) + 1
    procs = []
    for tid in range(1, args.threads + 1):
        spec = json.dumps({"port": port, "phase": phase, "connections": per,
                           "duration_s": duration_s, "limit": limit, "tid": tid})  # fmt: skip
        # The spec (API key included) goes through the environment, not the command line.
        env = {**os.environ, "SEND_RPS_SPEC": spec}
        argv = [sys.executable, str(HERE), "--_pyload"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env))
    results = []
    try:
        for proc in procs:
            stdout, _ = proc.communicate(timeout=duration_s + 60)
            if proc.returncode != 0:
                raise RuntimeError("the python load generator failed (is httpx installed?)")
            results.append(json.loads(stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    requests = sum(r["requests"] for r in results)
    elapsed = max(r["elapsed_s"] for r in results)
    lat = sorted(x for r in results for x in r["latencies_ms"])

    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    return {
        "requests": requests,
        "rps": round(requests / elapsed, 1) if elapsed else 0.0,
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] if lat else None,
        "socket_errors": sum(r["errors"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "status_codes": {
            code: sum(r["codes"].get(code, 0) for r in results)
            for code in sorted({c for r in results for c in r["codes"]})
        },
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
        "count_capped": requests >= limit * args.threads,
    }


# -- the database, read-only -------------------------------------------------------------------


def _ro(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)


def last_rowid(db_path: Path) -> int:
    conn = _ro(db_path)
    try:
        return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0])
    finally:
        conn.close()


def outbound_counts(db_path: Path, after_rowid: int, upto_rowid: int) -> dict[str, int]:
    marks = ",".join("?" * len(SENT_STATES))
    conn = _ro(db_path)
    try:
        row = conn.execute(
            "SELECT COUNT(*), "
            f"COALESCE(SUM(status IN ({marks})), 0), "
            "COALESCE(SUM(status = 'failed'), 0), "
            "COALESCE(SUM(status IN ('queued', 'sending')), 0) "
            "FROM messages WHERE rowid > ? AND rowid <= ? AND direction = 'out'",
            (*SENT_STATES, after_rowid, upto_rowid),
        ).fetchone()
    finally:
        conn.close()
    return {"accepted": row[0], "sent": row[1], "failed": row[2], "pending": row[3]}


def follow_sends(
    db_path: Path, after_rowid: int, upto_rowid: int, load_end: float, *, paced: bool = False
) -> dict[str, Any]:
    """Of the messages accepted during the load (rowids after_rowid+1..upto_rowid): how
    many were sent within SENT_WINDOW_S of its end; then wait (bounded) for the drain.
    ``paced`` (the worker at the account's pace): nothing is waited for, the counts are
    taken at once (the backlog drains at that pace, over minutes)."""
    at_window: dict[str, int] | None = None
    drained_after: float | None = None
    window_s = 0.0 if paced else SENT_WINDOW_S
    deadline = load_end + window_s + (0.0 if paced else DRAIN_MAX_S)
    counts = outbound_counts(db_path, after_rowid, upto_rowid)
    while True:
        now = time.monotonic()
        if at_window is None and now >= load_end + window_s:
            at_window = counts
        if counts["pending"] == 0:
            drained_after = now - load_end
            at_window = at_window or counts
            break
        if now >= deadline:
            break
        time.sleep(0.25)
        counts = outbound_counts(db_path, after_rowid, upto_rowid)
    assert at_window is not None
    return {
        "accepted": counts["accepted"],
        "sent_within_30s": at_window["sent"],
        "failed_within_30s": at_window["failed"],
        "pending_at_30s": at_window["pending"],
        "drained_after_s": None if drained_after is None else round(drained_after, 2),
        "window_s": window_s,
        "sent_at_end": counts["sent"],
        "pending_at_end": counts["pending"],
    }


# -- phases ------------------------------------------------------------------------------------


def measure(
    inst: Installation,
    pids: dict[str, int],
    phase: dict[str, Any],
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    def load(duration_s: float) -> dict[str, Any]:
        if args.loader == "wrk":
            return run_wrk(inst.port, phase, args, duration_s, tmp)
        return run_pyload(inst.port, phase, args, duration_s)

    db_path = inst.prefix / "var/lib/appliance/appliance.db"
    tree = sorted(set().union(*(descendants(p) for p in pids.values())))
    before = {pid: cpu_seconds(pid) for pid in tree}
    loader_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    marker = last_rowid(db_path) if phase["method"] == "POST" else 0
    offsets = log_offsets(inst)
    quiet_before = wait_quiet(args.wait_quiet)
    machine = MachineCpu()
    t0 = time.monotonic()
    result = load(args.duration)
    load_end = time.monotonic()
    wall = load_end - t0
    result["machine_busy_cores"] = machine.cores()
    result["machine_busy_before_cores"] = quiet_before
    loader_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    names = {pid: label for label, pid in pids.items()}
    used = {names.get(pid, f"other:{pid}"): cpu_seconds(pid) - before[pid] for pid in tree}
    used["load generator"] = (loader_after.ru_utime + loader_after.ru_stime) - (
        loader_before.ru_utime + loader_before.ru_stime
    )
    result["cpu_cores_used"] = {k: round(v / wall, 3) for k, v in used.items() if v > 0}
    server_cpu = sum(v for k, v in used.items() if k != "load generator")
    ours = sum(used.values()) / wall
    result["other_busy_cores"] = round(max(0.0, result["machine_busy_cores"] - ours), 2)
    result["server_cpu_us_per_request"] = round(server_cpu / max(1, result["requests"]) * 1e6, 1)
    result["name"] = phase["name"]
    if result["non_2xx"]:
        result["server_errors"] = server_errors(inst, offsets)
    if phase["method"] == "POST":
        end_marker = last_rowid(db_path)
        result["wedged"] = recover_if_wedged(inst, pids, phase["key"], phase["name"], offsets)
        result["sends"] = follow_sends(db_path, marker, end_marker, load_end, paced=paced(args))
    _print_phase(result)
    return result


def probe_send(inst: Installation, key: str) -> int:
    """One send on a fresh connection; its HTTP status (0: no answer)."""
    body = {"to": "+15550000000", "type": "text", "text": {"body": "probe"}}
    try:
        return api(inst.port, "POST", f"/api/accounts/{ACCOUNT}/messages", body, key, 20)[0]
    except OSError:
        return 0


def recover_if_wedged(
    inst: Installation, pids: dict[str, int], key: str, after: str, since: dict[str, int]
) -> dict[str, Any] | None:
    """After a load the generator closes its connections with requests in flight. If
    sends fail from then on (the appliance is wedged), say why, and restart the API
    processes (rolling) so the next phase measures something; None when all is well."""
    status = probe_send(inst, key)
    if 200 <= status < 300:
        return None
    t0 = time.monotonic()
    errors = server_errors(inst, since, limit=200)
    inst.ctl("restart", "api", timeout_s=180)
    infos = wait_all_running(inst.supervisor_socket, 60)
    pids.update({f"{i['group']}:{i['name']}": int(i["pid"]) for i in infos})
    wedge = {
        "after": after,
        "probe_status": status,
        "errors": sorted(set(errors)),
        "restart_api_s": round(time.monotonic() - t0, 2),
        "probe_after_restart": probe_send(inst, key),
    }
    print(
        f"  WARNING: after '{after}' the appliance answered sends with {status}; logged"
        f" errors: {'; '.join(wedge['errors']) or 'none'}. Restarted the API processes in"
        f" {wedge['restart_api_s']} s; a send now answers {wedge['probe_after_restart']}.",
        file=sys.stderr,
    )
    return wedge


def log_offsets(inst: Installation) -> dict[str, int]:
    """The current size of each log: server_errors reads only what comes after."""
    return {
        log.name: log.stat().st_size for log in (inst.prefix / "var/log/appliance").glob("*.log")
    }


def server_errors(
    inst: Installation, since: dict[str, int] | None = None, limit: int = 3
) -> list[str]:
    """The first ERROR lines of the API and worker logs (after ``since``), condensed:
    process, message, exception, and the innermost appliance frame of its traceback."""
    found: list[str] = []
    for log in sorted((inst.prefix / "var/log/appliance").glob("*.log")):
        if not log.name.startswith(("api_", "worker")):
            continue
        with log.open("rb") as fh:
            fh.seek((since or {}).get(log.name, 0))
            text = fh.read().decode(errors="replace")
        for line in text.splitlines():
            if '"level":"ERROR"' not in line and '"level":"CRITICAL"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                found.append(f"{log.stem}: {line[:300]}")
            else:
                exc = str(record.get("exc") or "").strip().splitlines()
                frames = re.findall(r'site-packages/(appliance/[^"]+)", line (\d+), in (\w+)',
                                    str(record.get("exc") or ""))  # fmt: skip
                where = f" at {frames[-1][0]}:{frames[-1][1]} {frames[-1][2]}" if frames else ""
                msg = str(record.get("msg")).splitlines()[0]
                found.append(f"{log.stem}: {msg}: {exc[-1] if exc else ''}{where}")
            if len(found) >= limit:
                return found
    return found


def _print_phase(r: dict[str, Any]) -> None:
    line = (
        f"  {r['name']:<22} {r['rps']:>7.0f} req/s  p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f}"
        f" p99 {r['p99_ms']:.1f} max {r['max_ms']:.0f} ms  errors {r['socket_errors']}"
        f" non-2xx {r['non_2xx']}"
    )
    print(line, file=sys.stderr)
    if r["non_2xx"]:
        print(
            f"  {'':<22} status codes {r['status_codes']}; first error: {r['first_error']}",
            file=sys.stderr,
        )
        for line in r.get("server_errors", []):
            print(f"  {'':<22} log: {line}", file=sys.stderr)
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_cores_used"].items() if v >= 0.01)
    print(f"  {'':<22} CPU cores: {cpu}; other processes {r['other_busy_cores']}", file=sys.stderr)
    if "sends" in r:
        s = r["sends"]
        print(
            f"  {'':<22} accepted {s['accepted']}, sent within {s['window_s']:g} s:"
            f" {s['sent_within_30s']}, drained after {s['drained_after_s']} s",
            file=sys.stderr,
        )


def tracing_phases(
    inst: Installation,
    settings: dict[str, str],
    key: str,
    phases: list[dict[str, Any]],
    args: argparse.Namespace,
    tmp: Path,
    results: dict[str, Any],
) -> None:
    """--tracing: the same installation restarted with tracing on (OTLP/HTTP to a local
    sink), healthz and send measured again, then restarted with tracing off and measured
    a third time (so drift over the run, e.g. a growing database, shows)."""
    sink = OtlpSink()
    try:
        for suffix, extra in (("_traced", sink.env), ("_untraced_again", {})):
            inst.stop()
            inst.configure({**settings, **extra})
            pids = inst.start()
            wait_connected(inst.port, key, ACCOUNT)
            db_path = inst.prefix / "var/lib/appliance/appliance.db"
            marker = last_rowid(db_path)
            for phase in phases:  # warm-up after the restart
                if args.loader == "wrk":
                    run_wrk(inst.port, phase, args, args.warmup, tmp)
                else:
                    run_pyload(inst.port, phase, args, args.warmup)
            follow_sends(db_path, marker, last_rowid(db_path), time.monotonic(), paced=paced(args))
            for phase in phases:
                name = phase["name"] + suffix
                results[name] = measure(inst, pids, {**phase, "name": name}, args, tmp)
                results[name]["tracing"] = "on" if extra else "off"
        results["send_traced"]["otlp_sink"] = {"requests": sink.requests, "bytes": sink.bytes}
    finally:
        sink.close()


def paced(args: argparse.Namespace) -> bool:
    return bool(args.account_rate < UNPACED)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    results: dict[str, Any] = {}
    warmup_wedged = None
    tmp = Path(tempfile.mkdtemp(prefix="sendb-"))
    inst: Installation | None = None
    try:
        t0 = time.monotonic()
        inst = create_installation(args.source)
        print(f"  installed the appliance in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        settings = {
            "API_PROCESSES": "2",
            "API_RATE_LIMIT_PER_MIN": "1000000",
            "API_RATE_LIMIT_PER_ADDR_PER_MIN": "1000000",
            "SEND_CHAT_INTERVAL_MS": "0",
            "SEND_ACCOUNT_RATE_PER_S": f"{args.account_rate:g}",
            "SQLITE_SYNCHRONOUS": args.sync,
        }
        inst.configure(settings)
        pids = inst.start()
        print(f"  started after {time.monotonic() - t0:.0f} s", file=sys.stderr)
        key = inst.ctl("api-keys", "create", "bench-send", "--role", "admin").stdout.strip()
        status, body = api(
            inst.port,
            "POST",
            "/api/accounts",
            {"id": ACCOUNT, "name": "send load", "engine_settings": FAST_SANDBOX},
            key=key,
        )
        if status != 201:
            raise RuntimeError(f"creating the sandbox account failed: {status} {body}")
        wait_connected(inst.port, key, ACCOUNT)
        path = f"/api/accounts/{ACCOUNT}/messages"
        phases = [
            {"name": "healthz", "method": "GET", "path": "/healthz", "key": key,
             "idempotency": False},
            {"name": "send", "method": "POST", "path": path, "key": key, "idempotency": False},
            {"name": "send_idempotency_key", "method": "POST", "path": path, "key": key,
             "idempotency": True},
        ]  # fmt: skip
        # Warm-up (connections, caches, first writes), then let its sends drain.
        marker = last_rowid(inst.prefix / "var/lib/appliance/appliance.db")
        offsets = log_offsets(inst)
        for phase in phases[:2]:
            if args.loader == "wrk":
                run_wrk(inst.port, phase, args, args.warmup, tmp)
            else:
                run_pyload(inst.port, phase, args, args.warmup)
        db_path = inst.prefix / "var/lib/appliance/appliance.db"
        end_marker = last_rowid(db_path)
        warmup_wedged = recover_if_wedged(inst, pids, key, "warm-up", offsets)
        follow_sends(db_path, marker, end_marker, time.monotonic(), paced=paced(args))
        for phase in phases:
            results[phase["name"]] = measure(inst, pids, phase, args, tmp)
        if args.tracing:
            tracing_phases(inst, settings, key, phases[:2], args, tmp, results)
    finally:
        if inst is not None:
            inst.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    return results, warmup_wedged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI): 2 s per phase")
    parser.add_argument("--duration", type=int, help="seconds per phase (10, smoke 2)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds (1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--loader", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if found"
    )
    parser.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument(
        "--source", help="install this git revision (e.g. HEAD) instead of the work tree"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each phase, wait up to this many seconds for other load to stop",
    )
    parser.add_argument(
        "--account-rate",
        type=float,
        default=UNPACED,
        help="SEND_ACCOUNT_RATE_PER_S (10000: the worker sends everything at once, competing"
        " with the API for the cores; the goal is judged so. 20, the appliance's default"
        " pace, measures the accept path alone; --check refuses it)",
    )
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a ratio < {GOAL_RATIO}")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="then restart with tracing on (OTLP to a local sink) and off again, and compare",
    )
    parser.add_argument("--_pyload", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._pyload:
        spec = json.loads(os.environ["SEND_RPS_SPEC"])
        res = asyncio.run(
            _py_load(spec["port"], spec["phase"], spec["connections"], spec["duration_s"],
                     spec["limit"], spec["tid"])
        )  # fmt: skip
        print(json.dumps(res))
        return 0
    if not 0 < args.account_rate <= UNPACED:
        parser.error(f"--account-rate is a rate per second, above 0 and at most {UNPACED:g}")
    if args.check and paced(args):
        parser.error("--check judges the goal with the worker unpaced: leave --account-rate out")
    if args.duration is None:
        args.duration = 2 if args.smoke else 10
    if args.duration < 1 or args.warmup < 1:
        parser.error("--duration and --warmup are whole seconds, at least 1 (wrk needs that)")
    if args.loader == "auto":
        args.loader = "wrk" if shutil.which("wrk") else "python"
    elif args.loader == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on PATH (apt-get install wrk), use --loader python")

    exit_on_sigterm()
    started = time.monotonic()
    results, warmup_wedged = run(args)
    wedges = ([warmup_wedged] if warmup_wedged else []) + [
        r["wedged"] for r in results.values() if r.get("wedged")
    ]
    ratios = {}
    for name, r in results.items():
        if name.startswith("healthz"):
            continue
        # Each send phase against the healthz of the same start (--tracing: _traced, ...).
        base = results.get("healthz" + name[len("send") :].replace("_idempotency_key", ""))
        base_rps = (base or results["healthz"])["rps"]
        ratios[name] = round(r["rps"] / base_rps, 3) if base_rps else None
    tracing_cost = None
    if args.tracing:
        tracing_cost = {
            "send_traced/send": round(results["send_traced"]["rps"] / results["send"]["rps"], 3),
            "send_traced/send_untraced_again": round(
                results["send_traced"]["rps"] / results["send_untraced_again"]["rps"], 3
            ),
            "server_cpu_us_per_send": {
                name: results[name]["server_cpu_us_per_request"]
                for name in ("send", "send_traced", "send_untraced_again")
            },
            "otlp_sink": results["send_traced"]["otlp_sink"],
        }
    gen = (
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s (Lua-built requests)"
        if args.loader == "wrk"
        else f"asyncio+httpx ({args.threads} processes x {args.connections // args.threads}"
        f" connections, {args.duration} s)"
    )
    pace = (
        f"worker paced at {args.account_rate:g} sends/s (accept path; not the goal's setting)"
        if paced(args)
        else "worker unpaced"
    )
    print(f"send_rps: {gen}; 2 API processes; SQLITE_SYNCHRONOUS={args.sync}; {pace}")
    for name, r in results.items():
        print(
            f"  {name:<22} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:.1f} ms  p95"
            f" {r['p95_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  server CPU"
            f" {r['server_cpu_us_per_request']:.0f} us/request  errors"
            f" {r['socket_errors'] + r['non_2xx']}"
        )
        if "sends" in r and paced(args):
            s = r["sends"]
            print(
                f"  {'':<22} accepted {s['accepted']}; sent by the end of the load:"
                f" {s['sent_at_end']} (the rest follow at {args.account_rate:g}/s)"
            )
        elif "sends" in r:
            s = r["sends"]
            print(
                f"  {'':<22} accepted {s['accepted']}; reached sent within"
                f" {SENT_WINDOW_S:g} s: {s['sent_within_30s']}"
                f" ({100 * s['sent_within_30s'] / max(1, s['accepted']):.0f}%); all sent after"
                f" {s['drained_after_s'] if s['drained_after_s'] is not None else '>120'} s"
            )
        if r["count_capped"]:
            print(f"  {'':<22} note: the request-count bound was hit; rate is too low")
    for name, ratio in ratios.items():
        verdict = "met" if ratio is not None and ratio >= GOAL_RATIO else "NOT met"
        print(f"  ratio {name}/healthz: {ratio}x (goal >= {GOAL_RATIO}x: {verdict})")
    if tracing_cost is not None:
        print(
            f"  tracing on (OTLP to a local sink) / off: {tracing_cost['send_traced/send']}x"
            f" (vs off again after it: {tracing_cost['send_traced/send_untraced_again']}x);"
            f" server CPU per send {tracing_cost['server_cpu_us_per_send']} us"
        )
    for w in wedges:
        print(
            f"  PROBLEM: after '{w['after']}' (the generator closed connections with requests"
            f" in flight) every send answered {w['probe_status']} until the API processes"
            f" were restarted; logged: {'; '.join(w['errors']) or 'nothing'}"
        )
    print(
        f"  note: {os.cpu_count()} CPUs; the load generator and the worker share the cores"
        " with the API processes"
    )
    print(f"  wall time {time.monotonic() - started:.0f} s")
    out = {
        "bench": "send_rps",
        "smoke": args.smoke,
        "loader": args.loader,
        "threads": args.threads,
        "connections": args.connections,
        "duration_s": args.duration,
        "sqlite_synchronous": args.sync,
        "account_rate_per_s": args.account_rate,
        "rps": {name: r["rps"] for name, r in results.items()},
        "p95_ms": {name: r["p95_ms"] for name, r in results.items()},
        "ratio": ratios,
        "tracing_cost": tracing_cost,
        "goal_ratio": GOAL_RATIO,
        "goal_met": all(r is not None and r >= GOAL_RATIO for r in ratios.values()),
        "sent_within_30s": {
            name: r["sends"]["sent_within_30s"] for name, r in results.items() if "sends" in r
        },
        "accepted": {name: r["sends"]["accepted"] for name, r in results.items() if "sends" in r},
        "wedged_after_disconnects": wedges,
        "results": results,
        "cpus": os.cpu_count(),
        "source": args.source or "work tree",
        "revision": revision_of(args.source),
    }
    print(json.dumps(out, separators=(",", ":")))
    return 1 if args.check and not out["goal_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
