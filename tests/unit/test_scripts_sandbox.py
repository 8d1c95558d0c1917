"""The scripts sandbox (appliance.scripting.pool + child): real V8 in real child
processes. The escape battery: each attempt ends as an error of its own run, and the
next run on the same pool works and sees nothing of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from appliance.ipc.scripts_protocol import HostCallParams, Limits, RunParams, RunResult
from appliance.scripting.pool import ChildPool

LIMITS = Limits(wall_s=4.0, cpu_s=2.0, heap_mb=32, max_host_calls=50)


class FakeHost:
    """The worker's side of host calls, in memory."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.storage: dict[str, Any] = {}

    async def __call__(self, call: HostCallParams) -> tuple[bool, Any]:
        self.calls.append((call.fn, call.args))
        if call.fn == "storage.get":
            return True, self.storage.get(call.args[0])
        if call.fn == "storage.set":
            self.storage[call.args[0]] = call.args[1]
            return True, True
        if call.fn == "reply":
            return True, {"id": f"m{len(self.calls)}"}
        if call.fn == "http.fetch":
            return False, "http.fetch: refused: 127.0.0.1 is loopback"
        return True, None


def run_all(
    body: Callable[[Callable[..., Awaitable[RunResult]], FakeHost], Awaitable[None]],
    *,
    size: int = 1,
    memory_mb: int = 768,
) -> None:
    async def main() -> None:
        pool = ChildPool(size, memory_mb=memory_mb)
        await pool.start()
        host = FakeHost()
        counter = iter(range(1, 10_000))

        async def run(code: str, limits: Limits = LIMITS, trigger: Any = None) -> RunResult:
            params = RunParams(
                run_id=f"run_{next(counter)}",
                script_id="scr_test",
                code=code,
                trigger=trigger or {"id": "m1", "chat_id": "1@s.whatsapp.net", "body": "hi"},
                limits=limits,
            )
            return await pool.run(params, host)

        try:
            await body(run, host)
        finally:
            await pool.stop()

    asyncio.run(main())


async def healthy(run: Callable[..., Awaitable[RunResult]]) -> None:
    """A normal run right after: works, and sees no trace of the previous one."""
    result = await run(
        "if (({}).polluted !== undefined) throw new Error('polluted');"
        "if (Array.prototype.evil) throw new Error('polluted array');"
        "if (typeof reply !== 'function' || reply.hacked) throw new Error('host api changed');"
        "const r = await reply('pong ' + message.body); log('sent', r.id);"
    )
    assert result.outcome == "ok", result
    assert result.logs[0].text.startswith("sent m")


def test_a_script_runs_and_reaches_the_host_api_only() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        result = await run(
            "await storage.set('n', {count: 1});"
            "const v = await storage.get('n');"
            "console.info('count', v.count, typeof require, typeof process, typeof fetch);"
            "await reply({type: 'text', text: {body: 'x'}});"
        )
        assert result.outcome == "ok", result
        assert result.logs[0].level == "info"
        assert result.logs[0].text == "count 1 undefined undefined undefined"
        assert [c[0] for c in host.calls] == ["storage.set", "storage.get", "reply"]
        assert result.host_calls == 3
        assert result.cpu_ms >= 0

    run_all(body)


ESCAPES = {
    "function constructor": ("Object.constructor('return process')()", None, "EvalError"),
    "this.constructor.constructor": (
        "(function(){ return this.constructor.constructor('return this')() })()",
        None,
        "EvalError",
    ),
    "eval": ("eval('1+1')", None, "EvalError"),
    "require": ("require('fs')", None, "ReferenceError"),
    "dynamic import": ("await import('fs')", None, ""),
    "process": ("process.exit(1)", None, "ReferenceError"),
    "infinite loop": ("while (true) {}", ("cpu", "wall"), "limit"),
    "infinite loop in a promise": (
        "await Promise.resolve().then(() => { for (;;) {} })",
        ("cpu", "wall"),
        "limit",
    ),
    "never-resolving await": ("await new Promise(() => {})", ("wall",), "wall-clock"),
    "1 GB allocation": ("const a = []; for (;;) a.push(new Array(1e6).fill(1.5));", ("heap",), ""),
    "1 GB string": ("let s = 'x'.repeat(1 << 29); s = s + s + s;", None, ""),
    "1 GB ArrayBuffer": (
        "const b = new ArrayBuffer(1 << 30); new Uint8Array(b).fill(1);",
        None,
        "",
    ),
    "deep recursion": ("const f = (n) => f(n + 1) + 1; f(0);", None, "RangeError"),
    "webassembly": ("new WebAssembly.Module(new Uint8Array([0,97,115,109,1,0,0,0]))", None, ""),
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_battery(name: str) -> None:
    code, limits, text = ESCAPES[name]

    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        result = await run(code)
        assert result.outcome == "error", result
        if limits is not None:
            assert result.limit in limits, result
        assert text in (result.error or ""), result
        assert result.logs[-1].level == "system"  # the reason is in the run's log
        assert host.calls == []
        await healthy(run)

    run_all(body)


def test_globalthis_probing_finds_nothing_of_the_host() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        result = await run(
            "const names = Object.getOwnPropertyNames(globalThis);"
            "const bad = ['require','process','module','exports','Buffer','global',"
            "'__dirname','fetch','XMLHttpRequest','WebAssembly','Deno','Bun','os','sys',"
            "'importScripts','navigator'].filter(n => n in globalThis);"
            "log(JSON.stringify(bad));"
            "const ours = names.filter(n => ['message','reply','send','getMessages','storage',"
            "'http','log','console'].includes(n));"
            "log(ours.length);"
        )
        assert result.outcome == "ok", result
        assert result.logs[0].text == "[]"
        assert result.logs[1].text == "8"

    run_all(body)


def test_prototype_pollution_stays_in_its_run() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        result = await run(
            "Object.prototype.polluted = 'yes';"
            "Array.prototype.evil = () => 1;"
            "reply.hacked = true;"
            "storage.get = async () => 'evil';"
            "globalThis.reply = null;"
            "try { Object.defineProperty(globalThis, 'send', {value: 1}); }"
            "catch (e) { log('send is fixed'); }"
            "log(String(reply.hacked), typeof reply, String(storage.get).includes('evil'));"
            "Function.prototype.call = () => 'hijacked';"
            "JSON.parse = () => ({ok: true, value: 'forged'});"
            "const r = await storage.set('__proto__', {polluted: 1});"
            "log(typeof r);"
        )
        assert result.outcome == "ok", result
        # The host saw plain JSON (a key named __proto__ is just a key), nothing else.
        assert host.calls == [("storage.set", ["__proto__", {"polluted": 1}])]
        texts = [line.text for line in result.logs]
        assert texts == ["send is fixed", "undefined function false", "boolean"]
        await healthy(run)

    run_all(body)


def test_catastrophic_regex_does_not_hang() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        started = time.monotonic()
        result = await run("log(/(a+)+$/.test('a'.repeat(50000) + 'b'));")
        # Either V8 falls back to its linear engine (ok) or a limit ends it; never a hang.
        assert result.outcome == "ok" or result.limit in ("cpu", "wall"), result
        assert time.monotonic() - started < LIMITS.wall_s + 30
        await healthy(run)

    run_all(body)


def test_10000_host_calls_end_the_run() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        limits = LIMITS.model_copy(update={"max_host_calls": 100, "wall_s": 20.0})
        result = await run(
            "for (let i = 0; i < 10000; i++) { await storage.get('k' + i); }", limits
        )
        assert result.outcome == "error"
        assert result.limit == "host_calls"
        assert "100 calls" in (result.error or "")
        assert len(host.calls) == 100
        await healthy(run)

    run_all(body)


def test_unawaited_host_call_floods_end_the_run() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        result = await run("for (let i = 0; i < 10000; i++) { storage.get('k'); } await 0;")
        assert result.outcome == "error" and result.limit == "host_calls", result
        assert len(host.calls) <= LIMITS.max_host_calls
        await healthy(run)

    run_all(body)


def test_a_large_host_call_ends_the_run() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        result = await run("await storage.set('k', 'x'.repeat(200000));")
        assert result.limit == "host_call_size", result
        assert host.calls == []
        await healthy(run)

    run_all(body)


def test_host_errors_are_script_exceptions() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        result = await run(
            "try { await http.fetch('http://127.0.0.1/'); }catch (e) { log('caught', e.message); }"
        )
        assert result.outcome == "ok", result
        assert result.logs[0].text == "caught http.fetch: refused: 127.0.0.1 is loopback"

    run_all(body)


def test_log_lines_are_capped() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        limits = LIMITS.model_copy(update={"max_log_lines": 5, "max_log_chars": 20})
        result = await run("for (let i = 0; i < 1000; i++) log('x'.repeat(100));", limits)
        assert result.outcome == "ok"
        assert len(result.logs) == 6
        assert result.logs[0].text == "x" * 20 + "..."
        assert result.logs[-1].text == "log limit reached"

    run_all(body)


def test_two_runs_at_once_on_two_children() -> None:
    async def body(run: Callable[..., Awaitable[RunResult]], host: FakeHost) -> None:
        slow, fast = await asyncio.gather(run("while (true) {}"), run("await reply('quick');"))
        assert slow.limit in ("cpu", "wall")
        assert fast.outcome == "ok"

    run_all(body, size=2)


def test_children_start_when_needed_say_ready_first_and_stop_when_unused() -> None:
    """An idle appliance keeps no sandbox (each ~45 MB): a child starts for a run, its
    start-up is not counted against the run's wall clock (the child says it is ready
    first), it serves the next run while used, and is stopped once unused for
    ``idle_stop_s``."""

    async def main() -> None:
        pool = ChildPool(2, memory_mb=768, idle_stop_s=1.0)
        await pool.start()
        host = FakeHost()
        tight = Limits(**{**LIMITS.model_dump(), "wall_s": 0.15})

        async def run(n: int, limits: Limits = LIMITS) -> RunResult:
            params = RunParams(
                run_id=f"run_{n}",
                script_id="scr_test",
                code="log('ran');",
                trigger={"id": "m1", "chat_id": "1@s.whatsapp.net", "body": "hi"},
                limits=limits,
            )
            return await pool.run(params, host)

        try:
            assert pool.children == 0  # nothing before a run
            # V8's start-up takes longer than this run may (0.15 s): the run still fits.
            first = await run(1, tight)
            assert first.outcome == "ok", first
            assert (pool.children, pool.spawned) == (1, 1)
            second = await run(2)
            assert second.outcome == "ok" and pool.spawned == 1  # the same child
            deadline = time.monotonic() + 20
            while pool.children and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert pool.children == 0  # stopped, unused for idle_stop_s
            third = await run(3)
            assert third.outcome == "ok" and pool.spawned == 2  # started again
        finally:
            await pool.stop()
        assert pool.children == 0

    asyncio.run(main())
