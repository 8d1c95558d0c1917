"""The host API of scripts, carried out by the worker: what a run's calls may do.

- ``reply(body)`` / ``send(chat, body)``: a normal durable send
  (``messaging.sends.accept_send``, ``origin="automation"``) whose idempotency key is
  ``script:<script>:<run>:<n>``, n the call's number in the run: a run retried (after a
  crash of the scripts process or of the worker) keeps its run id and makes the same
  calls with the same keys, so a send accepted the first time is not accepted again. A
  chat gets at most ``AUTOMATED_SENDS_PER_CHAT_PER_MIN`` automated sends a minute, from
  every automation.
- ``getMessages(chat, limit)``: the newest messages of a chat of this account.
- ``tags.add/remove(chat, tag)``, ``chat.setStatus(chat, status[, snoozedUntil])``,
  ``chat.assign(chat, userId | null)``: through the inbox stores
  (``appliance.inbox``), so they write the same ``chat.updated``/
  ``chat.assigned`` events as the API, the script as actor: ``by: {"type": "script",
  "id": <script>}`` (chat changes) or ``by: {"principal": "script:<id>", "name"}``
  (tags).
- ``storage.get/set/delete``: JSON values per script, capped in keys and bytes.
- ``http.fetch(url, options)``: only to the script's allowed hosts, through the SSRF
  guard (every hop of a redirect too), with a timeout and a response size cap.

Dry runs carry out the reads and record the writes as effects instead of doing them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from prometheus_client import Counter

from appliance.automations import scripts_store as store
from appliance.config import Settings
from appliance.db.database import Database
from appliance.errors import ClientError
from appliance.inbox import store as inbox_store
from appliance.inbox import tags_store
from appliance.inbox.actor import Actor
from appliance.ipc.scripts_protocol import (
    HostCallParams,
    HostCallRefused,
    HostCallResult,
    Limits,
)
from appliance.messaging import queries
from appliance.messaging import store as messaging_store
from appliance.messaging.models import (
    Context,
    MessageContent,
    content_dict,
    recipient_jid,
)
from appliance.messaging.sends import accept_send
from appliance.net import ssrf

SCRIPT_HOST_CALLS = Counter(
    "appliance_script_host_calls_total",
    "Host API calls of scripts by function and outcome (ok, refused).",
    ["fn", "outcome"],
)

AUTOMATED_SENDS_PER_CHAT_PER_MIN = 10
GET_MESSAGES_MAX = 50
FETCH_TIMEOUT_S = 10.0
FETCH_MAX_BYTES = 256 * 1024
FETCH_MAX_REDIRECTS = 3
STORAGE_KEY_MAX = 200
CHAT_STATUSES = ("open", "pending", "resolved", "snoozed")


@dataclass(frozen=True)
class ScriptActor(Actor):
    """A script as the actor of inbox changes (events say ``by: {type: script, id}``)."""

    script_id: str = ""

    def as_data(self) -> dict[str, Any]:
        return {"type": "script", "id": self.script_id, "user_id": None}


def script_actor(script_id: str, name: str = "") -> ScriptActor:
    """The script acting; tag events name it ``script:<id>`` with its name."""
    return ScriptActor(
        "script", principal=f"script:{script_id}", name=name or script_id, script_id=script_id
    )


@dataclass
class RunScope:
    """One run in flight: what its host calls may touch."""

    run_id: str
    script_id: str
    account_id: str
    trigger_message: dict[str, Any] | None
    allow_hosts: frozenset[str]
    dry_run: bool
    quote: str | None = None  # the stored message a reply quotes (message triggers)
    name: str = ""  # the script's name (the actor's name in tag events)
    effects: list[dict[str, Any]] = field(default_factory=list)
    dry_storage: dict[str, Any] = field(default_factory=dict)
    calls: int = 0


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


class ScriptHost:
    """Serves the host calls of the runs in flight (the worker's side of the bridge)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        limits: Limits,
        wake_sender: Callable[[], None],
        events_written: Callable[[], Any],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.limits = limits
        self.wake_sender = wake_sender
        self.events_written = events_written
        self.transport = transport  # tests: replaces the network below the guard
        self.runs: dict[str, RunScope] = {}

    # -- the host API -----------------------------------------------------------------------

    async def host_call(self, params: HostCallParams) -> HostCallResult:
        run = self.runs.get(params.run_id)
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

    async def _host(self, run: RunScope, call: HostCallParams) -> Any:
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
        if fn in ("tags.add", "tags.remove"):
            return await self._tag(run, fn, args)
        if fn == "chat.setStatus":
            return await self._set_status(run, args)
        if fn == "chat.assign":
            return await self._assign(run, args)
        raise HostCallRefused(f"no host function {fn!r}")

    # -- inbox: tags, status, assignment (the inbox stores write the events) -----------------

    @staticmethod
    def _chat_arg(fn: str, args: list[Any], usage: str) -> str:
        if not args or not isinstance(args[0], str):
            raise HostCallRefused(f"{fn}({usage}): chat is an E.164 number or a chat id")
        try:
            return recipient_jid(args[0])
        except ValueError as exc:
            raise HostCallRefused(f"{fn}: {exc}") from None

    async def _tag(self, run: RunScope, fn: str, args: list[Any]) -> bool:
        chat = self._chat_arg(fn, args, "chat, tag")
        tag = args[1] if len(args) > 1 else None
        if isinstance(tag, bool) or not isinstance(tag, str | int) or tag == "":
            raise HostCallRefused(f"{fn}(chat, tag): tag is a tag's name or id")
        tag_id = (
            tag
            if isinstance(tag, int)
            else await tags_store.tag_id_by_name(self.db, run.account_id, tag)
        )
        if tag_id is None:
            raise HostCallRefused(f"{fn}: no tag {str(tag)[:60]!r} in this account")
        detail = {"chat_id": chat, "tag": tag}
        if run.dry_run:
            await self._known_chat(run, chat)
            run.effects.append({"type": fn, "detail": detail})
            return True
        add, remove = ([tag_id], []) if fn == "tags.add" else ([], [tag_id])
        async with self.db.write() as conn:
            changed, _ = await tags_store.apply_tags(
                conn,
                run.account_id,
                add=add,
                remove=remove,
                chats=[chat],
                contacts=[],
                by=script_actor(run.script_id, run.name or run.script_id),
                now=time.time(),
            )
        run.effects.append({"type": fn, "detail": {**detail, "changed": bool(changed)}})
        if changed:
            await self.events_written()
        return bool(changed)

    async def _set_status(self, run: RunScope, args: list[Any]) -> bool:
        chat = self._chat_arg("chat.setStatus", args, "chat, status")
        status = args[1] if len(args) > 1 else None
        if status not in CHAT_STATUSES:
            raise HostCallRefused(
                f"chat.setStatus(chat, status): status is one of {', '.join(CHAT_STATUSES)}"
            )
        until = args[2] if len(args) > 2 else None
        if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
            raise HostCallRefused("chat.setStatus: snoozedUntil is epoch seconds")
        detail = {"chat_id": chat, "status": status, "snoozed_until": until}
        if run.dry_run:
            await self._known_chat(run, chat)
            run.effects.append({"type": "chat.setStatus", "detail": detail})
            return True
        await self._change_chat(run, chat, status=status, snoozed_until=until)
        run.effects.append({"type": "chat.setStatus", "detail": detail})
        return True

    async def _assign(self, run: RunScope, args: list[Any]) -> bool:
        chat = self._chat_arg("chat.assign", args, "chat, userId")
        user = args[1] if len(args) > 1 else None
        if user is not None and (isinstance(user, bool) or not isinstance(user, int)):
            raise HostCallRefused("chat.assign(chat, userId): userId is a user id or null")
        detail = {"chat_id": chat, "assignee_id": user}
        if run.dry_run:
            await self._known_chat(run, chat)
            if user is not None and not await inbox_store.can_work_account(
                self.db, run.account_id, user
            ):
                raise HostCallRefused(
                    f"user {user} does not exist, is inactive or lacks this account"
                )
            run.effects.append({"type": "chat.assign", "detail": detail})
            return True
        await self._change_chat(run, chat, assignee_id=user)
        run.effects.append({"type": "chat.assign", "detail": detail})
        return True

    async def _known_chat(self, run: RunScope, chat: str) -> None:
        """Dry runs check what they can without writing: the chat exists."""
        if await inbox_store.conversation(self.db, run.account_id, chat) is None:
            raise HostCallRefused(f"no chat {chat!r} in this account")

    async def _change_chat(self, run: RunScope, chat: str, **change: Any) -> None:
        async with self.db.write() as conn:
            found = await inbox_store.change_chat(
                conn,
                run.account_id,
                chat,
                by=script_actor(run.script_id),
                assigns_others=True,
                now=time.time(),
                **change,
            )
        if not found:
            raise HostCallRefused(f"no chat {chat!r} in this account")
        await self.events_written()

    async def _send(self, run: RunScope, n: int, chat: str, body: MessageContent) -> dict[str, Any]:
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
                recent = await store.automated_sends_since(conn, run.account_id, chat, now - 60)
                if recent >= AUTOMATED_SENDS_PER_CHAT_PER_MIN:
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

    async def _get_messages(self, run: RunScope, args: list[Any]) -> list[dict[str, Any]]:
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

    async def _storage(self, run: RunScope, fn: str, args: list[Any]) -> Any:
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

    async def _fetch(self, run: RunScope, args: list[Any]) -> dict[str, Any]:
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

    def _check_host(self, run: RunScope, url: str) -> None:
        try:
            parsed = ssrf.parse_url(url)
        except ssrf.RefusedUrl as exc:
            raise HostCallRefused(f"http.fetch: {exc.message}") from None
        if parsed.host.lower().rstrip(".") not in run.allow_hosts:
            raise HostCallRefused(
                f"http.fetch: {parsed.host[:100]} is not in this script's allowed hosts"
            )

    async def _fetch_guarded(
        self, run: RunScope, method: str, url: str, headers: dict[str, str], body: str | None
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
