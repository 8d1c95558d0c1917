"""The durable action loop: claims jobs of the ``action`` queue (appliance/db/
claim_loop.py) and hands each action to its account's engine (``Engine.perform``).

- A chat's actions reach the engine one at a time, in accept order (the queue's order
  key, as for sends).
- When the engine returns (WhatsApp accepted), the action becomes ``done``, its change
  is applied to our state with its events (``chat.updated``, ``message.deleted``,
  ``message.edited``) and ``action.completed`` is appended, all in the transaction that
  acks the job. A crash before that commit runs the action again: chat settings are
  states, revokes and edits go out under their ``send_id``, which an engine never sends
  twice (appliance/messaging/actions.py).
- A permanent failure, or the last attempt, makes it ``failed`` with ``action.failed``.
- An account that is not connected gets its actions back until it connects (not an
  attempt; appliance/worker/offline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiosqlite

from appliance.db.claim_loop import ClaimLoop
from appliance.db.database import Database
from appliance.db.queue import DurableQueue, Job, ack_in, release_all_leases, restore_order
from appliance.engines.base import ActionError, EngineAction, InboundMessage
from appliance.messaging import actions_store, store
from appliance.messaging.actions import ACTION_QUEUE, ACTION_RETRY, PRESENCE_TTL_S, action_out
from appliance.webhooks.contracts import WEBHOOK_QUEUE
from appliance.worker import offline
from appliance.worker.accounts import Accounts

log = logging.getLogger(__name__)

ACTION_TIMEOUT_S = 30.0
ACTION_CLAIM_LIMIT = 32
ACTION_MAX_INFLIGHT = 64


async def apply_effect(
    conn: aiosqlite.Connection, row: actions_store.ActionRow, *, now: float
) -> None:
    """What a done action changes in our state, with its events (in ``conn``)."""
    account, chat, kind = row.account_id, row.chat_jid, row.type
    if kind == "archive":  # WhatsApp unpins what it archives
        await actions_store.change_chat(
            conn, account, chat, by="api", now=now, archived=True, pinned=False
        )
    elif kind == "unarchive":
        await actions_store.change_chat(conn, account, chat, by="api", now=now, archived=False)
    elif kind in ("pin", "unpin"):
        await actions_store.change_chat(
            conn, account, chat, by="api", now=now, pinned=kind == "pin"
        )
    elif kind == "mute":
        until = float(row.params.get("until") or 0) or None
        await actions_store.change_chat(conn, account, chat, by="api", now=now, muted_until=until)
    elif kind == "unmute":
        await actions_store.change_chat(conn, account, chat, by="api", now=now, unmute=True)
    elif kind == "read":
        await actions_store.change_chat(conn, account, chat, by="api", now=now, read=True)
    elif kind == "revoke" and row.message_id is not None:
        await store.revoke_message(
            conn, account, row.message_id, revoked_by="api", revoked_at=now, now=now
        )
    elif kind == "edit" and row.message_id is not None:
        text = str(row.params.get("text", ""))
        await actions_store.edit_message(
            conn, account, row.message_id, text, by="api", edited_at=now, now=now
        )


async def apply_edit(
    conn: aiosqlite.Connection, account_id: str, message: InboundMessage, now: float
) -> None:
    """An edit WhatsApp delivered (``type: edit``, mapped by the engine): the sender
    changed the text of a message of theirs; ``message.edited`` (``by``: the sender).
    Edits of messages that are not the sender's own are ignored. ``edit.own``: the
    account edited one of its own outbound messages on the phone (``by: "phone"``)."""
    part = message.content.get("edit") or {}
    target = part.get("message_id") or message.reply_to
    text = part.get("text")
    if not target or not isinstance(text, str) or not text:
        return
    own = part.get("own") is True
    await actions_store.edit_message(
        conn,
        account_id,
        str(target),
        text,
        by="phone" if own else message.sender_jid,
        edited_at=message.timestamp or now,
        now=now,
        sender_jid=None if own else message.sender_jid,
        outbound_only=own,
    )


class ActionLoop:
    def __init__(
        self,
        db: Database,
        accounts: Accounts,
        *,
        events_written: Callable[[], Awaitable[None]],
    ) -> None:
        self.db = db
        self.accounts = accounts
        self.events_written = events_written
        self.queue = DurableQueue(
            db,
            ACTION_QUEUE,
            lease_s=ACTION_TIMEOUT_S * 2,
            max_attempts=ACTION_RETRY.max_attempts,
            backoff_base_s=ACTION_RETRY.backoff_base_s,
            backoff_cap_s=ACTION_RETRY.backoff_cap_s,
        )
        self.claims = ClaimLoop(
            self.queue,
            self._job,
            batch=ACTION_CLAIM_LIMIT,
            max_inflight=ACTION_MAX_INFLIGHT,
            what="actions",
        )

    async def recover(self) -> None:
        """At the worker's start: leases held now belong to a worker that died."""
        async with self.db.write() as conn:
            await release_all_leases(conn, time.time(), except_queues=(WEBHOOK_QUEUE,))
            await restore_order(conn, ACTION_QUEUE)

    def start(self) -> None:
        self.claims.start()

    async def stop(self, timeout_s: float) -> None:
        await self.claims.stop(timeout_s)

    def wake(self) -> None:
        self.claims.wake.set()

    async def account_connected(self, account_id: str) -> None:
        """Its actions given back while it was not connected are due now
        (appliance/worker/offline.py)."""
        await offline.due_again(self.queue, account_id, self.wake)

    async def _job(self, job: Job) -> None:
        finished = False
        try:
            finished = await self._run(job)
        except Exception:
            log.exception("action failed unexpectedly", extra={"job": job.id})
            with contextlib.suppress(Exception):
                await self.queue.nack(job.id, job.lease_token or "", error="internal error")
        if finished:
            self.wake()  # the chat's next action, if any, is claimable now

    async def _run(self, job: Job) -> bool:
        token = job.lease_token or ""
        account_id = job.payload["account_id"]
        row = await actions_store.action_row(self.db, account_id, job.payload["action_id"])
        if row is None or row.status != "queued":
            await self.queue.ack(job.id, token)  # account deleted, or finished before a crash
            return True
        if row.type == "presence" and time.time() - row.created_at > PRESENCE_TTL_S:
            return await self._finish(
                job, row, error="expired: a typing indicator is not sent late"
            )
        runtime = self.accounts.get(account_id)
        if runtime is None or not runtime.connected or runtime.engine is None:
            await offline.give_back(self.queue, job, self.accounts, self.wake)
            return False
        action = EngineAction(
            id=row.id,
            account_id=account_id,
            type=row.type,
            chat_jid=row.chat_jid,
            params=row.params,
            message_id=row.message_id,
            send_id=row.send_id,
        )
        try:
            await asyncio.wait_for(runtime.engine.perform(action), ACTION_TIMEOUT_S)
        except ActionError as exc:
            if exc.permanent or job.attempts >= job.max_attempts:
                return await self._finish(job, row, error=exc.reason)
            await self.queue.nack(job.id, token, error=exc.reason, retry_after_s=exc.retry_after_s)
            return False
        except (TimeoutError, ConnectionError, OSError) as exc:
            reason = f"engine error: {exc!r}"
            if job.attempts >= job.max_attempts:
                return await self._finish(
                    job, row, error=f"{reason} (gave up after {job.attempts} attempts)"
                )
            await self.queue.nack(job.id, token, error=reason)
            return False
        return await self._finish(job, row, error=None)

    async def _finish(self, job: Job, row: actions_store.ActionRow, *, error: str | None) -> bool:
        now = time.time()

        async def record(conn: aiosqlite.Connection) -> None:
            status = "failed" if error is not None else "done"
            changed = await actions_store.finish_action(
                conn, row.account_id, row.id, status=status, error=error, now=now
            )
            if changed:
                if error is None:
                    await apply_effect(conn, row, now=now)
                done = await actions_store.action_row(conn, row.account_id, row.id)
                assert done is not None
                data = action_out(done).model_dump(mode="json")
                kind = "action.failed" if error is not None else "action.completed"
                await store.append_event(conn, kind, row.account_id, data, now)
            await ack_in(conn, ACTION_QUEUE, job.id, job.lease_token or "", now)

        await self.db.write_batched(record)
        await self.events_written()
        return True
