#!/usr/bin/env python3
"""JSON-RPC ``ping`` round trip (API process -> worker) versus a raw uvloop line echo.

Three processes, all on uvloop, all talking over Unix sockets in a private temp dir:

* ``rpc-server``  the real ``appliance.ipc.server.RpcServer`` with a ``ping`` handler
  that is the worker's (``Worker.ping``: ``PingResult(pong=True, pid=os.getpid())``);
* ``echo-server`` a minimal asyncio streams server that writes every line back;
* ``client``      the real ``appliance.ipc.client.WorkerClient`` calling ``ping()``
  sequentially (what ``/readyz`` does), and a minimal readline client sending the
  same request frame bytes to the echo server.

The client alternates between the two in rounds so that drift on a busy machine
hits both alike. All of it runs twice by default, pinned with sched_setaffinity: client
and servers on different CPUs (``split``, the headline), then all on one CPU
(``same``); waking a process on the other CPU costs as much as the raw round trip.
The client runs with ``PROMETHEUS_MULTIPROC_DIR`` set, as API processes do under
supervisord (every call updates mmap'd metric files).

Output: a short human summary, then one line of JSON (the last line of stdout).

    python bench/ipc_ping.py             # 20000 calls each, capped at 120 s
    python bench/ipc_ping.py --smoke     # 500 calls each, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import exit_on_sigterm, snapshot_source, source_revision

GOAL_RATIO_P50 = 2.0
PLACEMENT_HELP = {
    "split": "client pinned to one CPU, servers to the other (cross-CPU wake-ups)",
    "same": "client and servers pinned to one CPU (no cross-CPU wake-ups)",
    "os": "no pinning; the scheduler places the processes",
}
HERE = Path(__file__).resolve()


# -- servers (child processes) ---------------------------------------------------------------


async def _serve_rpc(path: Path, lifetime_s: float) -> None:
    from appliance.ipc import protocol
    from appliance.ipc.server import RpcServer

    async def ping(_: protocol.PingParams) -> protocol.PingResult:
        # The worker's handler, verbatim (appliance.worker.main.Worker.ping).
        return protocol.PingResult(pong=True, pid=os.getpid())

    server = RpcServer(path)
    server.register("ping", ping)
    await server.start()
    await _until_stopped(lifetime_s)
    await server.drain(1.0)


async def _serve_echo(path: Path, lifetime_s: float) -> None:
    from appliance.ipc import protocol

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(echo, path=str(path), limit=protocol.MAX_FRAME_BYTES)
    await _until_stopped(lifetime_s)
    server.close()


async def _until_stopped(lifetime_s: float) -> None:
    """Until SIGTERM/SIGINT, or the lifetime is over (a server never outlives its bench)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime_s)


# -- client (child process) ------------------------------------------------------------------


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {"count": 0}
    us = sorted(s / 1000 for s in samples_ns)
    if len(us) >= 2:
        q = statistics.quantiles(us, n=100, method="inclusive")
        p50, p90, p99 = q[49], q[89], q[98]
    else:
        p50 = p90 = p99 = us[0]
    return {
        "count": len(us),
        "p50_us": round(p50, 1),
        "p90_us": round(p90, 1),
        "p99_us": round(p99, 1),
        "mean_us": round(statistics.fmean(us), 1),
        "min_us": round(us[0], 1),
        "max_us": round(us[-1], 1),
    }


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    from appliance.ipc import protocol
    from appliance.ipc.client import WorkerClient
    from appliance.observability.context import child_traceparent, new_request_id, request_id_var

    # Like an API process inside a request: a request id is set, so frames carry one.
    request_id_var.set(new_request_id())
    meta = {"request_id": request_id_var.get(), "traceparent": child_traceparent(None)}
    frame = protocol.request(1, "ping", {}, meta)

    client = WorkerClient(Path(args.rpc_socket), timeout_s=5.0)
    await client.start(wait_s=5.0)
    if not client.connected:
        raise RuntimeError(f"could not connect to the RPC server at {args.rpc_socket}")
    reader, writer = await asyncio.open_unix_connection(
        args.echo_socket, limit=protocol.MAX_FRAME_BYTES
    )

    async def rpc_once() -> None:
        pong = await client.ping()
        if not pong.pong:
            raise RuntimeError("bad pong")

    async def raw_once() -> None:
        writer.write(frame)
        line = await reader.readline()
        if len(line) != len(frame):
            raise RuntimeError("short echo")

    loops = {"appliance": rpc_once, "raw_echo": raw_once}
    samples: dict[str, list[int]] = {name: [] for name in loops}
    deadline = time.monotonic() + args.max_seconds
    per_round = max(1, args.n // args.rounds)
    capped = False
    try:
        for once in loops.values():  # warm-up, not recorded
            for _ in range(args.warmup):
                await once()
        for r in range(args.rounds):
            order = list(loops) if r % 2 == 0 else list(reversed(loops))
            for name in order:
                once = loops[name]
                out = samples[name]
                clock = time.perf_counter_ns
                for _ in range(per_round):  # bounded by count ...
                    t0 = clock()
                    await once()
                    out.append(clock() - t0)
                    if time.monotonic() > deadline:  # ... and by time
                        capped = True
                        break
                if capped:
                    break
            if capped:
                break
    finally:
        writer.close()
        await client.stop()
    return {
        "appliance": _percentiles(samples["appliance"]),
        "raw_echo": _percentiles(samples["raw_echo"]),
        "time_capped": capped,
        "frame_bytes": len(frame),
        "multiproc_metrics": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")),
    }


def _child_main(args: argparse.Namespace) -> int:
    import uvloop

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    if args.role == "rpc-server":
        uvloop.run(_serve_rpc(Path(args.socket), args.lifetime))
    elif args.role == "echo-server":
        uvloop.run(_serve_echo(Path(args.socket), args.lifetime))
    else:
        print(json.dumps(uvloop.run(_client(args))))
    return 0


# -- orchestration ---------------------------------------------------------------------------


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {path.name} exited early ({proc.returncode})")
        if path.is_socket():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.02)
    raise RuntimeError(f"{path} not listening after {timeout_s}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _placements(mode: str) -> dict[str, tuple[int | None, int | None]]:
    """placement name -> (client CPU, servers CPU); None lets the scheduler choose."""
    cpus = sorted(os.sched_getaffinity(0))
    known: dict[str, tuple[int | None, int | None]] = {
        "same": (cpus[0], cpus[0]),
        "os": (None, None),
    }
    if len(cpus) >= 2:
        known["split"] = (cpus[0], cpus[1])
    if mode == "both":
        return {name: known[name] for name in ("split", "same") if name in known}
    if mode not in known:
        raise SystemExit(f"--placement {mode} needs at least 2 CPUs")
    return {mode: known[mode]}


def _code_env(args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    """The children's environment: with ``--source``, an export of that revision comes
    first on PYTHONPATH, so the roles import its ``appliance`` instead of the work tree's."""
    env = dict(os.environ)
    if args.source:
        code = tmp / "code"
        if not code.exists():
            code.mkdir()
            snapshot_source(code, args.source)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return env


def run(args: argparse.Namespace, client_cpu: int | None, server_cpu: int | None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ipcb-"))  # short: AF_UNIX paths are limited
    procs: list[subprocess.Popen[bytes]] = []
    lifetime = args.max_seconds + 60
    try:
        sockets = {"rpc-server": tmp / "rpc.sock", "echo-server": tmp / "echo.sock"}
        for role, path in sockets.items():
            argv = [sys.executable, str(HERE), "--_role", role, "--_socket", str(path)]
            argv += ["--_lifetime", str(lifetime)]
            if server_cpu is not None:
                argv += ["--_cpu", str(server_cpu)]
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=_code_env(args, tmp)))
            _wait_for_socket(path, procs[-1], 15)
        env = _code_env(args, tmp)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if not args.no_multiproc_metrics:
            metrics_dir = tmp / "metrics"
            metrics_dir.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        argv = [
            sys.executable, str(HERE), "--_role", "client",
            "--_rpc-socket", str(sockets["rpc-server"]),
            "--_echo-socket", str(sockets["echo-server"]),
            "-n", str(args.n), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
            "--max-seconds", str(args.max_seconds),
        ]  # fmt: skip
        if client_cpu is not None:
            argv += ["--_cpu", str(client_cpu)]
        result = subprocess.run(
            argv, env=env, stdout=subprocess.PIPE, timeout=args.max_seconds + 60, check=True
        )
        return json.loads(result.stdout.decode().strip().splitlines()[-1])
    finally:
        for proc in procs:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI): a few seconds")
    parser.add_argument("-n", type=int, help="calls per variant (default 20000, smoke 500)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 4, smoke 2)")
    parser.add_argument("--warmup", type=int, help="unrecorded calls first (default 500)")
    parser.add_argument("--max-seconds", type=float, help="time cap (default 120, smoke 15)")
    parser.add_argument(
        "--source", help="import this git revision's appliance (e.g. HEAD~3), not the work tree's"
    )
    parser.add_argument(
        "--placement",
        choices=("both", "split", "same", "os"),
        default="both",
        help="CPU pinning: both = split then same (default); see the README",
    )
    parser.add_argument(
        "--no-multiproc-metrics",
        action="store_true",
        help="client without PROMETHEUS_MULTIPROC_DIR (in-memory metrics, not like production)",
    )
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 when appliance p50 > {GOAL_RATIO_P50}x raw"
    )
    # Internal: how the script runs its own child processes.
    parser.add_argument("--_role", dest="role", help=argparse.SUPPRESS)
    parser.add_argument("--_socket", dest="socket", help=argparse.SUPPRESS)
    parser.add_argument("--_lifetime", dest="lifetime", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--_cpu", dest="cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_rpc-socket", dest="rpc_socket", help=argparse.SUPPRESS)
    parser.add_argument("--_echo-socket", dest="echo_socket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 500 if args.smoke else 20000
    if args.rounds is None:
        args.rounds = 2 if args.smoke else 4
    if args.warmup is None:
        args.warmup = 100 if args.smoke else 500
    if args.max_seconds is None:
        args.max_seconds = 15.0 if args.smoke else 120.0
    if args.role:
        return _child_main(args)

    exit_on_sigterm()
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results = {
        name: _summarize(run(args, client_cpu, server_cpu))
        for name, (client_cpu, server_cpu) in _placements(args.placement).items()
    }
    head_name = next(iter(results))
    head = results[head_name]
    n = head["appliance"]["count"]
    print(f"ipc_ping: {n} sequential ping calls per variant in {args.rounds} alternating rounds;")
    print(f"  {head['frame_bytes']} B request frame, Unix socket, client and servers on uvloop;")
    print(f"  client with multiprocess metrics (as under supervisord): {head['multiproc_metrics']}")
    for name, res in results.items():
        print(f"  placement {name}: {PLACEMENT_HELP[name]}")
        for label, key in (("appliance ping()", "appliance"), ("raw uvloop echo ", "raw_echo")):
            r = res[key]
            print(
                f"    {label}  p50 {r['p50_us']:7.1f} us  p99 {r['p99_us']:7.1f} us"
                f"  mean {r['mean_us']:7.1f} us"
            )
        print(
            f"    ratio appliance/raw  p50 {res['ratio_p50']:.2f}x  p99 {res['ratio_p99']:.2f}x"
            f"  (goal p50 <= {GOAL_RATIO_P50}x: {'met' if res['goal_met'] else 'NOT met'});"
            f" added by the appliance: {res['overhead_p50_us']:.1f} us at p50"
        )
        if res["time_capped"]:
            print(f"    note: stopped by the {args.max_seconds:.0f} s cap before {args.n} calls")
    print(f"  headline: placement {head_name}; machine: {os.cpu_count()} CPUs;")
    print(f"  wall time {time.monotonic() - started:.1f} s")
    out = {
        "bench": "ipc_ping",
        "smoke": args.smoke,
        "n_requested": args.n,
        "rounds": args.rounds,
        "placement": head_name,
        "appliance": head["appliance"],
        "raw_echo": head["raw_echo"],
        "ratio_p50": head["ratio_p50"],
        "ratio_p99": head["ratio_p99"],
        "overhead_p50_us": head["overhead_p50_us"],
        "goal_ratio_p50": GOAL_RATIO_P50,
        "goal_met": head["goal_met"],
        "placements": results,
        "cpus": os.cpu_count(),
        "source": args.source or "work tree",
        "revision": source_revision(args.source),
        # 1-minute load average before and after: other work on the machine skews results.
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(out, separators=(",", ":")))
    return 1 if args.check and not all(r["goal_met"] for r in results.values()) else 0


def _summarize(res: dict[str, Any]) -> dict[str, Any]:
    appl, raw = res["appliance"], res["raw_echo"]
    res["ratio_p50"] = round(appl["p50_us"] / raw["p50_us"], 3)
    res["ratio_p99"] = round(appl["p99_us"] / raw["p99_us"], 3)
    res["overhead_p50_us"] = round(appl["p50_us"] - raw["p50_us"], 1)
    res["goal_met"] = res["ratio_p50"] <= GOAL_RATIO_P50
    return res


if __name__ == "__main__":
    sys.exit(main())
