"""The durable automation trigger and the auto-reply step (appliance/automations/
trigger.py, auto_reply_step.py, auto_reply_store.py) against a real migrated SQLite
file, through the worker's inbound commit (MessagingService): the trigger job commits
with the message, a job run again never sends twice, replies are normal durable sends
with origin "automation", and cooldowns and conditions read the database."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.automations import auto_reply_store as rules_store
from appliance.automations.auto_reply_rules import ACTIONS, CONDITIONS, Rule
from appliance.automations.steps import automation_steps
from appliance.automations.trigger import (
    AUTOMATION_QUEUE,
    AutomationTrigger,
    trigger_job_key,
)
from appliance.config import Paths, Settings, load_settings
from appliance.db.database import Database
from appliance.db.queue import DurableQueue
from appliance.engines.base import InboundMessage
from appliance.inbox import quick_replies_store, tags_store
from appliance.inbox import store as inbox_store
from appliance.inbox.models import Actor
from appliance.inbox.models import Actor as _QrActor
from appliance.messaging import sends, store
from appliance.messaging.contracts import SEND_QUEUE
from appliance.messaging.models import MessageContent
from appliance.worker.messaging import AccountRuntime, MessagingService
from tests.unit.conftest import OpenDb

QR_ACTOR = _QrActor(principal="user:1", name="test")

ACCOUNT = "acc_auto"
ALICE = "905551110001@s.whatsapp.net"
BOB = "905551110002@s.whatsapp.net"
GROUP = "120363025246125244@g.us"


def _settings(tmp_path: Path) -> Settings:
    paths = Paths(tmp_path / "root")
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    return load_settings(paths, environ={})


class Harness:
    def __init__(self, db: Database, service: MessagingService, runtime: AccountRuntime) -> None:
        self.db = db
        self.service = service
        self.runtime = runtime
        self.published = 0
        self.woken = 0

    def trigger(self) -> AutomationTrigger:
        """A trigger consumer like the one a (re)started worker makes."""

        async def events_written() -> None:
            self.published += 1

        def wake_sender() -> None:
            self.woken += 1

        return AutomationTrigger(
            self.db, automation_steps(), events_written=events_written, wake_sender=wake_sender
        )

    async def inbound(self, message_id: str, text: str, chat: str = ALICE) -> None:
        message = InboundMessage(
            id=message_id,
            chat_jid=chat,
            sender_jid=ALICE if chat == GROUP else chat,
            type="text",
            content={"type": "text", "text": {"body": text}},
            body=text,
            timestamp=time.time(),
        )
        assert await self.service.commit_inbound(self.runtime, [message]) == [True]

    async def drain(self, trigger: AutomationTrigger | None = None) -> int:
        """Claim and handle every due trigger job, as the claim loop would; how many."""
        trigger = trigger or self.trigger()
        handled = 0
        for _ in range(100):
            jobs = await trigger.queue.claim(limit=10)
            if not jobs:
                return handled
            for job in jobs:
                await trigger.handle(job)
                handled += 1
        raise AssertionError("trigger jobs did not drain")

    async def rule(self, pattern: str, **fields: Any) -> str:
        rule_id = rules_store.new_rule_id()
        values: dict[str, Any] = {
            "name": pattern,
            "priority": 100,
            "active": True,
            "match_type": "contains",
            "cooldown_s": 0,
            "stop": True,
            **fields,
        }
        values["conditions"] = CONDITIONS.validate_python(values.get("conditions", []))
        values["actions"] = ACTIONS.validate_python(
            values.get("actions", [{"type": "reply", "text": f"re: {pattern}"}])
        )
        async with self.db.write() as conn:
            await rules_store.insert_rule(
                conn, Rule(id=rule_id, pattern=pattern, **values), account_id=ACCOUNT, now=1.0
            )
        return rule_id

    async def replies(self, chat: str | None = None) -> list[Any]:
        sql = "SELECT * FROM messages WHERE account_id = ? AND direction = 'out'"
        params: list[str] = [ACCOUNT]
        if chat is not None:
            sql += " AND chat_jid = ?"
            params.append(chat)
        return await self.db.fetchall(sql + " ORDER BY seq", params)

    async def fired_events(self) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT data FROM events WHERE type = 'automation.fired' ORDER BY id"
        )
        return [orjson.loads(r["data"]) for r in rows]


def _run(
    tmp_path: Path, open_db: OpenDb, db_path: Path, body: Callable[[Harness], Awaitable[None]]
) -> None:
    settings = _settings(tmp_path)

    async def main() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await store.create_account(
                    conn,
                    account_id=ACCOUNT,
                    name="auto",
                    engine="sandbox",
                    engine_settings={},
                    settings={},
                    now=1.0,
                )

            async def publish(_: int) -> None:
                pass

            service = MessagingService(db, settings, publish=publish)
            runtime = AccountRuntime(service, await store.account_row(db, ACCOUNT))
            try:
                await body(Harness(db, service, runtime))
            finally:
                await service.stop(1)

    asyncio.run(main())


def test_an_inbound_message_and_its_trigger_job_commit_together(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        rule_id = await h.rule("merhaba")
        await h.inbound("IN1", "MERHABA!")
        # Committed with the message, before any consumer ran: a worker killed now
        # still answers it after its restart.
        job = await h.db.fetchone(
            "SELECT state, order_key FROM queue_jobs WHERE queue = ? AND unique_key = ?",
            (AUTOMATION_QUEUE, trigger_job_key(ACCOUNT, "IN1")),
        )
        assert job is not None and job["state"] == "queued"
        assert job["order_key"] == f"{ACCOUNT}:{ALICE}"
        assert await h.replies() == []

        assert await h.drain() == 1  # "the restarted worker"
        replies = await h.replies()
        assert len(replies) == 1
        reply = replies[0]
        assert reply["origin"] == "automation" and reply["chat_jid"] == ALICE
        assert reply["client_key"] == f"automation:rule:{rule_id}:IN1"
        assert orjson.loads(reply["content"])["text"]["body"] == "re: merhaba"
        send_job = await h.db.fetchone(
            "SELECT state FROM queue_jobs WHERE queue = ? AND payload LIKE ?",
            (SEND_QUEUE, f'%"{reply["id"]}"%'),
        )
        assert send_job is not None and send_job["state"] == "queued"  # a normal durable send
        events = await h.fired_events()
        assert events == [
            {
                "automation": "auto_reply",
                "rule_id": rule_id,
                "rule_name": "merhaba",
                "chat_id": ALICE,
                "trigger_message_id": "IN1",
                "message_ids": [reply["id"]],
                "errors": [],
                "actions": [{"type": "reply", "outcome": "done", "message_id": reply["id"]}],
            }
        ]
        assert h.woken == 1 and h.published == 1
        record = await rules_store.get_rule(h.db, ACCOUNT, rule_id)
        assert record is not None and record.fired_count == 1
        done = await h.db.scalar(
            "SELECT state FROM queue_jobs WHERE queue = ? AND unique_key = ?",
            (AUTOMATION_QUEUE, trigger_job_key(ACCOUNT, "IN1")),
        )
        assert done == "done"
        # The same WhatsApp message delivered again is stored once and triggers nothing.
        again = InboundMessage(
            id="IN1",
            chat_jid=ALICE,
            sender_jid=ALICE,
            type="text",
            content={"type": "text", "text": {"body": "MERHABA!"}},
        )
        assert await h.service.commit_inbound(h.runtime, [again]) == [False]
        assert await h.drain() == 0

    _run(tmp_path, open_db, db_path, body)


def test_a_job_run_again_never_sends_twice(tmp_path: Path, open_db: OpenDb, db_path: Path) -> None:
    async def body(h: Harness) -> None:
        rule_id = await h.rule(
            "menu",
            actions=[
                {"type": "reply", "text": "one"},
                {"type": "reply", "text": "two", "quote": True},
            ],
        )
        await h.inbound("IN1", "the menu please")
        assert await h.drain() == 1
        first = [r["id"] for r in await h.replies()]
        assert len(first) == 2
        keys = {r["client_key"] for r in await h.replies()}
        assert keys == {f"automation:rule:{rule_id}:IN1", f"automation:rule:{rule_id}:IN1:2"}

        # A crash after the step committed but before the ack: the job runs again.
        queue = DurableQueue(h.db, AUTOMATION_QUEUE)
        assert await queue.replay_keys([trigger_job_key(ACCOUNT, "IN1")], states=("done",)) == 1
        assert await h.drain() == 1
        assert [r["id"] for r in await h.replies()] == first  # the journal: step skipped
        # Even without the journal row, the client keys return the first sends.
        async with h.db.write() as conn:
            await conn.execute("DELETE FROM automation_step_runs")
            await conn.execute("DELETE FROM auto_reply_cooldowns")
        assert await queue.replay_keys([trigger_job_key(ACCOUNT, "IN1")], states=("done",)) == 1
        assert await h.drain() == 1
        assert [r["id"] for r in await h.replies()] == first
        send_jobs = await h.db.scalar(
            "SELECT COUNT(*) FROM queue_jobs WHERE queue = ?", (SEND_QUEUE,)
        )
        assert send_jobs == 2

    _run(tmp_path, open_db, db_path, body)


def test_only_accounts_with_active_automations_get_trigger_jobs(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async def jobs() -> list[str]:
            rows = await h.db.fetchall(
                "SELECT unique_key FROM queue_jobs WHERE queue = ? ORDER BY id",
                (AUTOMATION_QUEUE,),
            )
            return [r["unique_key"] for r in rows]

        await h.inbound("N1", "hello")  # no rule, no script: nothing would run
        assert await jobs() == []
        rule_id = await h.rule("hello")
        await h.inbound("N2", "hello")
        assert await jobs() == [trigger_job_key(ACCOUNT, "N2")]
        assert await h.drain() == 1
        assert [e["trigger_message_id"] for e in await h.fired_events()] == ["N2"]
        record = await rules_store.get_rule(h.db, ACCOUNT, rule_id)
        assert record is not None
        async with h.db.write() as conn:  # deactivated: no jobs again
            await rules_store.replace_rule(
                conn, dataclasses.replace(record.rule, active=False), account_id=ACCOUNT, now=5.0
            )
        await h.inbound("N3", "hello")
        assert await jobs() == [trigger_job_key(ACCOUNT, "N2")]
        assert len(await h.replies()) == 1

    _run(tmp_path, open_db, db_path, body)


def test_sends_never_trigger_and_non_text_messages_are_skipped(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        await h.rule("hello")
        # The account's own send (API or automation) carries the text but is outbound.
        async with h.db.write() as conn:
            await sends.accept_send(
                conn,
                account_id=ACCOUNT,
                to="+905551110001",
                message=MessageContent.model_validate({"type": "text", "text": {"body": "hello"}}),
                client_key=None,
                now=time.time(),
            )
        reaction = InboundMessage(
            id="R1",
            chat_jid=ALICE,
            sender_jid=ALICE,
            type="reaction",
            content={"type": "reaction", "reaction": {"message_id": "X", "emoji": "hello"}},
        )
        assert await h.service.commit_inbound(h.runtime, [reaction]) == [True]
        assert await h.drain() == 1  # the reaction's job: skipped, acked
        assert len(await h.replies()) == 1 and await h.fired_events() == []

    _run(tmp_path, open_db, db_path, body)


def test_cooldown_is_per_chat_and_quiet(tmp_path: Path, open_db: OpenDb, db_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.rule("price", cooldown_s=3600)
        await h.rule(".", match_type="regex", name="fallback", priority=200)
        await h.inbound("A1", "price?")
        await h.inbound("A2", "PRICE??")  # in the cooldown: quiet, and stops the walk
        await h.inbound("B1", "price", chat=BOB)  # another chat: its own cooldown
        assert await h.drain() == 3
        alice = [orjson.loads(r["content"])["text"]["body"] for r in await h.replies(ALICE)]
        bob = [orjson.loads(r["content"])["text"]["body"] for r in await h.replies(BOB)]
        assert alice == ["re: price"] and bob == ["re: price"]
        await h.inbound("A3", "thanks")  # the fallback answers other texts
        assert await h.drain() == 1
        assert len(await h.replies(ALICE)) == 2

    _run(tmp_path, open_db, db_path, body)


def test_conditions_read_the_database(tmp_path: Path, open_db: OpenDb, db_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.rule("hi", name="group", conditions=[{"type": "chat_type", "chat": "group"}])
        await h.rule("hi", name="first", conditions=[{"type": "first_message"}], priority=150)
        await h.rule(
            "hours", conditions=[{"type": "business_hours", "when": "outside"}], priority=300
        )
        await h.inbound("G1", "hi all", chat=GROUP)
        await h.inbound("A1", "hi")  # first message of Alice's chat
        await h.inbound("A2", "hi again")  # not the first: no rule fires
        assert await h.drain() == 3
        fired = [(e["rule_name"], e["trigger_message_id"]) for e in await h.fired_events()]
        assert fired == [("group", "G1"), ("first", "A1")]

        # Business hours: the account's settings, closed all week, then open all week.
        closed = {"timezone": "Europe/Istanbul", "business_hours": {}}
        async with h.db.write() as conn:
            await store.update_account(conn, ACCOUNT, now=2.0, settings=closed)
        await h.inbound("A3", "opening hours?")
        assert await h.drain() == 1
        assert (await h.fired_events())[-1]["trigger_message_id"] == "A3"
        always = {d: [{"start": "00:00", "end": "24:00"}] for d in ("mon", "tue", "wed", "thu")}
        always |= {d: [{"start": "00:00", "end": "24:00"}] for d in ("fri", "sat", "sun")}
        async with h.db.write() as conn:
            await store.update_account(
                conn, ACCOUNT, now=3.0, settings={"timezone": "UTC", "business_hours": always}
            )
        await h.inbound("A4", "opening hours?")
        assert await h.drain() == 1
        assert (await h.fired_events())[-1]["trigger_message_id"] == "A3"

    _run(tmp_path, open_db, db_path, body)


def test_a_reply_that_cannot_be_queued_is_reported_not_retried_forever(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        await h.rule(
            "file",
            actions=[{"type": "reply", "media": {"type": "document", "id": "med_gone12345"}}],
        )
        await h.inbound("A1", "send the file")
        assert await h.drain() == 1
        (event,) = await h.fired_events()
        assert event["message_ids"] == [] and "med_gone12345" in event["errors"][0]
        assert await h.replies() == []
        state = await h.db.scalar(
            "SELECT state FROM queue_jobs WHERE queue = ?", (AUTOMATION_QUEUE,)
        )
        assert state == "done"

    _run(tmp_path, open_db, db_path, body)


def test_the_consumer_runs_jobs_with_the_claim_loop(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        await h.rule("ping")
        trigger = h.service.automations
        await trigger.recover()
        trigger.start()
        try:
            for n in range(5):
                await h.inbound(f"P{n}", "ping", chat=f"90555111{n:04d}@s.whatsapp.net")

            async def answered() -> None:
                while len(await h.replies()) < 5:
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(answered(), 30)
        finally:
            await trigger.stop(5)
        assert len(await h.replies()) == 5

    _run(tmp_path, open_db, db_path, body)


def test_housekeeping_forgets_old_jobs_and_step_rows(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        await h.rule("hello")
        await h.inbound("A1", "hello")
        assert await h.drain() == 1
        counts = "SELECT (SELECT COUNT(*) FROM queue_jobs WHERE queue = 'automation'), "
        counts += "(SELECT COUNT(*) FROM automation_step_runs)"
        assert tuple(await h.db.fetchone(counts)) == (1, 1)  # type: ignore[arg-type]

        async def noop() -> None:
            pass

        later = time.time()
        for days, expected in ((0.5, (1, 1)), (2, (0, 1)), (8, (0, 0))):
            trigger = AutomationTrigger(
                h.db,
                [],
                events_written=noop,
                wake_sender=lambda: None,
                clock=lambda d=days: later + d * 86400,
            )
            await trigger.tidy()
            assert tuple(await h.db.fetchone(counts)) == expected, days  # type: ignore[arg-type]
        assert len(await h.replies()) == 1  # the reply itself is kept

    _run(tmp_path, open_db, db_path, body)


# -- conditions on the team inbox, and actions that change it ----------------------------

SYSTEM_ACTOR = Actor(principal="user:1", name="setup")


async def _tag(h: Harness, name: str) -> int:
    async with h.db.write() as conn:
        tag = await tags_store.create_tag(
            conn, ACCOUNT, name=name, color=None, by=SYSTEM_ACTOR, now=1.0
        )
    return tag.id


async def _user(h: Harness, name: str, accounts: list[str]) -> int:
    async with h.db.write() as conn:
        return await auth_store.create_user(
            conn,
            username=name,
            password_hash="x",
            role=Role.AGENT,
            all_accounts=False,
            accounts=accounts,
            now=1.0,
        )


async def _chat_events(h: Harness, *types: str) -> list[dict[str, Any]]:
    marks = ",".join("?" * len(types))
    rows = await h.db.fetchall(
        f"SELECT type, data FROM events WHERE type IN ({marks}) ORDER BY id", types
    )
    return [{"type": r["type"], **orjson.loads(r["data"])} for r in rows]


def test_tag_and_status_conditions_read_the_inbox(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        vip = await _tag(h, "VIP")
        blocked = await _tag(h, "blocked")
        await h.rule(
            "hi",
            name="vip",
            stop=False,
            conditions=[{"type": "chat_tags", "required": [vip], "excluded": [blocked]}],
        )
        await h.rule(
            "hi",
            name="pending",
            priority=150,
            conditions=[{"type": "status", "statuses": ["pending"]}],
        )
        await h.inbound("A1", "hi")  # untagged, open: nothing
        assert await h.drain() == 1
        assert await h.fired_events() == []
        async with h.db.write() as conn:
            await tags_store.apply_tags(
                conn,
                ACCOUNT,
                add=[vip],
                remove=[],
                chats=[ALICE],
                contacts=[],
                by=SYSTEM_ACTOR,
                now=2.0,
            )
            await inbox_store.change_chat(
                conn,
                ACCOUNT,
                ALICE,
                by=inbox_store.SYSTEM,
                assigns_others=True,
                now=2.0,
                status="pending",
            )
        await h.inbound("A2", "hi")
        assert await h.drain() == 1
        assert [e["rule_name"] for e in await h.fired_events()] == ["vip", "pending"]
        async with h.db.write() as conn:
            await tags_store.apply_tags(
                conn,
                ACCOUNT,
                add=[blocked],
                remove=[],
                chats=[ALICE],
                contacts=[],
                by=SYSTEM_ACTOR,
                now=3.0,
            )
            # Resolved, the chat is reopened by the next message: "pending" no longer holds.
            await inbox_store.change_chat(
                conn,
                ACCOUNT,
                ALICE,
                by=inbox_store.SYSTEM,
                assigns_others=True,
                now=3.0,
                status="resolved",
            )
        await h.inbound("A3", "hi")
        assert await h.drain() == 1
        assert len(await h.fired_events()) == 2

    _run(tmp_path, open_db, db_path, body)


def test_inbox_actions_write_the_inbox_events_once_with_the_rule_as_actor(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        vip = await _tag(h, "VIP")
        new = await _tag(h, "new")
        agent = await _user(h, "ayse", [ACCOUNT])
        async with h.db.write() as conn:
            quick = await quick_replies_store.create_quick_reply(
                conn,
                ACCOUNT,
                name="hello",
                shortcut="/hello",
                created_by="user:1",
                by=QR_ACTOR,
                now=1.0,
                body="Merhaba {{contact.name|müşterimiz}}, ben {{agent.name|ekip}}. Kod: {{code}}",
                media=None,
            )
        rule_id = await h.rule(
            "vip",
            actions=[
                {"type": "assign", "user_id": agent},
                {"type": "tags", "add": [vip], "remove": [new]},
                {
                    "type": "quick_reply",
                    "quote": True,
                    "quick_reply": {"id": quick.id, "variables": {"code": "X1"}},
                },
                {"type": "set_status", "status": "pending"},
            ],
        )
        await h.inbound("A1", "I am a VIP")
        assert await h.drain() == 1
        (fired,) = await h.fired_events()
        replies = await h.replies()
        assert len(replies) == 1
        reply = replies[0]
        assert reply["client_key"] == f"automation:rule:{rule_id}:A1:3"
        assert reply["origin"] == "automation" and reply["reply_to"] == "A1"
        # agent.name: the assignee the rule's first action set.
        assert orjson.loads(reply["content"])["text"]["body"] == (
            "Merhaba müşterimiz, ben ayse. Kod: X1"
        )
        assert fired["errors"] == [] and fired["message_ids"] == [reply["id"]]
        assert [a["outcome"] for a in fired["actions"]] == ["done"] * 4
        conv = await inbox_store.conversation(h.db, ACCOUNT, ALICE)
        assert conv is not None and conv.status == "pending" and conv.assignee_id == agent
        tagged = await tags_store.tags_of(h.db, ACCOUNT, [ALICE])
        assert [t.id for t in tagged[ALICE]] == [vip]
        events = await _chat_events(h, "chat.updated", "chat.assigned")
        by_rule = {
            "type": "automation",
            "automation": "auto_reply",
            "rule_id": rule_id,
            "name": "vip",
        }
        assigned = [e for e in events if e["type"] == "chat.assigned"]
        assert len(assigned) == 1 and assigned[0]["by"] == by_rule
        assert assigned[0]["to"] == {"id": agent, "username": "ayse"}
        status = [
            e
            for e in events
            if e["type"] == "chat.updated" and "status" in e and e.get("previous_status") == "open"
        ]
        assert len(status) == 1 and status[0]["by"] == by_rule
        tag_events = [e for e in events if e.get("changed") == ["tags"]]
        assert len(tag_events) == 1
        assert tag_events[0]["by"] == {"principal": f"automation:{rule_id}", "name": "vip"}
        assert [t["id"] for t in tag_events[0]["tags_added"]] == [vip]

        # Replayed after a crash (with and without the step's journal row): no action
        # happens twice, no second event.
        queue = DurableQueue(h.db, AUTOMATION_QUEUE)
        count = len(events)
        for wipe in (False, True):
            if wipe:
                async with h.db.write() as conn:
                    await conn.execute("DELETE FROM automation_step_runs")
            assert await queue.replay_keys([trigger_job_key(ACCOUNT, "A1")], states=("done",)) == 1
            assert await h.drain() == 1
            assert [r["id"] for r in await h.replies()] == [reply["id"]]
            assert len(await _chat_events(h, "chat.updated", "chat.assigned")) == count
        assert len(await h.fired_events()) == 2  # the run without the journal row reports
        assert [a["outcome"] for a in (await h.fired_events())[1]["actions"]] == [
            "unchanged",
            "unchanged",
            "done",
            "unchanged",
        ]

    _run(tmp_path, open_db, db_path, body)


def test_a_refused_action_is_undone_alone_and_reported(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        vip = await _tag(h, "VIP")
        outsider = await _user(h, "outsider", [])  # lacks the account
        async with h.db.write() as conn:
            quick = await quick_replies_store.create_quick_reply(
                conn,
                ACCOUNT,
                name="code",
                shortcut="/code",
                created_by="user:1",
                by=QR_ACTOR,
                now=1.0,
                body="Your code: {{code}}",
                media=None,
            )
        await h.rule(
            "help",
            actions=[
                {"type": "tags", "add": [vip, 999]},  # 999: deleted since
                {"type": "assign", "user_id": outsider},
                {"type": "quick_reply", "quick_reply": {"id": quick.id}},  # code missing
                {"type": "quick_reply", "quick_reply": {"id": 4242, "variables": {}}},
                {"type": "set_status", "status": "snoozed", "snooze_s": 3600},
                {"type": "reply", "text": "We are on it"},
            ],
        )
        await h.inbound("A1", "help!")
        assert await h.drain() == 1
        (fired,) = await h.fired_events()
        outcomes = [a["outcome"] for a in fired["actions"]]
        assert outcomes == ["error", "error", "error", "error", "done", "done"]
        assert "999" in fired["errors"][0] and "does not exist" in fired["errors"][1]
        assert "code" in fired["errors"][2] and "4242" in fired["errors"][3]
        assert await tags_store.tags_of(h.db, ACCOUNT, [ALICE]) == {}  # all or nothing
        conv = await inbox_store.conversation(h.db, ACCOUNT, ALICE)
        assert conv is not None and conv.status == "snoozed" and conv.assignee_id is None
        assert [orjson.loads(r["content"])["text"]["body"] for r in await h.replies()] == [
            "We are on it"
        ]
        # The snooze runs from the message's arrival: a replay without the journal row
        # sets the same time, so no second chat.updated.
        updates = len(await _chat_events(h, "chat.updated"))
        async with h.db.write() as conn:
            await conn.execute("DELETE FROM automation_step_runs")
        queue = DurableQueue(h.db, AUTOMATION_QUEUE)
        assert await queue.replay_keys([trigger_job_key(ACCOUNT, "A1")], states=("done",)) == 1
        assert await h.drain() == 1
        assert len(await _chat_events(h, "chat.updated")) == updates
        assert (await h.fired_events())[-1]["actions"][4]["outcome"] == "unchanged"

    _run(tmp_path, open_db, db_path, body)


def test_the_worker_sees_every_rule_change_at_once(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        rule_id = await h.rule("price")
        assert [r.pattern for r in await rules_store.active_rules(h.db, ACCOUNT)] == ["price"]
        cached = await rules_store.active_rules(h.db, ACCOUNT)
        assert cached is await rules_store.active_rules(h.db, ACCOUNT)  # built once
        record = await rules_store.get_rule(h.db, ACCOUNT, rule_id)
        assert record is not None
        changed = dataclasses.replace(record.rule, pattern="menu")
        async with h.db.write() as conn:
            await rules_store.replace_rule(conn, changed, account_id=ACCOUNT, now=5.0)
        await h.inbound("A1", "price?")
        await h.inbound("A2", "the menu")
        assert await h.drain() == 2
        assert [e["trigger_message_id"] for e in await h.fired_events()] == ["A2"]
        async with h.db.write() as conn:
            await rules_store.replace_rule(
                conn, dataclasses.replace(changed, active=False), account_id=ACCOUNT, now=6.0
            )
        await h.rule("hello")
        await h.inbound("A3", "menu, hello")
        assert await h.drain() == 1
        fired = await h.fired_events()
        assert [e["rule_name"] for e in fired] == ["price", "hello"]
        async with h.db.write() as conn:
            await rules_store.delete_rule(conn, ACCOUNT, fired[1]["rule_id"])
        assert await rules_store.active_rules(h.db, ACCOUNT) == []

    _run(tmp_path, open_db, db_path, body)
