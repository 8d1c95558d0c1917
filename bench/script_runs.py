#!/usr/bin/env python3
"""Script run overhead in the sandbox: a fresh V8 isolate per run on a sandbox child.

The real ``appliance.scripting.pool.ChildPool`` (the scripts process's part) runs
scripts one after another on its children, with a host relay that answers at once (the
worker's database work is not measured here). Measured per run, from the pool's call
to its answer: an empty script, and a script making one host call (``await
reply(...)``); the resident memory of a sandbox child after the runs.

Output: a short human summary, then one line of JSON (the last line of stdout).

    python bench/script_runs.py            # 500 runs of each, capped at 120 s
    python bench/script_runs.py --smoke    # 20 runs of each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import exit_on_sigterm, memory_kb

from appliance.ipc.scripts_protocol import HostCallParams, Limits, RunParams
from appliance.scripting.pool import ChildPool

GOAL_P50_MS = 50.0  # a run with one host call, p50: well under the pipeline's budget
CASES = {
    "empty": "",
    "one_host_call": "await reply('pong ' + message.body);",
}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def _measure(runs: int, limit_s: float) -> dict[str, Any]:
    pool = ChildPool(1, memory_mb=768, max_runs_per_child=1_000_000)
    await pool.start()

    async def relay(call: HostCallParams) -> tuple[bool, Any]:
        return True, {"id": "m1"}

    out: dict[str, Any] = {}
    try:
        # The pool starts its child with the first run: that run is not measured.
        warm = RunParams(
            run_id="run_warm",
            script_id="scr_bench",
            code="1;",
            trigger={"id": "m", "chat_id": "1@s.whatsapp.net", "body": "hi"},
            limits=Limits(),
        )
        await pool.run(warm, relay)
        deadline = time.monotonic() + limit_s
        for name, code in CASES.items():
            times: list[float] = []
            for i in range(runs):
                if time.monotonic() > deadline:
                    break
                params = RunParams(
                    run_id=f"run_{name}_{i}",
                    script_id="scr_bench",
                    code=code,
                    trigger={"id": "m", "chat_id": "1@s.whatsapp.net", "body": "hi"},
                    limits=Limits(),
                )
                started = time.perf_counter()
                result = await pool.run(params, relay)
                times.append((time.perf_counter() - started) * 1000)
                if result.outcome != "ok":
                    raise SystemExit(f"run failed: {result.error}")
            out[name] = {
                "runs": len(times),
                "p50_ms": _pct(times, 0.5),
                "p95_ms": _pct(times, 0.95),
                "mean_ms": round(statistics.fmean(times), 3),
            }
        child = next(iter(pool._all))
        out["child_memory_kb"] = memory_kb(child.proc.pid)
    finally:
        await pool.stop()
    return out


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="20 runs of each case")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--limit-s", type=float, default=120.0)
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args()
    runs = 20 if args.smoke else args.runs
    result = asyncio.run(_measure(runs, args.limit_s))
    for name in CASES:
        r = result[name]
        print(
            f"{name:14s} {r['runs']:5d} runs  p50 {r['p50_ms']:8.3f} ms  p95 {r['p95_ms']:8.3f} ms"
        )
    print(f"sandbox child memory: {result['child_memory_kb']}")
    met = result["one_host_call"]["p50_ms"] <= GOAL_P50_MS
    print(f"goal: one_host_call p50 <= {GOAL_P50_MS:g} ms: {'met' if met else 'not met'}")
    print(json.dumps({"bench": "script_runs", "smoke": args.smoke, "goal_met": met, **result}))
    if args.check and not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
