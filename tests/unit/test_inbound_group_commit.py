"""Inbound group commit (appliance/worker/inbound.py): deliveries that arrive while
another is being written share its transaction, each in its own savepoint, in the
order they arrived (so each chat keeps its order), with their events, conversations
and automation jobs (only where the account has automations); a duplicate delivery
stores nothing twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from appliance.automations import auto_reply_store as rules_store
from appliance.automations.auto_reply_rules import ACTIONS, Rule
from appliance.db.database import Database
from appliance.engines.base import InboundMessage
from tests.unit.conftest import OpenDb
from tests.unit.test_inbound_commit import ACCOUNT, _run


def _text(message_id: str, chat: str) -> InboundMessage:
    return InboundMessage(
        id=message_id,
        chat_jid=chat,
        sender_jid=chat,
        type="text",
        content={"type": "text", "text": {"body": message_id}},
        body=message_id,
        timestamp=100.0,
    )


CHATS = [f"90555100000{i}@s.whatsapp.net" for i in range(3)]


async def _rule(db: Database) -> None:
    """An active auto-reply rule: the account's new messages get trigger jobs."""
    rule = Rule(
        id=rules_store.new_rule_id(),
        name="ping",
        pattern="ping",
        priority=100,
        active=True,
        match_type="contains",
        cooldown_s=0,
        stop=True,
        conditions=[],
        actions=ACTIONS.validate_python([{"type": "reply", "text": "pong"}]),
    )
    async with db.write() as conn:
        await rules_store.insert_rule(conn, rule, account_id=ACCOUNT, now=1.0)


@pytest.mark.parametrize("automations", [True, False])
def test_concurrent_deliveries_share_transactions_in_arrival_order(
    tmp_path: Path,
    open_db: OpenDb,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    automations: bool,
) -> None:
    trips: list[int] = []
    original = Database._run_in_thread

    async def counted(self: Database, jobs: list[Any], **kwargs: Any) -> Any:
        trips.append(len(jobs))
        return await original(self, jobs, **kwargs)

    monkeypatch.setattr(Database, "_run_in_thread", counted)

    async def body(db: Database, service: Any, runtime: Any, settings: Any) -> None:
        if automations:
            await _rule(db)
        deliveries = [
            [_text(f"M{d:02d}-{i}", CHATS[(d + i) % 3]) for i in range(5)] for d in range(20)
        ]
        results = await asyncio.gather(*(service.commit_inbound(runtime, b) for b in deliveries))
        assert results == [[True] * 5] * 20
        # Fewer thread round trips than deliveries: they were committed together.
        assert sum(trips) == 20 and len(trips) < 20
        again = await service.commit_inbound(runtime, deliveries[3])  # redelivered
        assert again == [False] * 5
        for chat in CHATS:
            rows = await db.fetchall(
                "SELECT id FROM messages WHERE account_id = ? AND chat_jid = ? ORDER BY seq",
                (ACCOUNT, chat),
            )
            expected = [m.id for b in deliveries for m in b if m.chat_jid == chat]
            assert [r["id"] for r in rows] == expected  # each chat in arrival order
        events = await db.fetchall(
            "SELECT COUNT(*) AS n FROM events WHERE type = 'message.received'"
        )
        assert events[0]["n"] == 100
        jobs = await db.fetchall("SELECT COUNT(*) AS n FROM queue_jobs")
        # One automation trigger per new message; none where no rule or script would run.
        assert jobs[0]["n"] == (100 if automations else 0)
        unread = await db.fetchall(
            "SELECT SUM(unread_count) AS n FROM chats WHERE account_id = ?", (ACCOUNT,)
        )
        assert unread[0]["n"] == 100

    _run(tmp_path, open_db, db_path, body)
