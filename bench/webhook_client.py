#!/usr/bin/env python3
"""The webhook delivery client alone, in one process, vs a plain httpx keep-alive POST loop.

Question: what does one delivery POST cost in the worker's HTTP client
(``appliance.webhooks.delivery.Poster``: the SSRF guard, the pinned connection, the
answer read) compared with the plain ``httpx.AsyncClient`` loop that
``bench/webhook_fanout.py`` uses as its baseline?

A receiver runs in a separate process (the one of ``webhook_fanout.py``: asyncio streams
on uvloop, keep-alive, answers 200 at once) on 127.0.0.1. Then, in this process on uvloop,
rounds alternate (A B A B ...): A = the plain httpx loop, B = the appliance's ``Poster``,
each POSTing the same ``--posts`` bodies (about 1 KB, like a ``message.received``
envelope) with ``--concurrency`` in flight. Reported per round: POSTs/s and this
process's CPU per POST (user + system); summary: the medians and B over A.

To compare two revisions of the client (before/after), run the script with the old
code first on PYTHONPATH, interleaved (runbook/performance.md):

    git archive <old-rev> appliance | tar -x -C /tmp/old
    for i in 1 2; do
      PYTHONPATH=/tmp/old .venv/bin/python bench/webhook_client.py
      .venv/bin/python bench/webhook_client.py
    done

All traffic is on 127.0.0.1; every loop is bounded by a count and a time limit; the
receiver is stopped at the end (also on an error, Ctrl-C or SIGTERM).

    python bench/webhook_client.py            # 3 rounds of 4,000 POSTs each way
    python bench/webhook_client.py --smoke    # 1 round of 200: a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import exit_on_sigterm, free_port, http_get, identify, stop_pids

HERE = Path(__file__).resolve()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _bodies(n: int) -> list[bytes]:
    pad = "x" * 800
    return [
        json.dumps(
            {"id": i, "type": "message.received", "created_at": time.time(), "data": {"t": pad}}
        ).encode()
        for i in range(n)
    ]


def _headers(index: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "bench",
        "webhook-id": str(index),
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,AAAA",
        "traceparent": f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01",
    }


async def _drive(post: Any, bodies: list[bytes], concurrency: int, max_s: float) -> int:
    position = iter(range(len(bodies)))
    deadline = time.monotonic() + max_s
    sent = 0

    async def one_worker() -> None:
        nonlocal sent
        for index in position:  # shared: each body is sent once
            if time.monotonic() > deadline:
                return
            await post(index, bodies[index])
            sent += 1

    await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    return sent


async def plain_httpx(port: int, bodies: list[bytes], concurrency: int, max_s: float) -> int:
    import httpx

    url = f"http://127.0.0.1:{port}/baseline"
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(trust_env=False, limits=limits, timeout=15) as client:

        async def post(index: int, body: bytes) -> None:
            response = await client.post(url, content=body, headers=_headers(index))
            response.raise_for_status()

        return await _drive(post, bodies, concurrency, max_s)


async def appliance_poster(port: int, bodies: list[bytes], concurrency: int, max_s: float) -> int:
    from appliance.webhooks.delivery import Poster

    url = f"http://127.0.0.1:{port}/appliance"
    allowed = [ipaddress.ip_network("127.0.0.1/32")]
    poster = Poster()
    try:

        async def post(index: int, body: bytes) -> None:
            result = await poster.post(
                url, body, _headers(index), allowed_networks=allowed, timeout_s=15
            )
            if result.status != 200:
                raise RuntimeError(f"delivery failed: {result}")

        return await _drive(post, bodies, concurrency, max_s)
    finally:
        await poster.close()


def measure(which: str, port: int, bodies: list[bytes], args: argparse.Namespace) -> dict:
    run = plain_httpx if which == "httpx" else appliance_poster
    cpu0, t0 = _cpu(), time.perf_counter()
    try:
        import uvloop

        sent = uvloop.run(run(port, bodies, args.concurrency, args.max_s))
    except ImportError:
        sent = asyncio.run(run(port, bodies, args.concurrency, args.max_s))
    elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {
        "client": which,
        "posts": sent,
        "posts_per_s": round(sent / elapsed, 1),
        "cpu_us_per_post": round(cpu * 1e6 / sent, 1) if sent else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one round of 200 POSTs each")
    parser.add_argument("--posts", type=int, help="POSTs per round and client (4000)")
    parser.add_argument("--rounds", type=int, help="rounds (3)")
    parser.add_argument("--concurrency", type=int, default=12, help="in flight (12)")
    parser.add_argument("--max-s", type=float, default=60.0, help="time cap per round")
    args = parser.parse_args(argv)
    posts = args.posts or (200 if args.smoke else 4000)
    rounds = args.rounds or (1 if args.smoke else 3)
    exit_on_sigterm()
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, str(HERE.parent / "webhook_fanout.py"), "--_receiver", str(port)]
    )
    children = identify([receiver.pid])
    try:
        for _ in range(100):  # bounded: up to 10 s for the receiver to listen
            if http_get(port, "/_count")[0] == 200:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the receiver did not start")
        bodies = _bodies(posts)
        results = []
        for round_no in range(rounds):
            for which in ("httpx", "appliance"):
                result = measure(which, port, bodies, args) | {"round": round_no + 1}
                results.append(result)
                print(
                    f"round {round_no + 1} {which:9}: {result['posts_per_s']:8.1f} POSTs/s, "
                    f"{result['cpu_us_per_post']:7.1f} us CPU per POST",
                    flush=True,
                )
    finally:
        stop_pids(children)

    def median(which: str, field: str) -> float:
        return statistics.median(r[field] for r in results if r["client"] == which)

    summary = {
        "posts": posts,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "httpx_posts_per_s": median("httpx", "posts_per_s"),
        "appliance_posts_per_s": median("appliance", "posts_per_s"),
        "httpx_cpu_us_per_post": median("httpx", "cpu_us_per_post"),
        "appliance_cpu_us_per_post": median("appliance", "cpu_us_per_post"),
    }
    summary["rate_ratio"] = round(
        summary["appliance_posts_per_s"] / summary["httpx_posts_per_s"], 3
    )
    summary["cpu_ratio"] = round(
        summary["appliance_cpu_us_per_post"] / summary["httpx_cpu_us_per_post"], 3
    )
    print(
        f"appliance Poster vs plain httpx: {summary['rate_ratio']}x the rate, "
        f"{summary['cpu_ratio']}x the CPU per POST (medians of {rounds} rounds)"
    )
    print(json.dumps({"bench": "webhook_client", "results": results, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
