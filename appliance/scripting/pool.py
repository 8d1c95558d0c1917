"""Sandbox children of the scripts process, and one run on one of them.

Each run takes a child (``child.py``) for itself. The parent enforces what the child
cannot be trusted to enforce on itself while a script is running: the wall clock
(including time spent awaiting promises and host calls) and the number and size of
host calls. Hitting one kills the child; so does a child that stops answering. A
killed or crashed child is not reused; the run ends with an error saying which limit.

Children are started when runs need them (at most ``size`` at once) and stopped after
``IDLE_STOP_S`` unused: an appliance whose scripts never run keeps none (each holds
about 45 MB). A new child says it is ready (``READY``, once V8 is loaded) before a run
is handed to it, so its start-up (a few hundred ms) never counts against the run's
wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.ipc.scripts_protocol import (
    HostCallParams,
    LogLine,
    RunParams,
    RunResult,
)

log = logging.getLogger(__name__)

MB = 1024 * 1024
IDLE_STOP_S = 300.0  # a child unused this long is stopped
SPAWN_TIMEOUT_S = 30.0  # from start to READY
READY = b'{"ready":true}'  # a child's first line, once it can take a run
# Host call relay: (run params, call number, fn, args) -> ("ok", value) or ("error", message)
HostRelay = Callable[[HostCallParams], Awaitable[tuple[bool, Any]]]


class SandboxUnavailable(Exception):
    """A child could not be started."""


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.runs = 0

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def send(self, frame: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(frame, separators=(",", ":")).encode() + b"\n")


class ChildPool:
    def __init__(
        self,
        size: int,
        *,
        memory_mb: int,
        max_runs_per_child: int = 1000,
        idle_stop_s: float = IDLE_STOP_S,
    ) -> None:
        self.size = size
        self.memory_mb = memory_mb
        self.max_runs_per_child = max_runs_per_child
        self.idle_stop_s = idle_stop_s
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[_Child, float]] = []  # (child, idle since); last used last
        self._all: set[_Child] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.in_flight = 0
        self.total = 0
        self.spawned = 0

    async def start(self) -> None:
        """Nothing is started before a run needs it; idle children are stopped from now."""
        self._reaper = asyncio.create_task(self._reap_forever())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for child in list(self._all):
            child.kill()
        for child in list(self._all):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.proc.wait(), 5)

    @property
    def children(self) -> int:
        """Children alive now (running a script or idle)."""
        return sum(1 for child in self._all if child.alive)

    async def _spawn(self) -> _Child:
        env = dict(os.environ)
        env["APPLIANCE_SCRIPT_CHILD_MEMORY_MB"] = str(self.memory_mb)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "appliance.scripting.child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the scripts process's own log
            env=env,
            limit=16 * MB,
        )
        child = _Child(proc)
        self._all.add(child)
        self.spawned += 1
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), SPAWN_TIMEOUT_S)
        except (TimeoutError, ValueError):
            line = b""
        except BaseException:  # cancelled: the run that wanted it is gone
            child.kill()
            self._all.discard(child)
            raise
        if line.strip() != READY:
            await self._discard(child)
            raise SandboxUnavailable(
                f"the script sandbox did not start (exit code {proc.returncode})"
                if proc.returncode is not None
                else f"the script sandbox did not start within {SPAWN_TIMEOUT_S:g} s"
            )
        return child

    async def _take(self) -> _Child:
        """An idle child (the one used last: the others may then go idle long enough to
        be stopped), else a new one."""
        while self._idle:
            child, _since = self._idle.pop()
            if child.alive:
                return child
            await self._discard(child)  # died while idle
        return await self._spawn()

    async def _discard(self, child: _Child) -> None:
        child.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(child.proc.wait(), 5)
        self._all.discard(child)

    async def _release(self, child: _Child, reusable: bool) -> None:
        if reusable and child.alive and child.runs < self.max_runs_per_child:
            self._idle.append((child, time.monotonic()))
            return
        await self._discard(child)

    def _unused(self, now: float) -> list[_Child]:
        """Idle children unused for ``idle_stop_s``, taken off the idle list."""
        keep = [(c, since) for c, since in self._idle if now - since < self.idle_stop_s]
        gone = [c for c, since in self._idle if now - since >= self.idle_stop_s]
        self._idle = keep
        return gone

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, min(self.idle_stop_s / 4, 60.0)))
            for child in self._unused(time.monotonic()):
                await self._discard(child)

    async def run(self, params: RunParams, relay: HostRelay) -> RunResult:
        async with self._slots:
            self.in_flight += 1
            self.total += 1
            try:
                try:
                    child = await self._take()
                except SandboxUnavailable as exc:
                    log.error("%s", exc)
                    return RunResult(outcome="error", error=str(exc), limit="crash")
                child.runs += 1
                reusable = False
                try:
                    result, reusable = await _drive(child, params, relay)
                    return result
                finally:
                    await self._release(child, reusable)
            finally:
                self.in_flight -= 1


async def _drive(child: _Child, params: RunParams, relay: HostRelay) -> tuple[RunResult, bool]:
    """Send the run to the child and serve it until it is done or must be stopped."""
    limits = params.limits
    started = time.monotonic()
    deadline = started + limits.wall_s
    logs: list[LogLine] = []
    host_calls = 0
    relays: set[asyncio.Task[None]] = set()
    assert child.proc.stdout is not None

    def elapsed_ms() -> float:
        return round((time.monotonic() - started) * 1000, 3)

    def ended(limit: str | None, error: str, reusable: bool = False) -> tuple[RunResult, bool]:
        logs.append(LogLine(level="system", text=error, t_ms=elapsed_ms()))
        return (
            RunResult(
                outcome="error",
                error=error,
                limit=limit,  # type: ignore[arg-type]
                logs=logs,
                host_calls=host_calls,
                wall_ms=elapsed_ms(),
            ),
            reusable,
        )

    async def answer(call: HostCallParams) -> None:
        ok, value = await relay(call)
        frame = {"n": call.n, "ok": ok, "value": value if ok else None}
        if not ok:
            frame["error"] = str(value)
        with contextlib.suppress(Exception):
            child.send({"host_result": frame})

    child.send({"run": params.model_dump(mode="json")})
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                child.kill()
                return ended("wall", f"wall-clock limit of {limits.wall_s:g} s reached")
            try:
                line = await asyncio.wait_for(child.proc.stdout.readline(), remaining)
            except TimeoutError:
                child.kill()
                return ended("wall", f"wall-clock limit of {limits.wall_s:g} s reached")
            except (ValueError, asyncio.LimitOverrunError):
                child.kill()
                return ended("host_call_size", "a host call was larger than allowed")
            if not line:
                code = await child.proc.wait()
                if code == -signal.SIGXCPU:
                    return ended("cpu", f"CPU time limit of {limits.cpu_s:g} s reached")
                if code in (-signal.SIGABRT, -signal.SIGTRAP, -signal.SIGSEGV, -signal.SIGKILL):
                    return ended(
                        "heap",
                        "the run's sandbox ran out of memory or was stopped "
                        f"(signal {-code}); memory limit {limits.heap_mb} MB",
                    )
                return ended("crash", f"the run's sandbox exited unexpectedly (code {code})")
            frame = json.loads(line)
            if "log" in frame:
                logs.append(LogLine.model_validate(frame["log"]))
            elif "host" in frame:
                host_calls += 1
                call = frame["host"]
                if host_calls > limits.max_host_calls:
                    child.kill()
                    return ended(
                        "host_calls", f"host call limit of {limits.max_host_calls} calls reached"
                    )
                size = len(json.dumps(call.get("args"), separators=(",", ":")))
                if size > limits.max_host_call_bytes:
                    child.kill()
                    return ended(
                        "host_call_size",
                        f"host call {call.get('fn')!r} has {size} bytes of arguments; "
                        f"the limit is {limits.max_host_call_bytes}",
                    )
                try:
                    params_call = HostCallParams(
                        run_id=params.run_id,
                        n=int(call["n"]),
                        fn=call["fn"],
                        args=list(call.get("args") or []),
                    )
                except Exception:
                    child.send(
                        {
                            "host_result": {
                                "n": call.get("n"),
                                "ok": False,
                                "error": f"no host function {str(call.get('fn'))[:50]!r}",
                            }
                        }
                    )
                    continue
                task = asyncio.create_task(answer(params_call))
                relays.add(task)
                task.add_done_callback(relays.discard)
            elif "done" in frame:
                done = frame["done"]
                if done.get("error"):
                    logs.append(LogLine(level="system", text=done["error"], t_ms=elapsed_ms()))
                result = RunResult(
                    outcome=done["outcome"],
                    error=done.get("error"),
                    limit=done.get("limit"),
                    logs=logs,
                    host_calls=host_calls,
                    wall_ms=elapsed_ms(),
                    cpu_ms=float(done.get("cpu_ms") or 0.0),
                    heap_used_bytes=done.get("heap_used_bytes"),
                )
                return result, done.get("limit") is None
    except BaseException:
        child.kill()
        raise
    finally:
        for task in relays:
            task.cancel()
