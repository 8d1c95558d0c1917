"""The worker's side of scripts against a real scripts process (python -m
appliance.scripting) and a real migrated database: triggers, sends through
accept_send, storage, http.fetch through the SSRF guard, run records, events,
pausing, dry runs, and the scripts process killed during runs."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.automations import scripts_store
from appliance.automations.script_runner import ScriptRunner
from appliance.automations.scripts_models import SampleMessage, ScriptIn, TriggerFilter
from appliance.config import Settings
from appliance.db.database import Database
from appliance.ipc.scripts_protocol import Limits
from appliance.messaging import store
from appliance.messaging.models import MessageOut
from tests.unit.conftest import OpenDb

ACCOUNT = "acc1"
CHAT = "905551112233@s.whatsapp.net"
LIMITS = Limits(wall_s=5.0, cpu_s=2.0, heap_mb=32, max_host_calls=200)


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    # AF_UNIX paths are short: a short directory of our own under /tmp.
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="scr"))
    for sub in ("etc/appliance", "run", "data", "log"):
        (root / sub).mkdir(parents=True)
    yield root
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def settings_for(prefix: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=prefix / "data", log_dir=prefix / "log", run_dir=prefix / "run", **extra
    )


def start_scripts_process(prefix: Path) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "APPLIANCE_ETC": str(prefix / "etc/appliance"),
        "APPLIANCE_RUN_DIR": str(prefix / "run"),
        "APPLIANCE_DATA_DIR": str(prefix / "data"),
        "APPLIANCE_LOG_DIR": str(prefix / "log"),
        "APPLIANCE_SCRIPTS_SANDBOXES": "2",
        "APPLIANCE_SCRIPTS_SANDBOX_MEMORY_MB": "768",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    log = (prefix / "log" / "scripts.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "appliance.scripting"], env=env, stdout=log, stderr=log
    )


@contextlib.contextmanager
def scripts_process(prefix: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_scripts_process(prefix)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


class Harness:
    def __init__(self, db: Database, runner: ScriptRunner) -> None:
        self.db = db
        self.runner = runner
        self.woken = 0
        self.events_signalled = 0
        self.seq = 0

    async def script(self, code: str, **fields: Any) -> str:
        data = ScriptIn(name="s", code=code, **fields)
        async with self.db.write() as conn:
            return await scripts_store.create_script(
                conn, ACCOUNT, data, created_by="test", now=time.time()
            )

    async def inbound(self, body: str, chat: str = CHAT) -> MessageOut:
        self.seq += 1
        async with self.db.write() as conn:
            stored = await store.insert_inbound(
                conn,
                account_id=ACCOUNT,
                message_id=f"wa{self.seq}",
                chat_jid=chat,
                sender_jid=chat,
                sender_name=None,
                type_="text",
                body=body,
                content={"type": "text", "text": {"body": body}},
                reply_to=None,
                media_id=None,
                wa_timestamp=time.time(),
                now=time.time(),
            )
        assert stored is not None
        return stored

    async def automated(self) -> list[Any]:
        return await self.db.fetchall(
            "SELECT id, chat_jid, body, origin, client_key, reply_to FROM messages "
            "WHERE direction = 'out' ORDER BY seq"
        )

    async def events(self, type_: str) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT data FROM events WHERE type = ? ORDER BY id", (type_,)
        )
        return [orjson.loads(r["data"]) for r in rows]


@contextlib.asynccontextmanager
async def harness(
    open_db: OpenDb, db_path: Path, prefix: Path, *, own_process: bool = True, **settings: Any
) -> AsyncIterator[Harness]:
    with contextlib.ExitStack() as stack:
        if own_process:
            stack.enter_context(scripts_process(prefix))
        async with _harness(open_db, db_path, prefix, **settings) as h:
            yield h


@contextlib.asynccontextmanager
async def _harness(
    open_db: OpenDb, db_path: Path, prefix: Path, **settings: Any
) -> AsyncIterator[Harness]:
    async with open_db(db_path) as db:
        async with db.write() as conn:
            await store.create_account(
                conn,
                account_id=ACCOUNT,
                name="a",
                engine="sandbox",
                engine_settings={},
                settings={},
                now=time.time(),
            )
        h: Harness

        async def events_written() -> None:
            h.events_signalled += 1

        def wake() -> None:
            h.woken += 1

        runner = ScriptRunner(
            db,
            settings_for(prefix, **settings),
            events_written=events_written,
            wake_sender=wake,
            limits=LIMITS,
        )
        h = Harness(db, runner)
        await runner.start()
        assert await runner.client.wait_connected(30), "scripts process did not come up"
        try:
            yield h
        finally:
            await runner.stop()


def test_inbound_message_runs_matching_scripts_and_sends_once(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            await h.script(
                "const n = ((await storage.get('count')) || 0) + 1;"
                "await storage.set('count', n);"
                "await reply('echo ' + message.body + ' #' + n);",
                filter=TriggerFilter(contains="PING"),
            )
            await h.script("await send('+905550000001', 'never')", trigger="manual")
            await h.script("await reply('group only')", filter=TriggerFilter(chat_type="group"))
            m1 = await h.inbound("ping 1")
            assert await h.runner.run_scripts_for_message(ACCOUNT, m1) == 1
            m2 = await h.inbound("no match")
            assert await h.runner.run_scripts_for_message(ACCOUNT, m2) == 0
            # The same message again (a retried pipeline): no second run, no second send.
            assert await h.runner.run_scripts_for_message(ACCOUNT, m1) == 1
            m3 = await h.inbound("Ping 2")
            await h.runner.run_scripts_for_message(ACCOUNT, m3)
            sent = await h.automated()
            assert [r["body"] for r in sent] == ["echo ping 1 #1", "echo Ping 2 #2"]
            assert {r["origin"] for r in sent} == {"automation"}
            assert sent[0]["reply_to"] == m1.id
            assert sent[0]["client_key"].startswith("script:scr_")
            assert h.woken == 2
            runs = await h.events("script.run")
            assert [r["outcome"] for r in runs] == ["ok", "ok"]
            assert runs[0]["trigger_message_id"] == m1.id
            # Outbound messages (our own sends) never trigger scripts.
            out = store.message_out(
                await store.message_row(h.db, ACCOUNT, sent[0]["id"])  # type: ignore[arg-type]
            )
            assert await h.runner.run_scripts_for_message(ACCOUNT, out) == 0

    asyncio.run(main())


def test_regex_filter_uses_re2_and_bad_patterns_are_refused() -> None:
    from appliance.automations.script_match import matches

    f = TriggerFilter(regex=r"^order\s+#?(\d+)$")
    assert matches(f, {"chat_id": CHAT, "is_group": False, "body": "ORDER #12"})
    assert not matches(f, {"chat_id": CHAT, "is_group": False, "body": "my order 12"})
    started = time.monotonic()
    assert not matches(
        TriggerFilter(regex="(a+)+$"),
        {"chat_id": CHAT, "is_group": False, "body": "a" * 50000 + "b"},
    )
    assert time.monotonic() - started < 5
    group = "120363000000000001@g.us"
    by_sender = TriggerFilter(senders=["+905551112233"], chat_type="group")
    assert by_sender.senders == [CHAT]
    assert matches(by_sender, {"chat_id": group, "from": CHAT, "is_group": True, "body": ""})
    assert not matches(by_sender, {"chat_id": CHAT, "from": CHAT, "is_group": False, "body": ""})
    other = "905550000000@s.whatsapp.net"
    assert not matches(by_sender, {"chat_id": group, "from": other, "is_group": True, "body": ""})
    with pytest.raises(ValueError, match="not valid or not supported"):
        TriggerFilter(regex=r"(a)\1")  # backreferences: not in RE2


def test_failures_pause_the_script_with_an_event(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            script_id = await h.script("throw new Error('boom ' + message.body)")
            for i in range(7):
                m = await h.inbound(f"m{i}")
                await h.runner.run_scripts_for_message(ACCOUNT, m)
            row = await scripts_store.script_row(h.db, ACCOUNT, script_id)
            assert row["active"] == 0
            assert "5 failed runs in a row" in row["paused_reason"]
            runs = await h.events("script.run")
            assert len(runs) == 5  # paused after the fifth; later messages ran nothing
            assert runs[0]["outcome"] == "error" and "boom m0" in runs[0]["error"]
            paused = await h.events("script.paused")
            assert len(paused) == 1 and paused[0]["script_id"] == script_id
            page = await scripts_store.list_runs(h.db, script_id, before=None, limit=10)
            run = scripts_store.run_out(page[0])
            assert run.state == "error"
            assert run.logs[-1].level == "system" and "boom" in run.logs[-1].text

    asyncio.run(main())


def test_dry_run_records_effects_without_doing_them(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            script_id = await h.script(
                "await storage.set('seen', message.body);"
                "log('stored', await storage.get('seen'));"
                "await reply('hi ' + message.body);"
                "await send('+905550000009', {type: 'text', text: {body: 'copy'}});"
                "await http.fetch('https://crm.example.com/hook', {method: 'POST', body: {a: 1}});",
                http_allow_hosts=["crm.example.com"],
            )
            run = await h.runner.run_manual(
                ACCOUNT, script_id, sample=SampleMessage(body="sample"), dry_run=True
            )
            assert run.state == "ok", run
            assert run.id is None
            assert [line.text for line in run.logs] == ["stored sample"]
            assert [e.type for e in run.effects] == [
                "storage.set",
                "send",
                "send",
                "http.fetch",
            ]
            assert run.effects[1].detail["text"]["body"] == "hi sample"
            assert await h.automated() == []
            assert await scripts_store.storage_get(h.db, script_id, "seen") is None
            assert await h.events("script.run") == []

    asyncio.run(main())


class _Redirector(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_http_fetch_goes_through_the_guard_and_the_allowlist(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    # A fake on 127.0.0.2 (allowed as an operator's intranet network) that redirects to
    # 127.0.0.1 (loopback, not allowed): the redirect's hop is refused by the guard.
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Redirector)
    port = server.server_address[1]
    _Redirector.target = f"http://127.0.0.1:{port}/admin"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    urls = ",".join(
        repr(u)
        for u in (
            "http://127.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://not-allowed.example/",
            f"http://127.0.0.2:{port}/start",
        )
    )

    async def main() -> None:
        async with harness(open_db, db_path, prefix, outbound_allow_networks="127.0.0.2/32") as h:
            script_id = await h.script(
                "for (const url of [" + urls + "]) {"
                "  try { await http.fetch(url); log('fetched', url); }"
                "  catch (e) { log(e.message); } }",
                trigger="manual",
                http_allow_hosts=["127.0.0.1", "169.254.169.254", "127.0.0.2"],
            )
            run = await h.runner.run_manual(ACCOUNT, script_id, sample=None, dry_run=False)
            assert run.state == "ok", run
            texts = [line.text for line in run.logs]
            assert len(texts) == 4, texts
            assert "refused" in texts[0] and "loopback" in texts[0]
            assert "refused" in texts[1]
            assert "not in this script's allowed hosts" in texts[2]
            assert "refused" in texts[3] and "loopback" in texts[3], texts[3]
            assert not any(t.startswith("fetched") for t in texts)

    try:
        asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()


def test_per_chat_cap_on_automated_sends(open_db: OpenDb, db_path: Path, prefix: Path) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            script_id = await h.script(
                "let ok = 0; for (let i = 0; i < 15; i++) {"
                "  try { await send('+905551112233', 'n' + i); ok++; }"
                "  catch (e) { log(e.message); break; } } log('sent', ok);",
                trigger="manual",
            )
            run = await h.runner.run_manual(ACCOUNT, script_id, sample=None, dry_run=False)
            assert run.state == "ok", run
            assert "automated messages in the last minute" in run.logs[0].text
            assert run.logs[1].text == "sent 10"
            assert len(await h.automated()) == 10

    asyncio.run(main())


def test_kill_9_of_the_scripts_process_retries_once_without_doubling(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    async def main() -> None:
        with scripts_process(prefix) as procs:
            async with harness(open_db, db_path, prefix, own_process=False) as h:
                # Sends first, then waits: the kill lands after the send was accepted.
                await h.script(
                    "await reply('before the kill');"
                    "const t = Date.now(); while (Date.now() - t < 300) {}"
                    "await new Promise(r => setTimeout(r, 1500));"
                    "await reply('after');"
                )
                m = await h.inbound("go")
                task = asyncio.create_task(h.runner.run_scripts_for_message(ACCOUNT, m))
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not await h.automated():
                    await asyncio.sleep(0.05)
                assert await h.automated(), "the first send never happened"
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                procs.append(start_scripts_process(prefix))  # supervisord's part
                await asyncio.wait_for(task, 60)
                sent = [r["body"] for r in await h.automated()]
                # Retried once with the same run id: the same key, so no second copy.
                assert sent == ["before the kill", "after"], sent
                runs = await h.db.fetchall("SELECT state, attempts FROM script_runs")
                assert [(r["state"], r["attempts"]) for r in runs] == [("ok", 2)]

                # Killed again on every attempt: failed, not retried forever.
                await h.script("await new Promise(r => setTimeout(r, 100000));")
                m2 = await h.inbound("again")
                task = asyncio.create_task(h.runner.run_scripts_for_message(ACCOUNT, m2))
                for _ in range(2):
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        ping = None
                        with contextlib.suppress(Exception):
                            ping = await h.runner.client.ping()
                        if ping is not None and ping.runs_in_flight:
                            break
                        await asyncio.sleep(0.05)
                    procs[-1].send_signal(signal.SIGKILL)
                    procs[-1].wait(10)
                    procs.append(start_scripts_process(prefix))
                await asyncio.wait_for(task, 90)
                row = await h.db.fetchone(
                    "SELECT state, attempts, error, limit_hit FROM script_runs "
                    "WHERE trigger_key = ?",
                    (m2.id,),
                )
                assert row["state"] == "error" and row["attempts"] == 2
                assert "scripts process" in row["error"]

    asyncio.run(main())


def test_every_scripts_route_is_admin_only_and_in_the_spec(tmp_path: Path) -> None:
    from appliance.api.access import route_requirement
    from appliance.auth.permissions import Permission, Role, allows
    from tests.unit.test_access_routes import _app

    app = _app(tmp_path)
    rules = [
        (r.rule, route_requirement(app.view_functions[r.endpoint]))
        for r in app.url_map.iter_rules()
        if "/scripts" in r.rule
    ]
    assert len(rules) >= 6
    assert {req for _, req in rules} == {Permission.SCRIPTS_MANAGE.value}
    assert [r for r in Role if allows(r, Permission.SCRIPTS_MANAGE)] == [Role.ADMIN]

    async def spec() -> dict[str, Any]:
        response = await app.test_client().get("/openapi.json")
        return await response.get_json()  # type: ignore[no-any-return]

    paths = asyncio.run(spec())["paths"]
    ours = {p: ops for p, ops in paths.items() if "/scripts" in p}
    assert set(ours) == {
        "/api/accounts/{account}/scripts",
        "/api/accounts/{account}/scripts/{script_id}",
        "/api/accounts/{account}/scripts/{script_id}/run",
        "/api/accounts/{account}/scripts/{script_id}/dry-run",
        "/api/accounts/{account}/scripts/{script_id}/runs",
        "/api/accounts/{account}/scripts/{script_id}/runs/{run_id}",
    }
    for ops in ours.values():
        for op in ops.values():
            assert op["tags"] == ["scripts"]
            assert op["x-access"] == "scripts.manage"
            assert "404" in op["responses"]


def test_a_script_deleted_during_its_run(open_db: OpenDb, db_path: Path, prefix: Path) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            script_id = await h.script(
                "await new Promise(r => setTimeout(r, 1500)); log('done');", trigger="manual"
            )
            task = asyncio.create_task(
                h.runner.run_manual(ACCOUNT, script_id, sample=None, dry_run=False)
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not h.runner.host.runs:
                await asyncio.sleep(0.02)
            async with h.db.write() as conn:
                assert await scripts_store.delete_script(conn, ACCOUNT, script_id)
            run = await asyncio.wait_for(task, 60)
            assert run.state == "ok" and [line.text for line in run.logs] == ["done"]
            assert await h.db.fetchall("SELECT 1 FROM script_runs") == []

    asyncio.run(main())


def test_the_worker_enforces_host_call_limits_itself(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    """Even a scripts process that ignored its limits gets no more from the worker."""
    from appliance.automations.script_host import RunScope
    from appliance.ipc.scripts_protocol import HostCallParams, HostCallRefused

    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            h.runner.host.runs["run_x"] = RunScope(
                run_id="run_x",
                script_id="scr_x",
                account_id=ACCOUNT,
                trigger_message=None,
                allow_hosts=frozenset(),
                dry_run=False,
            )
            for n in range(1, LIMITS.max_host_calls + 1):
                await h.runner.host.host_call(
                    HostCallParams(run_id="run_x", n=n, fn="storage.get", args=["k"])
                )
            with pytest.raises(HostCallRefused, match="host call limit"):
                await h.runner.host.host_call(
                    HostCallParams(run_id="run_x", n=999, fn="storage.get", args=["k"])
                )
            with pytest.raises(HostCallRefused, match="the run is over"):
                await h.runner.host.host_call(
                    HostCallParams(run_id="run_gone", n=1, fn="storage.get", args=["k"])
                )

    asyncio.run(main())


class _CountingClient:
    """Stands in for the scripts process: counts runs handed to it at once."""

    connected = True

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def wait_connected(self, timeout_s: float) -> bool:
        return True

    async def run(self, params: Any, *, timeout_s: float) -> Any:
        from appliance.ipc.scripts_protocol import RunResult

        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.02)
        finally:
            self.now -= 1
        return RunResult(outcome="ok")


def test_runs_wait_for_a_free_sandbox_in_the_worker(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    """The scripts process has ``SCRIPTS_SANDBOXES`` children; a run handed over while all
    are busy would wait there with its call timeout running, and a burst of runs would
    time out as if the process had died (then pause the script). The worker hands over
    at most that many at once, so the timeout counts only the run itself."""
    from appliance.automations.script_host import RunScope

    async def main() -> None:
        async with open_db(db_path) as db:
            runner = ScriptRunner(
                db,
                settings_for(prefix, scripts_sandboxes=2),
                events_written=_no_events,
                wake_sender=lambda: None,
                limits=LIMITS,
            )
            client = _CountingClient()
            runner.client = client  # type: ignore[assignment]
            scopes = [
                RunScope(
                    run_id=f"run{i}",
                    script_id="scr1",
                    account_id=ACCOUNT,
                    trigger_message=None,
                    allow_hosts=frozenset(),
                    dry_run=True,
                )
                for i in range(10)
            ]
            results = await asyncio.gather(
                *(runner._run_with_retry(s, "1", None, attempt=1) for s in scopes)
            )
            assert [r.outcome for r in results] == ["ok"] * 10
            assert client.most == 2

    asyncio.run(main())


async def _no_events() -> None:
    return None
