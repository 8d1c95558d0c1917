#!/usr/bin/env python3
"""Idle memory of a whole installed appliance: supervisord and everything below it.

``install.sh --prefix <tmp> --no-start``, ``API_PROCESSES=2`` appended to
appliance.env, ``appliancectl start``, then a few seconds idle (10 s; smoke 2 s).
Then, for supervisord and every process below it (the alerts event listener, the
worker, the webhooks process, the scripts process, the API processes, and anything they
spawned), it reads:

* RSS  from /proc/<pid>/status (VmRSS): counts shared pages once per process, so
       the sum overstates what the tree costs;
* PSS  from /proc/<pid>/smaps_rollup: shared pages split among their users, so the
       sum is what the tree really costs (when that file is readable);
* USS  private pages only (Private_Clean + Private_Dirty from smaps_rollup).

Goal: at most 200 MB for the tree. The headline verdict uses the PSS sum (what the
tree really costs) when smaps_rollup is readable, else the RSS sum; both are shown.

Output: a short human summary, then one line of JSON (the last line of stdout).

    python bench/memory.py           # 10 s idle
    python bench/memory.py --smoke   # 2 s idle
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from _common import (
    Installation,
    cmdline,
    descendants,
    exit_on_sigterm,
    memory_kb,
    parent_pid,
    source_revision,
)

GOAL_MB = 200.0


def _label(pid: int, names: dict[int, str]) -> str:
    """Supervisor's name for a program; for a process a program started (the scripts
    process's pre-started runners), its parent's name and its module."""
    if pid in names:
        return names[pid]
    line = cmdline(pid)
    what = line.split(" -m ", 1)[1].split()[0] if " -m " in line else line[:60]
    what = what.removeprefix("appliance.")
    parent = names.get(parent_pid(pid) or 0)
    return f"{parent} > {what}" if parent is not None else f"pid {pid}: {what}"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    inst = Installation.create(source=args.source)
    try:
        extra = {"API_PROCESSES": str(args.api_processes)}
        if args.access_log_off:
            extra["ACCESS_LOG"] = "false"
        inst.configure(extra)
        pids = inst.start()
        time.sleep(args.idle)
        names = {pid: name for name, pid in pids.items()}
        tree = descendants(pids["supervisord"])
        processes = []
        for pid in tree:
            mem = memory_kb(pid)
            if mem["rss_kb"] is None:
                continue  # exited meanwhile, or a kernel thread
            processes.append({"name": _label(pid, names), "pid": pid, **mem})
        # supervisord first, then by name (alerts, api, scripts, webhooks, worker).
        processes.sort(key=lambda p: (p["name"] != "supervisord", p["name"]))
    finally:
        inst.remove()
    total: dict[str, int | None] = {}
    for key in ("rss_kb", "pss_kb", "uss_kb"):
        values = [p[key] for p in processes]
        total[key] = sum(values) if None not in values else None
    return {"processes": processes, "total": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI): 2 s idle")
    parser.add_argument("--idle", type=float, help="seconds idle before measuring (10, smoke 2)")
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--access-log-off", action="store_true", help="ACCESS_LOG=false")
    parser.add_argument(
        "--source", help="install this git revision (e.g. HEAD~3) instead of the work tree"
    )
    parser.add_argument("--check", action="store_true", help=f"exit 1 above {GOAL_MB:.0f} MB")
    args = parser.parse_args(argv)
    if args.idle is None:
        args.idle = 2.0 if args.smoke else 10.0

    exit_on_sigterm()
    started = time.monotonic()
    res = measure(args)
    total = res["total"]
    basis = "pss_kb" if total["pss_kb"] is not None else "rss_kb"
    total_mb = total[basis] / 1024
    goal_met = total_mb <= GOAL_MB

    def mb(kb: int | None) -> str:
        return f"{kb / 1024:7.1f}" if kb is not None else "    n/a"

    print(
        f"memory: installed appliance, API_PROCESSES={args.api_processes}, "
        f"after {args.idle:g} s idle (MB = MiB)"
    )
    print(f"  {'process':<34} {'pid':>7}  {'RSS':>7}  {'PSS':>7}  {'USS':>7}")
    for p in res["processes"]:
        print(
            f"  {p['name']:<34} {p['pid']:>7}  {mb(p['rss_kb'])}  {mb(p['pss_kb'])}"
            f"  {mb(p['uss_kb'])}"
        )
    print(
        f"  {'total':<34} {'':>7}  {mb(total['rss_kb'])}  {mb(total['pss_kb'])}"
        f"  {mb(total['uss_kb'])}"
    )
    verdicts = {}
    for key in ("pss_kb", "rss_kb"):
        if total[key] is not None:
            verdicts[key] = total[key] / 1024 <= GOAL_MB
            print(
                f"  goal {key[:3].upper()} sum <= {GOAL_MB:.0f} MB: "
                f"{'met' if verdicts[key] else 'NOT met'} ({total[key] / 1024:.1f} MB)"
                + ("  <- headline" if key == basis else "")
            )
    if basis == "rss_kb":
        print("  note: smaps_rollup not readable; RSS counts shared pages in every process")
    print(f"  wall time {time.monotonic() - started:.0f} s")
    out = {
        "bench": "memory",
        "smoke": args.smoke,
        "idle_s": args.idle,
        "api_processes": args.api_processes,
        "processes": res["processes"],
        "total_kb": total,
        "goal_mb": GOAL_MB,
        "goal_basis": basis,
        "total_mb": round(total_mb, 1),
        "goal_met": goal_met,
        "goal_met_pss": verdicts.get("pss_kb"),
        "goal_met_rss": verdicts.get("rss_kb"),
        "revision": source_revision(args.source),
    }
    print(json.dumps(out, separators=(",", ":")))
    return 1 if args.check and not goal_met else 0


if __name__ == "__main__":
    sys.exit(main())
