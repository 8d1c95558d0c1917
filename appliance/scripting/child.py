"""One sandbox child: runs scripts, one at a time, each in a fresh V8 isolate.

Started by the scripts process (``pool.py``) as ``python -m appliance.scripting.child``
and spoken to over its stdin/stdout, one JSON object per line:

    child  -> parent {"ready": true}                  (once, when V8 is loaded)
    parent -> child  {"run": RunParams}
    child  -> parent {"log": LogLine}                 (as they happen)
    child  -> parent {"host": {"n", "fn", "args"}}    (a host API call of the run)
    parent -> child  {"host_result": {"n", "ok", "value" | "error"}}
    child  -> parent {"done": {outcome, error, limit, host_calls, cpu_ms, heap_used_bytes}}

What a script can reach: the ECMAScript built-ins and the host API the prelude below
defines, nothing else (no Node, no ``require``, no ``process``, no file system, no
network: V8 alone has none of them). ``eval`` and ``new Function`` are off
(``--disallow-code-generation-from-strings``), ``WebAssembly`` is removed, and a
regular expression that backtracks too much falls back to V8's linear-time engine.

Limits the child enforces itself: the heap (V8's hard memory limit; the child exits
after hitting it), the CPU time of each run (``RLIMIT_CPU``: the kernel stops the
child with SIGXCPU), the address space of the whole child (``RLIMIT_AS``, so an
ArrayBuffer outside the V8 heap cannot take the machine's memory). The wall clock and
the host-call limits are the parent's: it kills the child (the next run starts another).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import sys
import time
from typing import Any, cast

MB = 1024 * 1024
V8_FLAGS = (
    "--single-threaded",
    "--disallow-code-generation-from-strings",
    "--enable-experimental-regexp-engine-on-excessive-backtracks",
)

# Installed in every fresh isolate before the script. ``bridge`` is the only way out
# of V8; it is captured in this closure and never put on the global object.
PRELUDE = r"""
(bridge, messageJson, triggerJson) => {
  'use strict';
  // Captured now: a script that replaces JSON.parse only fools itself, not the bridge.
  const parse = JSON.parse;
  const stringify = JSON.stringify;
  const deepFreeze = (o) => {
    if (o && typeof o === 'object' && !Object.isFrozen(o)) {
      Object.freeze(o);
      for (const k of Object.keys(o)) deepFreeze(o[k]);
    }
    return o;
  };
  const call = async (fn, args) => {
    const raw = await bridge(fn, stringify(args === undefined ? [] : args));
    const answer = parse(raw);
    if (!answer.ok) throw new Error(answer.error);
    return answer.value;
  };
  const show = (v) => {
    if (typeof v === 'string') return v;
    try { return stringify(v); } catch (e) { return String(v); }
  };
  const logAt = (level) => (...parts) => {
    bridge('__log', stringify([level, parts.map(show).join(' ')]));
  };
  const api = {
    message: deepFreeze(parse(messageJson)),
    trigger: deepFreeze(parse(triggerJson)),
    reply: (body) => call('reply', [body]),
    send: (chat, body) => call('send', [chat, body]),
    getMessages: (chat, limit) => call('getMessages', [chat, limit === undefined ? 20 : limit]),
    tags: Object.freeze({
      add: (chat, tag) => call('tags.add', [chat, tag]),
      remove: (chat, tag) => call('tags.remove', [chat, tag]),
    }),
    chat: Object.freeze({
      setStatus: (chat, status, until) =>
        call('chat.setStatus', until === undefined ? [chat, status] : [chat, status, until]),
      assign: (chat, userId) => call('chat.assign', [chat, userId === undefined ? null : userId]),
    }),
    storage: Object.freeze({
      get: (key) => call('storage.get', [key]),
      set: (key, value) => call('storage.set', [key, value]),
      delete: (key) => call('storage.delete', [key]),
    }),
    http: Object.freeze({
      fetch: (url, options) => call('http.fetch', [url, options === undefined ? {} : options]),
    }),
    log: logAt('log'),
    console: Object.freeze({
      log: logAt('log'), info: logAt('info'), warn: logAt('warn'),
      error: logAt('error'), debug: logAt('debug'),
    }),
  };
  delete globalThis.WebAssembly;
  for (const name of Object.keys(api)) {
    const value = typeof api[name] === 'function' ? Object.freeze(api[name]) : api[name];
    Object.defineProperty(globalThis, name, { value, writable: false, configurable: false });
  }
}
"""

# The script is the body of an async function: top-level `await` works, `return` ends it.
WRAPPER = "(async () => {\n%s\n})"


class HostLimit(Exception):
    pass


class Child:
    def __init__(self, out: asyncio.StreamWriter | Any) -> None:
        self.out = out
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.runs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def emit(self, frame: dict[str, Any]) -> None:
        self.out.write(json.dumps(frame, separators=(",", ":")).encode() + b"\n")

    async def read(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                os._exit(0)  # the parent is gone
            frame = json.loads(line)
            if "run" in frame:
                await self.runs.put(frame["run"])
            elif "host_result" in frame:
                answer = frame["host_result"]
                future = self.pending.pop(int(answer["n"]), None)
                if future is not None and not future.done():
                    future.set_result(answer)

    async def serve(self) -> None:
        while True:
            params = await self.runs.get()
            done = await self.run(params)
            self.emit({"done": done})
            if done.get("limit") == "heap":
                os._exit(0)  # a fresh child for the next run; the parent starts one

    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        from py_mini_racer import (
            JSEvalException,
            JSFunction,
            JSOOMException,
            JSPromise,
            JSPromiseError,
            mini_racer,
        )

        limits = params["limits"]
        started = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = usage.ru_utime + usage.ru_stime
        # The kernel's per-process CPU limit, moved forward for this run (whole seconds).
        soft = math.ceil(cpu0 + float(limits["cpu_s"]))
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        state = {"n": 0, "logs": 0}
        max_logs = int(limits["max_log_lines"])
        max_chars = int(limits["max_log_chars"])

        async def bridge(fn: Any, args_json: Any) -> str:
            if not isinstance(fn, str) or not isinstance(args_json, str):
                return json.dumps({"ok": False, "error": "invalid host call"})
            if fn == "__log":
                state["logs"] += 1
                if state["logs"] <= max_logs:
                    level, text = json.loads(args_json)
                    if len(text) > max_chars:
                        text = text[:max_chars] + "..."
                    t_ms = (time.monotonic() - started) * 1000
                    self.emit({"log": {"level": level, "text": text, "t_ms": round(t_ms, 3)}})
                elif state["logs"] == max_logs + 1:
                    t_ms = (time.monotonic() - started) * 1000
                    line = {"level": "system", "text": "log limit reached", "t_ms": t_ms}
                    self.emit({"log": line})
                return '{"ok":true}'
            state["n"] += 1
            n = state["n"]
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self.pending[n] = future
            self.emit({"host": {"n": n, "fn": fn, "args": json.loads(args_json)}})
            answer = await future
            return json.dumps(
                {
                    "ok": bool(answer.get("ok")),
                    "value": answer.get("value"),
                    "error": answer.get("error"),
                },
                separators=(",", ":"),
            )

        result: dict[str, Any] = {"outcome": "ok", "error": None, "limit": None}
        heap_used: int | None = None
        with mini_racer() as mr:
            mr.set_hard_memory_limit(int(limits["heap_mb"]) * MB)
            try:
                async with mr.wrap_py_function(bridge) as bridge_js:
                    install = cast(JSFunction, mr.eval(PRELUDE))
                    install(
                        bridge_js,
                        json.dumps(params.get("trigger") or {}),
                        json.dumps(params.get("context") or {}),
                    )
                    main = cast(JSFunction, mr.eval(WRAPPER % params["code"]))
                    promise = main()
                    if isinstance(promise, JSPromise):
                        await promise
            except JSOOMException:
                result = {"outcome": "error", "error": "heap limit reached", "limit": "heap"}
            except (JSEvalException, JSPromiseError) as exc:
                if mr.was_hard_memory_limit_reached():
                    result = {"outcome": "error", "error": "heap limit reached", "limit": "heap"}
                else:
                    result = {"outcome": "error", "error": _first_lines(str(exc)), "limit": None}
            except Exception as exc:  # conversions of odd values, and the like
                result = {"outcome": "error", "error": _first_lines(str(exc)), "limit": None}
            try:
                heap_used = int(mr.heap_stats().get("used_heap_size", 0))
            except Exception:
                heap_used = None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result.update(
            host_calls=state["n"],
            cpu_ms=round((usage.ru_utime + usage.ru_stime - cpu0) * 1000, 3),
            heap_used_bytes=heap_used,
        )
        return result


def _first_lines(text: str, lines: int = 6, chars: int = 2000) -> str:
    return "\n".join(text.splitlines()[:lines])[:chars]


def die_with_parent() -> None:
    """SIGKILL this child when the scripts process dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    # Not Linux: the child still exits when its stdin closes.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(0)


def limit_resources(memory_mb: int) -> None:
    """No core files; at most ``memory_mb`` of writable private memory (RLIMIT_DATA: the
    V8 heap, ArrayBuffers, Python). RLIMIT_AS cannot be used: the V8 sandbox reserves a
    terabyte of address space up front."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        size = memory_mb * MB
        resource.setrlimit(resource.RLIMIT_DATA, (size, size))


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * MB)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    child = Child(writer)
    await asyncio.gather(child.read(reader), child.serve())


def main() -> None:
    die_with_parent()
    limit_resources(int(os.environ.get("APPLIANCE_SCRIPT_CHILD_MEMORY_MB", "0") or 0))
    from py_mini_racer import init_mini_racer

    init_mini_racer(flags=V8_FLAGS)
    from py_mini_racer import MiniRacer

    with MiniRacer() as warm:  # load and start V8 now, not in the first run
        warm.eval("1")
    # The pool hands no run over before this line (pool.READY): start-up is not the run's.
    sys.stdout.write('{"ready":true}\n')
    sys.stdout.flush()
    asyncio.run(_main())


if __name__ == "__main__":
    main()
