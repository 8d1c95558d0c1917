"""The worker's scheduler (appliance/automations/scheduler.py) against a temporary
SQLite with a fake clock: daylight-saving changes, downtime and the missed-run policy,
one transaction per run (a crash before the commit leaves nothing), message ids
recorded, pause, and the timer loop itself."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.automations import scheduler as scheduler_module
from appliance.automations import schedules_store as store
from appliance.automations.schedule_times import MissedPolicy, Timing, first_due, parse_cron
from appliance.automations.scheduler import Scheduler
from appliance.db.database import Database
from appliance.inbox import quick_replies_store
from appliance.inbox.models import Actor as _QrActor
from appliance.messaging import store as messaging_store
from tests.unit.conftest import OpenDb

QR_ACTOR = _QrActor(principal="user:1", name="test")

BERLIN = ZoneInfo("Europe/Berlin")
TEXT = {"type": "text", "text": {"body": "good morning"}}


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()


class Harness:
    def __init__(self, db: Database, clock: FakeClock) -> None:
        self.db = db
        self.clock = clock
        self.wakes = 0
        self.events = 0
        self.scheduler = Scheduler(
            db, wake_sender=self._wake, events_written=self._events, clock=clock
        )

    def _wake(self) -> None:
        self.wakes += 1

    async def _events(self) -> None:
        self.events += 1

    async def add(
        self,
        timing: Timing,
        *,
        to: list[str] | None = None,
        missed: MissedPolicy = "skip",
        content: dict[str, Any] | None = None,
        at_text: str | None = None,
        quick_reply: dict[str, Any] | None = None,
        created_by: str | None = None,
    ) -> str:
        schedule_id = store.new_schedule_id()
        first = first_due(timing, datetime.fromtimestamp(self.clock(), UTC))
        assert first is not None
        async with self.db.write() as conn:
            await store.create_schedule(
                conn,
                schedule_id=schedule_id,
                account_id="acc",
                name="t",
                timing=timing,
                at_text=at_text,
                recipients=to or ["+491701234567"],
                content={} if quick_reply else (content or TEXT),
                missed=missed,
                grace_s=300.0,
                state="active",
                next_run_at=store.to_unix(first),
                created_by=created_by,
                now=self.clock(),
                quick_reply=quick_reply,
            )
        return schedule_id

    async def sent(self) -> list[Any]:
        return await self.db.fetchall(
            "SELECT id, chat_jid, client_key, origin, created_at FROM messages "
            "WHERE direction = 'out' ORDER BY seq"
        )

    async def runs(self, schedule_id: str) -> list[store.Run]:
        return list(
            reversed(await store.list_runs(self.db, "acc", schedule_id, before=None, limit=10_000))
        )


def _run(open_db: OpenDb, db_path: Path, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await messaging_store.create_account(
                    conn,
                    account_id="acc",
                    name="acc",
                    engine="sandbox",
                    engine_settings={},
                    settings={},
                    now=0.0,
                )
            await asyncio.wait_for(
                body(Harness(db, FakeClock(datetime(2026, 1, 1, tzinfo=UTC)))), 120
            )

    asyncio.run(main())


@pytest.mark.parametrize(
    ("start", "end"),
    [(date(2026, 3, 22), date(2026, 4, 4)), (date(2026, 10, 18), date(2026, 10, 31))],
    ids=["march", "october"],
)
def test_daily_0900_berlin_fires_exactly_once_per_local_day_across_the_change(
    open_db: OpenDb, db_path: Path, start: date, end: date
) -> None:
    async def body(h: Harness) -> None:
        h.clock.set(datetime(start.year, start.month, start.day, tzinfo=BERLIN))
        schedule_id = await h.add(parse_cron("0 9 * * *", "Europe/Berlin"))
        stop = datetime(end.year, end.month, end.day, 23, 59, tzinfo=BERLIN).timestamp()
        step = 4 * 60  # a worker pass every 4 minutes of the fake clock (grace: 5)
        while h.clock.now < stop:
            h.clock.now += step
            await h.scheduler.run_due()
        sent = await h.sent()
        days = Counter(datetime.fromtimestamp(m["created_at"], BERLIN).date() for m in sent)
        expected = [start + timedelta(days=n) for n in range((end - start).days + 1)]
        assert sorted(days) == expected
        assert set(days.values()) == {1}  # exactly once per local day
        runs = await h.runs(schedule_id)
        assert [r.outcome for r in runs] == ["sent"] * len(expected)
        for run in runs:
            local = datetime.fromtimestamp(run.occurrence_at, BERLIN)
            assert (local.hour, local.minute) == (9, 0)
            assert 0 <= run.late_s < step
            assert run.messages[0]["message_id"] in {m["id"] for m in sent}
        assert {m["origin"] for m in sent} == {"automation"}
        assert len({m["client_key"] for m in sent}) == len(sent)

    _run(open_db, db_path, body)


@pytest.mark.parametrize("policy", ["skip", "run_once"])
def test_a_missed_run_after_three_days_down(
    open_db: OpenDb, db_path: Path, policy: MissedPolicy
) -> None:
    async def body(h: Harness) -> None:
        h.clock.set(datetime(2026, 6, 1, 8, tzinfo=BERLIN))
        schedule_id = await h.add(parse_cron("0 9 * * *", "Europe/Berlin"), missed=policy)
        h.clock.set(datetime(2026, 6, 1, 9, 0, 1, tzinfo=BERLIN))
        await h.scheduler.run_due()  # on time
        assert len(await h.sent()) == 1
        # The worker is down from 2 June 08:00 to 5 June 10:00: four 09:00s pass.
        h.clock.set(datetime(2026, 6, 5, 10, tzinfo=BERLIN))
        result = await h.scheduler.run_due()
        assert result.runs == 1
        sent = await h.sent()
        runs = await h.runs(schedule_id)
        late = runs[-1]
        assert late.occurrence_at == datetime(2026, 6, 5, 9, tzinfo=BERLIN).timestamp()
        assert late.skipped == 3
        assert late.first_skipped_at == datetime(2026, 6, 2, 9, tzinfo=BERLIN).timestamp()
        if policy == "skip":
            assert len(sent) == 1 and late.outcome == "skipped" and late.messages == []
        else:
            assert len(sent) == 2 and late.outcome == "sent"
            assert sent[-1]["client_key"].startswith(
                f"schedule:{schedule_id}:2026-06-05T07:00:00Z:"
            )
        # Nothing more now, and the next day runs on time.
        assert (await h.scheduler.run_due()).runs == 0
        h.clock.set(datetime(2026, 6, 6, 9, 0, 5, tzinfo=BERLIN))
        await h.scheduler.run_due()
        assert len(await h.sent()) == len(sent) + 1
        schedule = await store.get_schedule(h.db, "acc", schedule_id)
        assert schedule.next_run_at == datetime(2026, 6, 7, 9, tzinfo=BERLIN).timestamp()

    _run(open_db, db_path, body)


def test_one_time_schedule_to_several_chats_records_each_message(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        at = "2026-01-01T01:00:00+01:00"
        from appliance.automations.schedule_times import Once, parse_instant

        to = ["+491701234567", "+491707654321", "120363025246125244@g.us"]
        schedule_id = await h.add(Once(parse_instant(at)), to=to, at_text=at)
        h.clock.set(datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC))
        await h.scheduler.run_due()
        assert h.wakes == 1 and h.events == 1
        sent = await h.sent()
        (run,) = await h.runs(schedule_id)
        assert [m["message_id"] for m in run.messages] == [m["id"] for m in sent]
        assert [m["to"] for m in run.messages] == to
        assert [m["client_key"] for m in sent] == [
            f"schedule:{schedule_id}:2026-01-01T00:00:00Z:{m['chat_jid']}" for m in sent
        ]
        schedule = await store.get_schedule(h.db, "acc", schedule_id)
        assert schedule.state == "completed" and schedule.next_run_at is None
        assert schedule.runs == 1
        event = await h.db.fetchone("SELECT data FROM events WHERE type = 'schedule.run'")
        assert event is not None and '"outcome":"sent"' in event["data"]
        h.clock.now += 3600
        assert (await h.scheduler.run_due()).runs == 0

    _run(open_db, db_path, body)


def test_a_crash_before_the_commit_leaves_nothing_and_the_run_happens_once(
    open_db: OpenDb, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        schedule_id = await h.add(parse_cron("*/5 * * * *", "UTC"))
        h.clock.set(datetime(2026, 1, 1, 0, 5, 1, tzinfo=UTC))
        real = store.record_run

        async def dies(*args: Any, **kwargs: Any) -> Any:
            await real(*args, **kwargs)
            raise asyncio.CancelledError  # the process stops after the sends, before COMMIT

        monkeypatch.setattr(store, "record_run", dies)
        with pytest.raises(asyncio.CancelledError):
            await h.scheduler.run_due()
        assert await h.sent() == []
        assert await h.runs(schedule_id) == []
        before = await store.get_schedule(h.db, "acc", schedule_id)
        assert before.next_run_at == datetime(2026, 1, 1, 0, 5, tzinfo=UTC).timestamp()
        monkeypatch.setattr(store, "record_run", real)
        await h.scheduler.run_due()
        await h.scheduler.run_due()
        assert len(await h.sent()) == 1
        assert len(await h.runs(schedule_id)) == 1

    _run(open_db, db_path, body)


def test_a_send_refused_at_run_time_is_a_failed_run_and_the_schedule_goes_on(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        content = {**TEXT, "context": {"message_id": "gone"}}
        schedule_id = await h.add(parse_cron("0 * * * *", "UTC"), content=content)
        h.clock.set(datetime(2026, 1, 1, 1, 0, 1, tzinfo=UTC))
        await h.scheduler.run_due()
        (run,) = await h.runs(schedule_id)
        assert run.outcome == "failed" and run.messages == []
        assert run.error is not None and "gone" in run.error
        assert await h.sent() == []
        schedule = await store.get_schedule(h.db, "acc", schedule_id)
        assert schedule.state == "active"
        assert schedule.next_run_at == datetime(2026, 1, 1, 2, tzinfo=UTC).timestamp()

    _run(open_db, db_path, body)


def test_paused_and_deleted_schedules_do_not_run(open_db: OpenDb, db_path: Path) -> None:
    async def body(h: Harness) -> None:
        paused = await h.add(parse_cron("0 * * * *", "UTC"))
        deleted = await h.add(parse_cron("0 * * * *", "UTC"))
        async with h.db.write() as conn:
            await store.update_schedule(conn, paused, h.clock(), state="paused", next_run_at=None)
            await store.delete_schedule(conn, "acc", deleted)
        h.clock.set(datetime(2026, 1, 2, tzinfo=UTC))
        assert (await h.scheduler.run_due()).runs == 0
        assert await h.sent() == []

    _run(open_db, db_path, body)


def test_a_schedule_whose_run_raises_is_paused_with_the_reason(
    open_db: OpenDb, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(h: Harness) -> None:
        broken = await h.add(parse_cron("0 * * * *", "UTC"))
        fine = await h.add(parse_cron("0 * * * *", "UTC"))

        real = scheduler_module.decide

        def decide(timing: Any, *args: Any) -> Any:
            if getattr(timing, "expression", "") and decide.calls == 0:  # the first only
                decide.calls += 1
                raise RuntimeError("bug")
            return real(timing, *args)

        decide.calls = 0  # type: ignore[attr-defined]
        monkeypatch.setattr(scheduler_module, "decide", decide)
        h.clock.set(datetime(2026, 1, 1, 1, 0, 1, tzinfo=UTC))
        await h.scheduler.run_due()
        states = {s: (await store.get_schedule(h.db, "acc", s)).state for s in (broken, fine)}
        assert sorted(states.values()) == ["active", "paused"]  # the other one ran
        assert len(await h.sent()) == 1
        paused = next(s for s, state in states.items() if state == "paused")
        reason = (await store.get_schedule(h.db, "acc", paused)).state_reason
        assert reason is not None and "RuntimeError" in reason

    _run(open_db, db_path, body)


def test_the_timer_loop_fires_when_due_and_wakes_on_a_poke(open_db: OpenDb, db_path: Path) -> None:
    async def body(h: Harness) -> None:
        loop = Scheduler(h.db, wake_sender=lambda: None, events_written=h._events, clock=time.time)
        loop.start()
        try:
            # Created after the loop went to sleep: the poke makes it look again.
            await asyncio.sleep(0.1)
            from appliance.automations.schedule_times import Once

            at = datetime.fromtimestamp(time.time() + 0.5, UTC)
            h.clock.now = time.time()
            schedule_id = await h.add(Once(at), at_text=at.isoformat())
            loop.wake()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not await h.sent():
                await asyncio.sleep(0.05)
            assert len(await h.sent()) == 1
            (run,) = await h.runs(schedule_id)
            assert run.outcome == "sent"
        finally:
            await loop.stop()

    _run(open_db, db_path, body)


def test_a_quick_reply_body_is_rendered_for_each_recipient_at_each_run(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(h: Harness) -> None:
        async with h.db.write() as conn:
            user = await auth_store.create_user(
                conn,
                username="ayse",
                password_hash="x",
                role=Role.MANAGER,
                all_accounts=False,
                accounts=["acc"],
                now=0.0,
            )
            quick = await quick_replies_store.create_quick_reply(
                conn,
                "acc",
                name="reminder",
                shortcut="/reminder",
                body="Dear {{contact.name|customer}} ({{chat.phone}}): {{what}}. {{agent.name}}",
                media=None,
                created_by=f"user:{user}",
                by=QR_ACTOR,
                now=0.0,
            )
        ref = {"id": quick.id, "variables": {"what": "your table is ready"}}
        h.clock.set(datetime(2026, 5, 4, 8, 0, tzinfo=UTC))
        schedule_id = await h.add(
            parse_cron("0 9 * * *", "Europe/Berlin"),
            to=["+491701234567", "+491707654321"],
            quick_reply=ref,
            created_by=f"user:{user}",
        )
        h.clock.set(datetime(2026, 5, 5, 7, 0, 1, tzinfo=UTC))  # 09:00 in Berlin
        assert (await h.scheduler.run_due()).sent_messages == 2
        rows = await h.db.fetchall(
            "SELECT chat_jid, content, origin FROM messages WHERE direction = 'out' ORDER BY seq"
        )
        bodies = [orjson.loads(r["content"])["text"]["body"] for r in rows]
        assert bodies == [
            "Dear customer (+491701234567): your table is ready. ayse",
            "Dear customer (+491707654321): your table is ready. ayse",
        ]
        assert {r["origin"] for r in rows} == {"automation"}
        # The quick reply deleted since: that run fails with the reason, the schedule
        # goes on (and sends nothing twice).
        async with h.db.write() as conn:
            await quick_replies_store.delete_quick_reply(
                conn, "acc", quick.id, by=QR_ACTOR, now=0.0
            )
        h.clock.set(datetime(2026, 5, 6, 7, 0, 1, tzinfo=UTC))
        assert (await h.scheduler.run_due()).outcomes == {"failed": 1}
        runs = await h.runs(schedule_id)
        assert [r.outcome for r in runs] == ["sent", "failed"]
        assert runs[1].error is not None and f"quick reply {quick.id}" in runs[1].error
        assert len(await h.sent()) == 2
        schedule = await store.get_schedule(h.db, "acc", schedule_id)
        assert schedule.state == "active" and schedule.quick_reply == ref

    _run(open_db, db_path, body)
