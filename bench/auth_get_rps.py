#!/usr/bin/env python3
"""Authenticated ``GET`` of a small resource with a Bearer API key, against
``GET /healthz`` in the same run, on the installed appliance with two API processes.

The authenticated request does everything a real one does: the key's hash lookup in
SQLite, the role and grants, the shared rate-limit counters (two writes to the
``ratelimit.db`` file per request), the account read and the JSON answer.

Load: the same Python asyncio keep-alive generator for both paths (two processes,
32 connections, 10 s; smoke 2 s), bounded by a request count and a time limit.

    python bench/auth_get_rps.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Installation, exit_on_sigterm

HERE = Path(__file__).resolve()
MAX_RPS_BOUND = 50_000  # request cap per second of load, per process


async def _load(port: int, path: str, auth: str, connections: int, duration_s: float,
                limit: int) -> dict:  # fmt: skip
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if auth:
        head += f"Authorization: Bearer {auth}\r\n"
    request = (head + "\r\n").encode()
    deadline = time.monotonic() + duration_s
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "non_2xx": 0}

    async def one() -> None:
        reader = writer = None
        while counts["requests"] < limit and time.monotonic() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t0 = time.perf_counter()
                writer.write(request)
                got = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", got)
                await reader.readexactly(int(length.group(1)) if length else 0)
                latencies.append(time.perf_counter() - t0)
                counts["requests"] += 1
                if not got.startswith(b"HTTP/1.1 2"):
                    counts["non_2xx"] += 1
            except (OSError, asyncio.IncompleteReadError):
                counts["errors"] += 1
                writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.monotonic() - start
    lat = sorted(latencies)
    p95 = lat[int(0.95 * len(lat))] * 1000 if lat else None
    return {**counts, "elapsed_s": elapsed, "p95_ms": p95}


def run_load(port: int, path: str, auth: str, duration_s: float) -> dict:
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE), "--_load", str(port), path, auth, "16", str(duration_s)],
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=duration_s + 60)
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    requests = sum(r["requests"] for r in results)
    p95s = [r["p95_ms"] for r in results if r["p95_ms"] is not None]
    return {
        "requests": requests,
        "rps": round(requests / max(r["elapsed_s"] for r in results), 1),
        "p95_ms": round(max(p95s), 2) if p95s else None,
        "errors": sum(r["errors"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--_load", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._load:
        port, path, auth, conns, duration = args._load
        limit = int(MAX_RPS_BOUND * float(duration))
        print(json.dumps(asyncio.run(
            _load(int(port), path, auth, int(conns), float(duration), limit))))  # fmt: skip
        return 0
    exit_on_sigterm()
    duration = 2.0 if args.smoke else 10.0
    inst = Installation.create()
    try:
        inst.configure({
            "API_PROCESSES": "2",
            "API_RATE_LIMIT_PER_MIN": "1000000",
            "API_RATE_LIMIT_PER_ADDR_PER_MIN": "1000000",
        })  # fmt: skip
        inst.start()
        key = inst.ctl("api-keys", "create", "bench", "--role", "admin").stdout.strip()
        body = json.dumps({"id": "bench", "name": "bench"}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{inst.port}/api/accounts", data=body, method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )  # fmt: skip
        urllib.request.urlopen(req, timeout=10).close()
        run_load(inst.port, "/healthz", "", 1.0)  # warm-up
        healthz = run_load(inst.port, "/healthz", "", duration)
        authed = run_load(inst.port, "/api/accounts/bench", key, duration)
    finally:
        inst.remove()
    ratio = authed["rps"] / healthz["rps"] if healthz["rps"] else 0.0
    print(f"GET /healthz                   {healthz['rps']:>8} req/s  p95 {healthz['p95_ms']} ms")
    print(f"GET /api/accounts/ID (Bearer)  {authed['rps']:>8} req/s  p95 {authed['p95_ms']} ms")
    print(f"ratio {ratio:.2f}x (goal >= 0.6x); 2 cores shared by servers and load generator")
    result = {"healthz": healthz, "auth_get": authed, "ratio": round(ratio, 3), "goal": 0.6}
    print(json.dumps(result))
    ok = authed["errors"] == 0 and authed["non_2xx"] == 0 and healthz["non_2xx"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
