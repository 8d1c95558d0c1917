"""The worker's side of scripts: triggers, the host API, run records, pausing.

Scripts run in the scripts process (``appliance.scripting``); the worker sends it each
run over ``run/scripts.sock`` and carries out the run's host API calls, which arrive on
the same connection:

- ``reply(body)`` / ``send(chat, body)``: a normal durable send
  (``messaging.sends.accept_send``, ``origin="automation"``) whose idempotency key is
  ``script:<script>:<run>:<n>``, n the call's number in the run: a run retried after a
  crash of the scripts process makes the same calls with the same keys, and a send
  accepted the first time is not accepted again. A chat gets at most
  ``AUTOMATED_SENDS_PER_CHAT_PER_MIN`` automated sends a minute, from every automation.
- ``getMessages(chat, limit)``: the newest messages of a chat of this account.
- ``storage.get/set/delete``: JSON values per script, capped in keys and bytes.
- ``http.fetch(url, options)``: only to the script's allowed hosts, through the SSRF
  guard (every hop of a redirect too), with a timeout and a response size cap.

Loop protection: only inbound messages trigger scripts, so a script's own sends (and
every automated send) never do. Dry runs carry out the reads and record the writes as
effects instead of doing them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from prometheus_client import Counter, Histogram

from appliance.automations import scripts_store as store
from appliance.automations.scripts_models import (
    SampleMessage,
    ScriptRunOut,
    TriggerFilter,
    compile_filter_regex,
)
from appliance.config import Settings
from appliance.db.database import Database
from appliance.errors import ClientError, NotFound
from appliance.ipc.scripts_client import ScriptsClient, ScriptsUnavailable
from appliance.ipc.scripts_protocol import (
    HostCallParams,
    HostCallRefused,
    HostCallResult,
    Limits,
    PeerClosed,
    RunParams,
    RunResult,
)
from appliance.messaging import queries
from appliance.messaging import store as messaging_store
from appliance.messaging.models import (
    Context,
    MessageContent,
    MessageOut,
    content_dict,
    recipient_jid,
)
from appliance.messaging.sends import accept_send
from appliance.net import ssrf

log = logging.getLogger(__name__)

SCRIPT_RUNS = Counter(
    "appliance_script_runs_total",
    "Script runs by script and outcome (ok, error, limit).",
    ["script", "outcome"],
)
SCRIPT_RUN_SECONDS = Histogram(
    "appliance_script_run_duration_seconds",
    "Wall-clock time of script runs, from the worker's side.",
    ["script"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SCRIPT_HOST_CALLS = Counter(
    "appliance_script_host_calls_total",
    "Host API calls of scripts by function and outcome (ok, refused).",
    ["fn", "outcome"],
)
SCRIPT_PAUSED = Counter("appliance_script_paused_total", "Scripts paused after failures.")

PAUSE_AFTER_FAILURES = 5
AUTOMATED_SENDS_PER_CHAT_PER_MIN = 10
GET_MESSAGES_MAX = 50
FETCH_TIMEOUT_S = 10.0
FETCH_MAX_BYTES = 256 * 1024
FETCH_MAX_REDIRECTS = 3
STORAGE_KEY_MAX = 200
RECONNECT_WAIT_S = 15.0
DEFAULT_LIMITS = Limits()

EventsWritten = Callable[[], Awaitable[None]]


class RunFailed(Exception):
    pass


@dataclass
class _Run:
    """One run in flight: what its host calls may touch."""

    run_id: str
    script_id: str
    account_id: str
    trigger_message: dict[str, Any] | None
    allow_hosts: frozenset[str]
    dry_run: bool
    quote: str | None = None  # the stored message a reply quotes (message triggers)
    effects: list[dict[str, Any]] = field(default_factory=list)
    dry_storage: dict[str, Any] = field(default_factory=dict)
    calls: int = 0


def trigger_data(message: MessageOut, *, is_group: bool | None = None) -> dict[str, Any]:
    """The script's ``message``: a plain copy of the inbound message."""
    chat = message.chat_id
    content = content_dict(message.content)
    text = content.get("text", {}).get("body") if message.type == "text" else None
    if text is None:
        media = content.get(message.type)
        text = media.get("caption") if isinstance(media, dict) else None
    return {
        "id": message.id,
        "chat_id": chat,
        "from": message.from_,
        "type": message.type,
        "body": text or "",
        "content": message.content,
        "is_group": chat.endswith("@g.us") if is_group is None else is_group,
        "timestamp": message.timestamp,
    }


def sample_trigger(sample: SampleMessage) -> dict[str, Any]:
    sender = recipient_jid(sample.from_)
    chat = recipient_jid(sample.chat_id) if sample.chat_id else sender
    return {
        "id": sample.id,
        "chat_id": chat,
        "from": sender,
        "type": "text",
        "body": sample.body,
        "content": {"text": {"body": sample.body}},
        "is_group": chat.endswith("@g.us"),
        "timestamp": time.time(),
    }


def matches(filter_: TriggerFilter, message: dict[str, Any]) -> bool:
    if filter_.chats and message["chat_id"] not in filter_.chats:
        return False
    if filter_.senders and message.get("from") not in filter_.senders:
        return False
    if filter_.chat_type == "private" and message["is_group"]:
        return False
    if filter_.chat_type == "group" and not message["is_group"]:
        return False
    body = str(message.get("body") or "")
    if filter_.contains is not None and filter_.contains.casefold() not in body.casefold():
        return False
    return not (filter_.regex is not None and not compile_filter_regex(filter_.regex).search(body))


def _body(value: Any, path: str) -> MessageContent:
    if isinstance(value, str):
        value = {"type": "text", "text": {"body": value}}
    if not isinstance(value, dict):
        raise HostCallRefused(f"{path}: a text or a message body object is expected")
    try:
        return MessageContent.model_validate(value)
    except ValueError as exc:
        raise HostCallRefused(f"{path}: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return str(exc)


class ScriptRunner:
    """Runs scripts on triggers and serves their host calls (worker side)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        events_written: EventsWritten,
        wake_sender: Callable[[], None],
        limits: Limits = DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.events_written = events_written
        self.wake_sender = wake_sender
        self.limits = limits
        self.client = ScriptsClient(settings.scripts_socket, self.host_call)
        self.transport = transport  # tests: replaces the network below the guard
        self._runs: dict[str, _Run] = {}

    async def start(self) -> None:
        async with self.db.write() as conn:
            stale = await store.interrupted_runs(conn, time.time())
        if stale:
            log.warning("script runs interrupted by the last stop", extra={"count": stale})
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    # -- triggers ---------------------------------------------------------------------------

    async def run_scripts_for_message(self, account_id: str, message: MessageOut) -> int:
        """Run the account's active message scripts whose filter matches; answers how many
        ran. Only inbound messages trigger scripts (no automated send ever does)."""
        if message.direction != "in":
            return 0
        rows = await store.active_message_scripts(self.db, account_id)
        if not rows:
            return 0
        data = trigger_data(message)
        ran = 0
        for row in rows:
            script = store.script_out(row)
            if not matches(script.filter, data):
                continue
            await self.execute(script.id, account_id, "message", data, trigger_key=message.id)
            ran += 1
        return ran

    async def run_manual(
        self, account_id: str, script_id: str, *, sample: SampleMessage | None, dry_run: bool
    ) -> ScriptRunOut:
        row = await store.script_row(self.db, account_id, script_id)
        if row is None:
            raise NotFound("no such script")
        data = sample_trigger(sample) if sample is not None else None
        if dry_run:
            return await self.dry_run(row, data)
        return await self.execute(script_id, account_id, "manual", data, trigger_key=None)

    # -- runs -------------------------------------------------------------------------------

    async def execute(
        self,
        script_id: str,
        account_id: str,
        trigger: str,
        data: dict[str, Any] | None,
        *,
        trigger_key: str | None,
    ) -> ScriptRunOut:
        now = time.time()
        async with self.db.write() as conn:
            claimed = await store.claim_run(
                conn,
                script_id=script_id,
                account_id=account_id,
                trigger=trigger,
                trigger_key=trigger_key,
                now=now,
            )
            row = await store.script_row(conn, account_id, script_id)
        if claimed is None or row is None:
            existing = await self.db.fetchone(
                "SELECT * FROM script_runs WHERE script_id = ? AND trigger = ? AND trigger_key = ?",
                (script_id, trigger, trigger_key),
            )
            if existing is None:
                raise RunFailed("the script was deleted")
            return store.run_out(existing)
        run_id, attempt = claimed
        script = store.script_out(row)
        run = _Run(
            run_id=run_id,
            script_id=script_id,
            account_id=account_id,
            trigger_message=data,
            allow_hosts=frozenset(script.http_allow_hosts),
            dry_run=False,
            quote=trigger_key if trigger == "message" else None,
        )
        started = time.perf_counter()
        result = await self._run_with_retry(run, script.code, data, attempt)
        SCRIPT_RUN_SECONDS.labels(script=script_id).observe(time.perf_counter() - started)
        return await self._record(run, result, trigger)

    async def dry_run(self, row: Any, data: dict[str, Any] | None) -> ScriptRunOut:
        script = store.script_out(row)
        run = _Run(
            run_id="dry_" + store.new_run_id(),
            script_id=script.id,
            account_id=script.account_id,
            trigger_message=data,
            allow_hosts=frozenset(script.http_allow_hosts),
            dry_run=True,
        )
        started_at = time.time()
        result = await self._run_with_retry(run, script.code, data, attempt=2)
        return ScriptRunOut(
            id=None,
            script_id=script.id,
            trigger="dry_run",
            trigger_message_id=data["id"] if data else None,
            state="ok" if result.outcome == "ok" else "error",
            attempts=1,
            error=result.error,
            limit=result.limit,
            logs=result.logs,
            effects=run.effects,  # type: ignore[arg-type]
            host_calls=result.host_calls,
            wall_ms=result.wall_ms,
            cpu_ms=result.cpu_ms,
            started_at=started_at,
            finished_at=time.time(),
        )

    async def _run_with_retry(
        self, run: _Run, code: str, data: dict[str, Any] | None, attempt: int
    ) -> RunResult:
        """One run; when the scripts process goes away during it, once more (same run id,
        so the same send keys), then a failure."""
        params = RunParams(
            run_id=run.run_id,
            script_id=run.script_id,
            code=code,
            trigger=data or {},
            limits=self.limits,
        )
        self._runs[run.run_id] = run
        try:
            while True:
                if not self.client.connected:
                    await self.client.wait_connected(RECONNECT_WAIT_S)
                try:
                    return await self.client.run(params, timeout_s=self.limits.wall_s + 15)
                except (PeerClosed, ScriptsUnavailable, TimeoutError) as exc:
                    if attempt >= 2:
                        why = (
                            "the scripts process is not running"
                            if isinstance(exc, ScriptsUnavailable)
                            else "the scripts process stopped during the run"
                        )
                        return RunResult(outcome="error", error=why, limit="crash")
                    attempt += 1
                    log.warning(
                        "scripts process lost during a run; retrying once",
                        extra={"run_id": run.run_id, "script_id": run.script_id},
                    )
                    if not run.dry_run:
                        async with self.db.write() as conn:
                            await store.next_attempt(conn, run.run_id)
        finally:
            self._runs.pop(run.run_id, None)

    async def _record(self, run: _Run, result: RunResult, trigger: str) -> ScriptRunOut:
        now = time.time()
        failed = result.outcome != "ok"
        outcome = "ok" if not failed else ("limit" if result.limit else "error")
        SCRIPT_RUNS.labels(script=run.script_id, outcome=outcome).inc()
        async with self.db.write() as conn:
            await store.finish_run(
                conn,
                run.run_id,
                state="error" if failed else "ok",
                error=result.error,
                limit=result.limit,
                logs=[line.model_dump() for line in result.logs],
                effects=run.effects,
                host_calls=result.host_calls,
                wall_ms=result.wall_ms,
                cpu_ms=result.cpu_ms,
                now=now,
            )
            paused = await store.record_outcome(
                conn, run.script_id, failed=failed, pause_after=PAUSE_AFTER_FAILURES, now=now
            )
            await messaging_store.append_event(
                conn,
                "script.run",
                run.account_id,
                {
                    "script_id": run.script_id,
                    "run_id": run.run_id,
                    "trigger": trigger,
                    "trigger_message_id": (run.trigger_message or {}).get("id")
                    if trigger == "message"
                    else None,
                    "outcome": outcome,
                    "limit": result.limit,
                    "error": result.error,
                    "host_calls": result.host_calls,
                    "wall_ms": result.wall_ms,
                },
                now,
            )
            if paused is not None:
                SCRIPT_PAUSED.inc()
                await messaging_store.append_event(
                    conn,
                    "script.paused",
                    run.account_id,
                    {"script_id": run.script_id, "reason": paused, "last_error": result.error},
                    now,
                )
            await store.trim_runs(conn, run.script_id)
            row = await conn.execute_fetchall(
                "SELECT * FROM script_runs WHERE id = ?", (run.run_id,)
            )
        await self.events_written()
        rows = list(row)
        if rows:
            return store.run_out(rows[0])
        # The script was deleted during the run (its runs went with it).
        return ScriptRunOut(
            id=run.run_id,
            script_id=run.script_id,
            trigger=trigger,  # type: ignore[arg-type]
            trigger_message_id=run.quote,
            state="error" if failed else "ok",
            attempts=1,
            error=result.error,
            limit=result.limit,
            logs=result.logs,
            effects=run.effects,  # type: ignore[arg-type]
            host_calls=result.host_calls,
            wall_ms=result.wall_ms,
            cpu_ms=result.cpu_ms,
            started_at=now,
            finished_at=now,
        )

    # -- the host API -----------------------------------------------------------------------

    async def host_call(self, params: HostCallParams) -> HostCallResult:
        run = self._runs.get(params.run_id)
        if run is None:
            raise HostCallRefused("the run is over")
        # The scripts process enforces these already; the worker does not rely on it.
        run.calls += 1
        if run.calls > self.limits.max_host_calls:
            raise HostCallRefused(f"host call limit of {self.limits.max_host_calls} reached")
        if len(orjson.dumps(params.args)) > self.limits.max_host_call_bytes:
            raise HostCallRefused("host call arguments too large")
        try:
            value = await self._host(run, params)
        except HostCallRefused:
            SCRIPT_HOST_CALLS.labels(fn=params.fn, outcome="refused").inc()
            raise
        except ClientError as exc:
            SCRIPT_HOST_CALLS.labels(fn=params.fn, outcome="refused").inc()
            raise HostCallRefused(exc.message) from None
        SCRIPT_HOST_CALLS.labels(fn=params.fn, outcome="ok").inc()
        return HostCallResult(value=value)

    async def _host(self, run: _Run, call: HostCallParams) -> Any:
        args = call.args
        fn = call.fn
        if fn == "reply":
            if not run.trigger_message:
                raise HostCallRefused("reply: this run has no message to reply to")
            body = _body(args[0] if args else None, "reply")
            if run.quote is not None and body.context is None and body.type != "reaction":
                body = body.model_copy(update={"context": Context(message_id=run.quote)})
            return await self._send(run, call.n, run.trigger_message["chat_id"], body)
        if fn == "send":
            if len(args) < 2 or not isinstance(args[0], str):
                raise HostCallRefused("send(chat, body): chat is an E.164 number or a chat id")
            try:
                chat = recipient_jid(args[0])
            except ValueError as exc:
                raise HostCallRefused(f"send: {exc}") from None
            return await self._send(run, call.n, chat, _body(args[1], "send"))
        if fn == "getMessages":
            return await self._get_messages(run, args)
        if fn.startswith("storage."):
            return await self._storage(run, fn, args)
        if fn == "http.fetch":
            return await self._fetch(run, args)
        raise HostCallRefused(f"no host function {fn!r}")

    async def _send(self, run: _Run, n: int, chat: str, body: MessageContent) -> dict[str, Any]:
        if run.dry_run:
            run.effects.append(
                {"type": "send", "detail": {"to": chat, **body.model_dump(exclude_none=True)}}
            )
            return {"id": None, "dry_run": True}
        now = time.time()
        key = f"script:{run.script_id}:{run.run_id}:{n}"
        async with self.db.write() as conn:
            existing = await messaging_store.message_by_client_key(conn, run.account_id, key)
            if existing is None:
                recent = await conn.execute_fetchall(
                    "SELECT COUNT(*) FROM messages WHERE account_id = ? AND chat_jid = ? "
                    "AND origin = 'automation' AND created_at > ?",
                    (run.account_id, chat, now - 60),
                )
                if next(iter(recent))[0] >= AUTOMATED_SENDS_PER_CHAT_PER_MIN:
                    raise HostCallRefused(
                        f"this chat got {AUTOMATED_SENDS_PER_CHAT_PER_MIN} automated messages "
                        "in the last minute; not sent"
                    )
            accepted = await accept_send(
                conn,
                account_id=run.account_id,
                to=chat,
                message=body,
                client_key=key,
                now=now,
                origin="automation",
            )
        if accepted.created:
            self.wake_sender()
        run.effects.append(
            {"type": "send", "detail": {"to": chat, "message_id": accepted.message_id}}
        )
        return {"id": accepted.message_id}

    async def _get_messages(self, run: _Run, args: list[Any]) -> list[dict[str, Any]]:
        if not args or not isinstance(args[0], str):
            raise HostCallRefused("getMessages(chat, limit): chat is a number or a chat id")
        try:
            chat = recipient_jid(args[0])
        except ValueError as exc:
            raise HostCallRefused(f"getMessages: {exc}") from None
        limit = args[1] if len(args) > 1 else 20
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            raise HostCallRefused("getMessages: limit is a number")
        limit = max(1, min(int(limit), GET_MESSAGES_MAX))
        rows, _ = await queries.list_messages(self.db, run.account_id, chat_jid=chat, limit=limit)
        out = []
        for row in rows:
            m = messaging_store.message_out(row)
            out.append(
                {
                    "id": m.id,
                    "chat_id": m.chat_id,
                    "direction": m.direction,
                    "from": m.from_,
                    "type": m.type,
                    "body": (
                        (content_dict(m.content).get("text") or {}).get("body")
                        if m.type == "text"
                        else None
                    ),
                    "status": m.status,
                    "timestamp": m.timestamp,
                }
            )
        return out

    async def _storage(self, run: _Run, fn: str, args: list[Any]) -> Any:
        if not args or not isinstance(args[0], str) or not 1 <= len(args[0]) <= STORAGE_KEY_MAX:
            raise HostCallRefused(f"{fn}: the key is a string of 1 to {STORAGE_KEY_MAX} characters")
        key = args[0]
        if fn == "storage.get":
            if run.dry_run and key in run.dry_storage:
                return run.dry_storage[key]
            return await store.storage_get(self.db, run.script_id, key)
        if fn == "storage.delete":
            if run.dry_run:
                run.dry_storage[key] = None
                run.effects.append({"type": "storage.delete", "detail": {"key": key}})
                return True
            async with self.db.write() as conn:
                deleted = await store.storage_delete(conn, run.script_id, key)
            run.effects.append({"type": "storage.delete", "detail": {"key": key}})
            return deleted
        value = args[1] if len(args) > 1 else None
        value_json = orjson.dumps(value).decode()
        if run.dry_run:
            run.dry_storage[key] = value
            run.effects.append({"type": "storage.set", "detail": {"key": key, "value": value}})
            return True
        async with self.db.write() as conn:
            refused = await store.storage_set(conn, run.script_id, key, value_json, now=time.time())
        if refused is not None:
            raise HostCallRefused(f"storage.set: {refused}")
        run.effects.append({"type": "storage.set", "detail": {"key": key}})
        return True

    async def _fetch(self, run: _Run, args: list[Any]) -> dict[str, Any]:
        if not args or not isinstance(args[0], str):
            raise HostCallRefused("http.fetch(url, options): url is a string")
        url = args[0]
        options = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
        method = str(options.get("method") or "GET").upper()
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
            raise HostCallRefused(f"http.fetch: method {method[:10]!r} is not allowed")
        headers = options.get("headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise HostCallRefused("http.fetch: headers is an object of strings")
        body = options.get("body")
        if body is not None and not isinstance(body, str):
            body = orjson.dumps(body).decode()
            headers = {"Content-Type": "application/json", **headers}
        timeout_s = FETCH_TIMEOUT_S
        if isinstance(options.get("timeout_ms"), int | float):
            timeout_s = max(0.1, min(FETCH_TIMEOUT_S, float(options["timeout_ms"]) / 1000))
        if run.dry_run:
            self._check_host(run, url)
            run.effects.append({"type": "http.fetch", "detail": {"method": method, "url": url}})
            return {"status": 0, "headers": {}, "body": "", "dry_run": True}
        try:
            async with asyncio.timeout(timeout_s):
                result = await self._fetch_guarded(run, method, url, headers, body)
        except TimeoutError:
            raise HostCallRefused(f"http.fetch: no answer within {timeout_s:g} s") from None
        run.effects.append(
            {
                "type": "http.fetch",
                "detail": {"method": method, "url": url, "status": result["status"]},
            }
        )
        return result

    def _check_host(self, run: _Run, url: str) -> None:
        try:
            parsed = ssrf.parse_url(url)
        except ssrf.RefusedUrl as exc:
            raise HostCallRefused(f"http.fetch: {exc.message}") from None
        if parsed.host.lower().rstrip(".") not in run.allow_hosts:
            raise HostCallRefused(
                f"http.fetch: {parsed.host[:100]} is not in this script's allowed hosts"
            )

    async def _fetch_guarded(
        self, run: _Run, method: str, url: str, headers: dict[str, str], body: str | None
    ) -> dict[str, Any]:
        transport = ssrf.GuardedTransport(
            self.settings.allowed_private_networks, inner=self.transport
        )
        async with httpx.AsyncClient(
            transport=transport, follow_redirects=False, trust_env=False
        ) as client:
            for _hop in range(FETCH_MAX_REDIRECTS + 1):
                self._check_host(run, url)
                try:
                    request = client.build_request(
                        method, url, headers=headers, content=body.encode() if body else None
                    )
                    response = await client.send(request, stream=True)
                except ssrf.RefusedUrl as exc:
                    raise HostCallRefused(f"http.fetch: {exc.message}") from None
                except httpx.HTTPError as exc:
                    raise HostCallRefused(f"http.fetch: {type(exc).__name__}: {exc}") from None
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = str(httpx.URL(url).join(response.headers["location"]))
                        if response.status_code in (301, 302, 303):
                            method, body = ("GET", None) if method != "HEAD" else (method, None)
                        continue
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > FETCH_MAX_BYTES:
                            raise HostCallRefused(
                                f"http.fetch: the response exceeds {FETCH_MAX_BYTES} bytes"
                            )
                    return {
                        "status": response.status_code,
                        "headers": dict(response.headers),
                        "body": data.decode("utf-8", "replace"),
                    }
                except httpx.HTTPError as exc:
                    raise HostCallRefused(f"http.fetch: {type(exc).__name__}: {exc}") from None
                finally:
                    await response.aclose()
        raise HostCallRefused(f"http.fetch: more than {FETCH_MAX_REDIRECTS} redirects")
