#!/usr/bin/env python3
"""CPU per request of the appliance's Quart app versus bare Quart, in one process.

No sockets, no Hypercorn, no supervisord, no load generator: each request is one ASGI
call (``await app(scope, receive, send)``), one at a time, on uvloop, so what is
measured is the application's own per-request work (Quart's and ours) and nothing that
competes for the CPU with it. It is much steadier than ``healthz_rps.py`` on a busy
machine, and it says how much of a request is ours.

* appliance  ``create_app`` with default settings (tracing off, access log on, written
             to a buffered file as API processes do; ``--access-log stdout|off`` to
             change that), its startup run (database and rate-limit file in a temp
             directory; no worker: the link stays down), Prometheus in multiprocess
             mode (``PROMETHEUS_MULTIPROC_DIR`` in the temp directory) as under
             supervisord.
* baseline   a hello-world Quart app with one ``/healthz`` route answering the same
             JSON (what ``healthz_rps.py``'s baseline serves).

Requests (each variant, alternating rounds): ``GET /healthz``; ``GET /nope`` (404 in
the error shape; the baseline answers its own 404); with ``--all`` also a small POST
without credentials to a protected route (401 before the body is read: the keep-alive
drain and the anonymous rate limit run).

Output: a short human summary, then one line of JSON (the last line of stdout).

    python bench/request_overhead.py            # 4 rounds x 3000 requests per case
    python bench/request_overhead.py --smoke    # 2 rounds x 200
    python bench/request_overhead.py --profile  # and cProfile's top functions (appliance)
    python bench/request_overhead.py --no-freeze  # without gc.freeze() after the warm-up

After the warm-up the start-up heap is frozen (``gc.freeze()``, as API processes do
once they serve: ``runtime.freeze_startup_heap``), for both apps since they share the
process; ``--no-freeze`` measures without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import exit_on_sigterm, source_revision

# The time limit of each round (a request count bounds it too).
ROUND_LIMIT_S = 60.0

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "extensions": {},
    }


CASES: dict[str, tuple[str, str, list[tuple[bytes, bytes]], bytes]] = {
    "healthz": ("GET", "/healthz", [], b""),
    "not_found": ("GET", "/nope", [], b""),
    "unauthenticated_post": (
        "POST",
        "/api/accounts/x/messages",
        [(b"content-type", b"application/json"), (b"content-length", b"2")],
        b"{}",
    ),
}


async def _one(app: App, scope: dict[str, Any], body: bytes) -> int:
    """One request through the ASGI app; its status."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected (cancelled at the end)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def _round(app: App, case: str, count: int) -> dict[str, float]:
    method, path, headers, body = CASES[case]
    scope = _scope(method, path, headers)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + ROUND_LIMIT_S
    done = 0
    statuses: set[int] = set()
    while done < count and time.perf_counter() < deadline:
        statuses.add(await _one(app, scope, body))
        done += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"requests": done, "cpu_s": cpu, "wall_s": wall, "statuses": sorted(statuses)}  # type: ignore[dict-item]


def _baseline_app() -> Any:
    from quart import Quart

    app = Quart("baseline")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}

    return app


def _appliance_app(tmp: Path, access_log: str) -> Any:
    from appliance.api.app import create_app
    from appliance.config import Paths, load_settings
    from appliance.observability.access_log import log_access_to_file
    from appliance.observability.logging import setup_logging
    from appliance.secrets import Secrets

    paths = Paths(tmp / "root")
    paths.etc.mkdir(parents=True)
    env = "ACCESS_LOG=false\n" if access_log == "off" else ""
    paths.env_file.write_text(env)
    settings = load_settings(paths, environ={})
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging("api", stream=open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    if access_log == "file":
        log_access_to_file(settings.log_dir, instance="api_00")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    return create_app(settings, secrets)


def _profile(app: App, case: str, count: int, loop: asyncio.AbstractEventLoop) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    loop.run_until_complete(_round(app, case, count))
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(60)
    return out.getvalue()


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import uvloop

    cases = list(CASES) if args.all else ["healthz", "not_found"]
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    appliance = _appliance_app(tmp, args.access_log)
    baseline = _baseline_app()
    gc_s = {"appliance": 0.0, "baseline": 0.0}
    current = ["baseline"]
    started_gc = [0.0]

    def on_gc(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            started_gc[0] = time.process_time()
        else:
            gc_s[current[0]] += time.process_time() - started_gc[0]

    results: dict[str, dict[str, list[dict[str, Any]]]] = {"appliance": {}, "baseline": {}}
    profile_text = ""
    app_ctx = appliance.test_app()  # runs before_serving / after_serving
    loop.run_until_complete(app_ctx.__aenter__())
    try:
        apps = {"appliance": appliance, "baseline": baseline}
        for app in apps.values():  # warm-up: imports, caches, first files
            for case in cases:
                loop.run_until_complete(_round(app, case, args.warmup))
        if args.freeze:  # as an API process does once it serves (api/main.py)
            from appliance.runtime import freeze_startup_heap

            freeze_startup_heap()
        gc.callbacks.append(on_gc)
        for r in range(args.rounds):
            order = list(apps) if r % 2 == 0 else list(reversed(apps))
            for name in order:
                current[0] = name
                for case in cases:
                    result = loop.run_until_complete(_round(apps[name], case, args.requests))
                    results[name].setdefault(case, []).append(result)
        gc.callbacks.remove(on_gc)
        if args.profile:
            profile_text = "\n".join(
                f"== cProfile: appliance {case}\n" + _profile(appliance, case, args.requests, loop)
                for case in cases
            )
    finally:
        loop.run_until_complete(app_ctx.__aexit__(None, None, None))
        loop.close()
    summary: dict[str, Any] = {}
    for name, per_case in results.items():
        summary[name] = {}
        for case, rounds in per_case.items():
            per_request = [r["cpu_s"] / max(1, r["requests"]) * 1e6 for r in rounds]
            summary[name][case] = {
                "requests": sum(r["requests"] for r in rounds),
                "cpu_us_per_request": round(statistics.median(per_request), 1),
                "cpu_us_per_round": [round(x, 1) for x in per_request],
                "statuses": sorted({s for r in rounds for s in r["statuses"]}),
            }
    total = {n: sum(sum(r["requests"] for r in rs) for rs in results[n].values()) for n in results}
    summary["gc_us_per_request"] = {n: round(gc_s[n] / max(1, total[n]) * 1e6, 1) for n in gc_s}
    summary["profile"] = profile_text
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI)")
    parser.add_argument("--requests", type=int, help="requests per case and round (3000)")
    parser.add_argument("--rounds", type=int, help="rounds, order alternating (4)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per case")
    parser.add_argument("--all", action="store_true", help="also an unauthenticated POST")
    parser.add_argument("--access-log", choices=("file", "stdout", "off"), default="file")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument(
        "--no-freeze",
        dest="freeze",
        action="store_false",
        help="leave the start-up heap in the collected generations (API processes freeze it)",
    )
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = 200 if args.smoke else 3000
    if args.rounds is None:
        args.rounds = 2 if args.smoke else 4
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds are at least 1")
    exit_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="reqov-"))
    load_before = os.getloadavg()[0]
    try:
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before prometheus_client
        result = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    profile = result.pop("profile")
    if profile:
        print(profile)
    print(
        f"request_overhead: in-process ASGI calls, {args.rounds} rounds x {args.requests}"
        f" requests per case, access log {args.access_log}, uvloop,"
        f" start-up heap {'frozen' if args.freeze else 'not frozen'}"
    )
    for case in result["appliance"]:
        app = result["appliance"][case]["cpu_us_per_request"]
        base = result["baseline"][case]["cpu_us_per_request"]
        print(
            f"  {case:<22} appliance {app:>7.1f} us   baseline {base:>7.1f} us"
            f"   ours {app - base:>7.1f} us   statuses {result['appliance'][case]['statuses']}"
        )
    gcs = result["gc_us_per_request"]
    print(f"  garbage collection: appliance {gcs['appliance']} us, baseline {gcs['baseline']} us")
    out = {
        "bench": "request_overhead",
        "smoke": args.smoke,
        "access_log": args.access_log,
        "gc_freeze": args.freeze,
        "rounds": args.rounds,
        "requests": args.requests,
        "results": result,
        "revision": source_revision(),
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
