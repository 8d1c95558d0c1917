"""Script triggers against a real scripts process and a migrated database: the durable
inbound step continuing an interrupted run, outbound / schedule / event triggers
through the event feed and the ``script`` queue, loop protection, and the inbox host
calls (tags, status, assignment) with their events and dry-run effects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.automations import scripts_store
from appliance.automations.script_host import ScriptActor
from appliance.automations.script_triggers import SCRIPT_QUEUE, ScriptTriggers, scripts_step
from appliance.automations.scripts_models import SampleMessage, ScriptSchedule, TriggerFilter
from appliance.automations.trigger import StepContext
from appliance.inbox import store as inbox_store
from appliance.inbox import tags_store
from appliance.inbox.models import Actor as TagActor
from appliance.messaging import store
from appliance.messaging.models import MessageContent
from appliance.messaging.sends import accept_send
from tests.unit.conftest import OpenDb
from tests.unit.test_script_runner import ACCOUNT, CHAT, Harness, harness
from tests.unit.test_script_runner import prefix as prefix


async def run_jobs(triggers: ScriptTriggers) -> int:
    """Claim and handle the script queue's due jobs, as the claim loop would."""
    done = 0
    for _ in range(20):
        jobs = await triggers.queue.claim(10)
        if not jobs:
            return done
        for job in jobs:
            await triggers.handle(job)
            done += 1
    return done


async def api_send(h: Harness, body: str, key: str, chat: str = CHAT) -> str:
    async with h.db.write() as conn:
        accepted = await accept_send(
            conn,
            account_id=ACCOUNT,
            to=chat,
            message=MessageContent.model_validate({"type": "text", "text": {"body": body}}),
            client_key=key,
            now=time.time(),
        )
    return accepted.message_id


async def mark_sent(h: Harness, message_id: str) -> None:
    async with h.db.write() as conn:
        assert await store.set_message_status(conn, ACCOUNT, message_id, "sent", now=time.time())


async def runs_of(h: Harness, script_id: str) -> list[Any]:
    rows = await scripts_store.list_runs(h.db, script_id, before=None, limit=50)
    return [scripts_store.run_out(r) for r in rows]


def test_the_scripts_step_continues_an_interrupted_run_without_a_second_send(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            script_id = await h.script("await reply('hello ' + message.body); log('done')")
            message = await h.inbound("there")
            # The worker was killed during the run: its row is `running` and its reply
            # (call 1) was already accepted with the run's key.
            async with h.db.write() as conn:
                claimed = await scripts_store.claim_run(
                    conn,
                    script_id=script_id,
                    account_id=ACCOUNT,
                    trigger="message",
                    trigger_key=message.id,
                    now=time.time(),
                )
                assert claimed is not None
                run_id, _ = claimed
                await accept_send(
                    conn,
                    account_id=ACCOUNT,
                    to=CHAT,
                    message=MessageContent.model_validate(
                        {"type": "text", "text": {"body": "hello there"}}
                    ),
                    client_key=f"script:{script_id}:{run_id}:1",
                    now=time.time(),
                    origin="automation",
                )
            # A restart fails interrupted manual runs, not this one (its job continues it).
            async with h.db.write() as conn:
                assert await scripts_store.interrupted_runs(conn, time.time()) == 0
            step = scripts_step(h.runner)
            ctx = StepContext(h.db, message, attempt=2, now=time.time())
            assert (await step.run(ctx)).outcome == "ran"
            assert len(await h.automated()) == 1  # the first attempt's send, not a second
            (run,) = await runs_of(h, script_id)
            assert (run.id, run.state, run.attempts) == (run_id, "ok", 2)
            assert [line.text for line in run.logs] == ["done"]
            # The job retried once more (e.g. killed before its ack): nothing runs again.
            assert (await step.run(ctx)).outcome == "already_done"
            assert len(await runs_of(h, script_id)) == 1
            assert len(await h.events("script.run")) == 1

    asyncio.run(main())


def test_outbound_trigger_runs_once_and_a_scripts_own_sends_never_trigger(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            triggers = ScriptTriggers(h.db, h.runner)
            assert await triggers.tick() == 0  # the first tick starts the feed at "now"
            script_id = await h.script(
                "log('saw', message.body, trigger.type);"
                "await send(message.chat_id, 'follow-up to: ' + message.body);",
                trigger="outbound",
                filter=TriggerFilter(contains="invoice"),
            )
            other = await api_send(h, "just chatting", "k0")
            first = await api_send(h, "your invoice", "k1")
            await mark_sent(h, other)
            await mark_sent(h, first)
            assert await triggers.tick() == 1
            assert await run_jobs(triggers) == 1
            (run,) = await runs_of(h, script_id)
            assert run.trigger == "outbound" and run.trigger_message_id == first
            assert run.state == "ok", run
            assert [line.text for line in run.logs] == ["saw your invoice outbound"]
            sent = [r for r in await h.automated() if r["origin"] == "automation"]
            assert [r["body"] for r in sent] == ["follow-up to: your invoice"]
            # The script's own send goes out too; even though it contains "invoice", it
            # triggers nothing (no job, no run), however often the feed looks.
            await mark_sent(h, sent[0]["id"])
            assert await triggers.tick() == 0
            assert await triggers.tick() == 0
            assert await run_jobs(triggers) == 0
            assert len(await runs_of(h, script_id)) == 1
            # The same job handled again (a retry after a crash before the ack): no rerun.
            job_rows = await h.db.fetchall(
                "SELECT id FROM queue_jobs WHERE queue = ?", (SCRIPT_QUEUE,)
            )
            assert len(job_rows) == 1
            await h.runner.execute(
                script_id, ACCOUNT, "outbound", None, trigger_key=first, context={}
            )
            assert len(await runs_of(h, script_id)) == 1
            assert len([r for r in await h.automated() if r["origin"] == "automation"]) == 1

    asyncio.run(main())


def test_schedule_trigger_runs_the_due_occurrence_once(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            triggers = ScriptTriggers(h.db, h.runner)
            script_id = await h.script(
                "log(trigger.type, trigger.occurrence, JSON.stringify(message))",
                trigger="schedule",
                schedule=ScriptSchedule(cron="0 9 * * *", timezone="Europe/Berlin"),
            )
            row = await scripts_store.script_row(h.db, ACCOUNT, script_id)
            first = scripts_store.script_out(row).next_run_at
            assert first is not None and first > time.time()
            # Let the occurrence fall due (as if the clock reached it).
            due = time.time() - 5
            async with h.db.write() as conn:
                assert await scripts_store.move_schedule(
                    conn, script_id, was=first, next_run_at=due
                )
            assert await triggers.tick() == 1
            assert await triggers.tick() == 0  # moved on: not due again
            assert await run_jobs(triggers) == 1
            (run,) = await runs_of(h, script_id)
            assert run.trigger == "schedule" and run.state == "ok", run
            (line,) = run.logs
            assert line.text.startswith("schedule ") and line.text.endswith(" {}")
            assert run.trigger_message_id == line.text.split()[1]
            row = await scripts_store.script_row(h.db, ACCOUNT, script_id)
            assert scripts_store.script_out(row).next_run_at == first

    asyncio.run(main())


def test_host_calls_change_tags_status_and_assignment_as_the_script(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            triggers = ScriptTriggers(h.db, h.runner)
            await triggers.tick()
            await h.inbound("hi")  # the chat exists
            async with h.db.write() as conn:
                tag = await tags_store.create_tag(
                    conn,
                    ACCOUNT,
                    name="VIP",
                    color=None,
                    by=TagActor(principal="user:1", name="admin"),
                    now=time.time(),
                )
            watcher = await h.script(
                "log(trigger.event.type, trigger.event.data.by.type)",
                trigger="event",
                event_types=["chat.updated", "chat.assigned"],
            )
            code = (
                "await tags.add(message.chat_id, 'vip');"
                "await chat.setStatus(message.chat_id, 'resolved');"
                "await chat.assign(message.chat_id, null);"
                "try { await chat.assign(message.chat_id, 4242) } catch (e) { log(e.message) }"
                "try { await tags.add(message.chat_id, 'nope') } catch (e) { log(e.message) }"
            )
            script_id = await h.script(code, trigger="manual")
            sample = SampleMessage.model_validate({"from": "+905551112233", "body": "x"})
            dry = await h.runner.run_manual(ACCOUNT, script_id, sample=sample, dry_run=True)
            assert dry.state == "ok", dry
            assert [e.type for e in dry.effects] == ["tags.add", "chat.setStatus", "chat.assign"]
            conv = await inbox_store.conversation(h.db, ACCOUNT, CHAT)
            assert conv is not None and conv.status != "resolved"
            assert await tags_store.tags_of(h.db, ACCOUNT, [CHAT]) in ({}, {CHAT: []})
            run = await h.runner.run_manual(ACCOUNT, script_id, sample=sample, dry_run=False)
            assert run.state == "ok", run
            assert [e.type for e in run.effects] == ["tags.add", "chat.setStatus", "chat.assign"]
            texts = [line.text for line in run.logs]
            assert "does not exist" in texts[0] and "no tag 'nope'" in texts[1], texts
            conv = await inbox_store.conversation(h.db, ACCOUNT, CHAT)
            assert conv is not None and conv.status == "resolved"
            tagged = await tags_store.tags_of(h.db, ACCOUNT, [CHAT])
            assert [t.id for t in tagged[CHAT]] == [tag.id]
            updated = await h.events("chat.updated")
            assert {"type": "script", "id": script_id, "user_id": None} in [
                e.get("by") for e in updated
            ]
            assert any(
                e.get("by") == {"principal": f"script:{script_id}", "name": "s"} for e in updated
            )
            # Changes the script made trigger no event script; a person's change does.
            assert await triggers.tick() == 0
            async with h.db.write() as conn:
                assert await inbox_store.change_chat(
                    conn,
                    ACCOUNT,
                    CHAT,
                    by=inbox_store.Actor("user", 1, 1),
                    assigns_others=True,
                    now=time.time(),
                    status="open",
                )
            assert await triggers.tick() == 1
            assert await run_jobs(triggers) == 1
            (seen,) = await runs_of(h, watcher)
            assert seen.trigger == "event" and [x.text for x in seen.logs] == ["chat.updated user"]

    asyncio.run(main())


def test_script_actor_names_the_script() -> None:
    assert ScriptActor("script", script_id="scr_1").as_data() == {
        "type": "script",
        "id": "scr_1",
        "user_id": None,
    }


@pytest.mark.parametrize("fn", ["tags.add", "chat.setStatus", "chat.assign"])
def test_inbox_host_calls_refuse_bad_chats(
    fn: str, open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
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
            with pytest.raises(HostCallRefused, match=r"E\.164|no chat"):
                await h.runner.host.host_call(
                    HostCallParams(run_id="run_x", n=1, fn=fn, args=[42, "open"])
                )
            second = None if fn == "chat.assign" else "open"
            with pytest.raises(HostCallRefused, match=r"no chat|no tag"):
                await h.runner.host.host_call(
                    HostCallParams(run_id="run_x", n=2, fn=fn, args=["+905559999999", second])
                )

    asyncio.run(main())


def test_a_job_claimed_twice_while_its_run_is_in_flight_runs_the_script_once(
    open_db: OpenDb, db_path: Path, prefix: Path
) -> None:
    """A lease that ran out during a long run: the second handler waits for the first."""

    async def main() -> None:
        async with harness(open_db, db_path, prefix) as h:
            script_id = await h.script(
                "await reply('once'); await new Promise(r => setTimeout(r, 500));"
            )
            message = await h.inbound("slow")
            data = {"id": message.id, "chat_id": CHAT, "body": "slow", "is_group": False}
            first, second = await asyncio.gather(
                h.runner.execute(script_id, ACCOUNT, "message", data, trigger_key=message.id),
                h.runner.execute(script_id, ACCOUNT, "message", data, trigger_key=message.id),
            )
            assert first.id == second.id and first.state == "ok" and first.attempts == 1
            assert len(await h.automated()) == 1
            assert len(await runs_of(h, script_id)) == 1

    asyncio.run(main())
