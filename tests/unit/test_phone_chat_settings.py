"""Archive, pin and mute made on the phone come back (issue 12, item 4): the web engine
reads whatsmeow's chat-settings store (neonize's ``get_chat_settings``) and the host
makes our chats match (appliance/engines/web/chat_settings.py,
appliance/messaging/phone_chat_settings.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.db.database import Database
from appliance.engines.web.chat_settings import (
    MUTED_FOREVER,
    ChatSettingsWatch,
    check_once,
    muted_until_of,
    phone_settings,
    watch_chat_settings,
)
from appliance.engines.web.settings import WebSettings
from appliance.messaging import actions_store, store
from appliance.messaging.phone_chat_settings import (
    SETTLE_S,
    PhoneChatSettings,
    apply,
    watched_chats,
)
from tests.unit.conftest import OpenDb
from tests.unit.test_read_api import _inbound

ACCOUNT = "acc_web"
ALICE = "905551110001@s.whatsapp.net"
BOB = "905551110002@s.whatsapp.net"
GO_ZERO_TIME = -62135596800.0  # Go's time.Time{}.Unix(): whatsmeow's "not muted"


def _run(open_db: OpenDb, db_path: Path, body: Any) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await store.create_account(
                    conn,
                    account_id=ACCOUNT,
                    name=ACCOUNT,
                    engine="sandbox",
                    engine_settings={},
                    settings={},
                    now=1.0,
                )
            await body(db)

    asyncio.run(main())


async def _chat_updates(db: Database) -> list[dict[str, Any]]:
    rows = await store.event_rows_after(db, 0, 10_000)
    return [r.data for r in rows if r.account_id == ACCOUNT and r.type == "chat.updated"]


async def _apply(db: Database, *settings: PhoneChatSettings, now: float) -> tuple[list[str], int]:
    async with db.write() as conn:
        return await apply(conn, ACCOUNT, list(settings), now=now)


async def _action(db: Database, chat: str, type_: str, status: str, updated_at: float) -> None:
    async with db.write() as conn:
        await conn.execute(
            "INSERT INTO engine_actions (id, account_id, chat_jid, type, status, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (f"act_{type_}_{updated_at}", ACCOUNT, chat, type_, status, updated_at, updated_at),
        )


def test_whatsmeows_muted_until_becomes_ours() -> None:
    assert muted_until_of(GO_ZERO_TIME) is None
    assert muted_until_of(0) is None
    assert muted_until_of(-1) == MUTED_FOREVER  # WhatsApp's "always"
    assert muted_until_of(MUTED_FOREVER) == MUTED_FOREVER  # whatsmeow's store.MutedForever
    assert muted_until_of(1_900_000_000) == 1_900_000_000.0
    assert muted_until_of(1_900_000_000_000) == 1_900_000_000.0  # kept in milliseconds


def test_local_chat_settings_are_read_only_when_whatsmeow_has_them() -> None:
    missing = SimpleNamespace(Found=False, Archived=False, Pinned=False, MutedUntil=GO_ZERO_TIME)
    assert phone_settings(ALICE, missing) is None
    found = SimpleNamespace(Found=True, Archived=True, Pinned=False, MutedUntil=GO_ZERO_TIME)
    assert phone_settings(ALICE, found) == PhoneChatSettings(ALICE, True, False, None)


def test_the_watch_reports_a_chat_again_only_when_it_changed_or_was_not_looked_at() -> None:
    watch = ChatSettingsWatch()
    a, b = PhoneChatSettings(ALICE, True, False, None), PhoneChatSettings(BOB, False, True, None)
    assert watch.changed([a, b]) == [a, b]  # the first look reports everything
    watch.looked([a, b], [ALICE])  # BOB was settling: not looked at
    assert watch.changed([a, b]) == [b]
    watch.looked([b], [BOB])
    assert watch.changed([a, b]) == []
    unarchived = PhoneChatSettings(ALICE, False, False, None)
    assert watch.changed([unarchived, b]) == [unarchived]


def test_the_phones_settings_become_ours_with_chat_updated_by_phone(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _inbound(db, ACCOUNT, ALICE, "hi")
        now = time.time()
        until = now + 3600
        looked, changed = await _apply(db, PhoneChatSettings(ALICE, True, True, until), now=now)
        assert (looked, changed) == ([ALICE], 1)
        state = await actions_store.chat_state(db, ACCOUNT, ALICE)
        assert state is not None
        assert (state.archived, state.pinned, state.muted_until) == (True, True, until)
        updates = await _chat_updates(db)
        assert updates == [
            {
                "chat_id": ALICE,
                "changes": {"archived": True, "pinned": True, "muted_until": until},
                "by": "phone",
            }
        ]
        # The same settings again: nothing changes, no event.
        assert await _apply(db, PhoneChatSettings(ALICE, True, True, until), now=now) == (
            [ALICE],
            0,
        )
        # Unmuted and unpinned on the phone.
        await _apply(db, PhoneChatSettings(ALICE, True, False, None), now=now + 1)
        state = await actions_store.chat_state(db, ACCOUNT, ALICE)
        assert state is not None and (state.pinned, state.muted_until) == (False, None)
        assert (await _chat_updates(db))[-1]["changes"] == {"pinned": False, "muted_until": None}
        # A mute that ran out on the phone while ours is unmuted: no change.
        assert await _apply(db, PhoneChatSettings(ALICE, True, False, now - 5), now=now + 2) == (
            [ALICE],
            0,
        )
        # A chat we do not have is looked at, and left alone.
        assert await _apply(db, PhoneChatSettings(BOB, True, False, None), now=now) == ([BOB], 0)
        assert await actions_store.chat_state(db, ACCOUNT, BOB) is None

    _run(open_db, db_path, body)


def test_a_chat_with_an_action_of_ours_settling_is_left_for_later(
    open_db: OpenDb, db_path: Path
) -> None:
    """whatsmeow's store shows our own action only after a background re-sync: until
    then the phone's (stale) settings must not undo it."""

    async def body(db: Database) -> None:
        await _inbound(db, ACCOUNT, ALICE, "hi")
        await _inbound(db, ACCOUNT, BOB, "hello")
        now = time.time()
        await _action(db, ALICE, "archive", "queued", now - 1000)  # not yet done
        await _action(db, BOB, "pin", "done", now - 10)  # done just now
        stale = [
            PhoneChatSettings(ALICE, False, True, None),
            PhoneChatSettings(BOB, True, False, None),
        ]
        assert await _apply(db, *stale, now=now) == ([], 0)
        assert await _chat_updates(db) == []
        # Long after the pin: BOB is looked at again (ALICE's action is still queued).
        assert await _apply(db, *stale, now=now + SETTLE_S + 1) == ([BOB], 1)
        state = await actions_store.chat_state(db, ACCOUNT, BOB)
        assert state is not None and state.archived
        # A typing indicator or a revoke does not hold a chat back.
        await _action(db, BOB, "presence", "queued", now)
        looked, _ = await _apply(
            db, PhoneChatSettings(BOB, False, False, None), now=now + SETTLE_S + 2
        )
        assert looked == [BOB]

    _run(open_db, db_path, body)


def test_the_watched_chats_are_the_newest(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        await _inbound(db, ACCOUNT, ALICE, "old", now=100.0)
        await _inbound(db, ACCOUNT, BOB, "new", now=200.0)
        assert await watched_chats(db, ACCOUNT, 10) == [BOB, ALICE]
        assert await watched_chats(db, ACCOUNT, 1) == [BOB]

    _run(open_db, db_path, body)


class _Client:
    """neonize's get_chat_settings over a dict (jid -> settings)."""

    def __init__(self, store_: dict[str, dict[str, Any]]) -> None:
        self.store = store_
        self.reads = 0

    async def get_chat_settings(self, user: Any) -> Any:
        self.reads += 1
        found = self.store.get(f"{user.User}@{user.Server}")
        if found is None:
            return SimpleNamespace(Found=False, Archived=False, Pinned=False, MutedUntil=0.0)
        return SimpleNamespace(Found=True, **found)


class _Host:
    def __init__(self, chats: list[str], settling: set[str]) -> None:
        self.chats = chats
        self.settling = settling
        self.reports: list[list[PhoneChatSettings]] = []
        self.saved: list[dict[str, Any]] = []

    async def save_engine_state(self, state: dict[str, Any]) -> None:
        self.saved.append(state)

    async def watched_chats(self, limit: int) -> list[str]:
        return self.chats[:limit]

    async def on_chat_settings(self, settings: list[PhoneChatSettings]) -> list[str]:
        self.reports.append(settings)
        return [s.jid for s in settings if s.jid not in self.settling]


def _engine(client: Any, host: Any, state: dict[str, Any] | None = None, **config: Any) -> Any:
    return SimpleNamespace(
        client=client,
        host=host,
        account_id=ACCOUNT,
        config=WebSettings.model_validate(config),
        engine_state=state or {"paired": True},
    )


def test_the_engine_reports_what_changed_on_the_phone() -> None:
    pytest.importorskip("neonize")

    async def main() -> None:
        phone = {ALICE: {"Archived": True, "Pinned": False, "MutedUntil": 0.0}}
        client, host = _Client(phone), _Host([ALICE, BOB], settling={ALICE})
        engine = _engine(client, host, chat_settings_chats=5)
        watch = ChatSettingsWatch()
        assert await check_once(engine, watch) == 1  # BOB: whatsmeow has nothing
        assert host.reports == [[PhoneChatSettings(ALICE, True, False, None)]]
        assert await check_once(engine, watch) == 1  # ALICE was settling: asked again
        host.settling.clear()
        assert await check_once(engine, watch) == 1
        assert await check_once(engine, watch) == 0  # looked at, unchanged: not reported
        phone[ALICE]["Pinned"] = True  # pinned on the phone
        phone[BOB] = {"Archived": False, "Pinned": False, "MutedUntil": -1.0}  # muted always
        assert await check_once(engine, watch) == 2
        assert host.reports[-1] == [
            PhoneChatSettings(ALICE, True, True, None),
            PhoneChatSettings(BOB, False, False, MUTED_FOREVER),
        ]
        assert client.reads == 10
        # What was looked at is kept in the engine state (the watched chats only).
        assert host.saved[-1] == {
            "paired": True,
            "chat_settings": {ALICE: [True, True, None], BOB: [False, False, MUTED_FOREVER]},
        }
        assert engine.engine_state == host.saved[-1]
        # Without a client (disconnected) nothing is read.
        assert await check_once(_engine(None, host), watch) == 0

    asyncio.run(main())


def test_after_a_restart_only_what_changed_meanwhile_is_reported() -> None:
    """A chat archived only in our inbox stays so; the phone's changes made while the
    worker was down still come back."""
    pytest.importorskip("neonize")

    async def main() -> None:
        kept = {"chat_settings": {ALICE: [False, False, None], BOB: [False, False, None]}}
        phone = {
            ALICE: {"Archived": False, "Pinned": False, "MutedUntil": 0.0},  # as before
            BOB: {"Archived": False, "Pinned": True, "MutedUntil": 0.0},  # pinned meanwhile
        }
        host = _Host([ALICE, BOB], settling=set())
        engine = _engine(_Client(phone), host, state=dict(kept))
        watch = ChatSettingsWatch(engine.engine_state["chat_settings"])
        assert await check_once(engine, watch) == 1
        assert host.reports == [[PhoneChatSettings(BOB, False, True, None)]]
        assert await check_once(engine, watch) == 0

    asyncio.run(main())


def test_the_watch_runs_every_interval_and_survives_failures() -> None:
    pytest.importorskip("neonize")

    async def main() -> None:
        class Failing(_Client):
            async def get_chat_settings(self, user: Any) -> Any:
                self.reads += 1
                if self.reads == 1:
                    raise RuntimeError("client closed")
                return await super().get_chat_settings(user)

        client = Failing({ALICE: {"Archived": True, "Pinned": False, "MutedUntil": 0.0}})
        host = _Host([ALICE], settling=set())
        task = asyncio.create_task(
            watch_chat_settings(_engine(client, host, chat_settings_poll_s=0.01))
        )
        try:
            for _ in range(500):  # bounded: 5 s at most
                if host.reports:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
        assert host.reports == [[PhoneChatSettings(ALICE, True, False, None)]]
        assert client.reads >= 2  # the failed look was retried at the next interval
        # 0 turns it off: the watch ends at once.
        off = _engine(client, host, chat_settings_poll_s=0)
        await asyncio.wait_for(watch_chat_settings(off), 5)

    asyncio.run(main())
