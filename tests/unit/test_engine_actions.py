"""Actions that reach WhatsApp (appliance/messaging/actions.py): the routes in the
in-process app (202 once queued, idempotency, refusals before anything is queued), and
the worker's action loop against the sandbox engine (effects, events, retries with one
effect)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.engines import registry
from appliance.engines.base import EngineAction
from appliance.engines.sandbox import SandboxEngine
from appliance.messaging import actions_store, store
from appliance.messaging.actions import (
    ACTION_QUEUE,
    ACTION_TYPES,
    accept_action,
    capability_table,
)
from appliance.worker.actions_loop import ActionLoop, apply_edit
from tests.unit.conftest import OpenDb, count_releases
from tests.unit.test_read_api import _inbound, _key, _outbound, _served

SANDBOX, CLOUD = "acc_sb", "acc_cl"
ALICE = "905551110001@s.whatsapp.net"
NOBODY = "905551119999@s.whatsapp.net"


async def _accounts(db: Database, **sandbox_settings: Any) -> None:
    async with db.write() as conn:
        for account_id, engine in ((SANDBOX, "sandbox"), (CLOUD, "cloud")):
            await store.create_account(
                conn,
                account_id=account_id,
                name=account_id,
                engine=engine,
                engine_settings=sandbox_settings if engine == "sandbox" else {},
                settings={},
                now=1.0,
            )


async def _sent(db: Database, account: str, chat: str, body: str, *, age_s: float = 0) -> str:
    message_id = await _outbound(db, account, chat, body, now=time.time() - age_s)
    async with db.write() as conn:
        await store.set_message_status(conn, account, message_id, "sent", now=time.time())
    return message_id


async def _queued_actions(db: Database, account: str) -> int:
    row = await db.fetchone(
        "SELECT COUNT(*) FROM queue_jobs WHERE queue = ? AND payload LIKE ?",
        (ACTION_QUEUE, f'%"{account}"%'),
    )
    assert row is not None
    return int(row[0])


async def _events(db: Database, account: str, *types: str) -> list[dict[str, Any]]:
    rows = await store.event_rows_after(db, 0, 10_000)
    mine = [r for r in rows if r.account_id == account and r.type in types]
    return [{**r.data, "event": r.type} for r in mine]


def _run(open_db: OpenDb, db_path: Path, body: Any) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await body(db)

    asyncio.run(main())


RUNBOOK = Path(__file__).resolve().parents[2] / "runbook" / "messaging.md"


def test_the_runbooks_capability_table_is_the_registrys() -> None:
    names = registry.engine_names()
    table = capability_table(
        {n: registry.capabilities(n).actions for n in names},
        {n: registry.capabilities(n).block_contacts for n in names},
        {n: registry.capabilities(n).interactive_messages for n in names},
    )
    text = RUNBOOK.read_text()
    section = text.split("### Capability table", 1)[1]
    assert table in section, f"runbook/messaging.md's table is stale; it should be:\n{table}"


def test_registry_names_only_known_actions() -> None:
    for name in registry.engine_names():
        assert registry.capabilities(name).actions <= set(ACTION_TYPES), name
    assert registry.capabilities("sandbox").actions == set(ACTION_TYPES)
    assert registry.capabilities("web").actions == set(ACTION_TYPES)
    assert registry.capabilities("cloud").actions == {"read", "presence"}


def test_action_routes(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        await _accounts(db)
        inbound = await _inbound(db, SANDBOX, ALICE, "hello")
        await _inbound(db, CLOUD, ALICE, "hello")
        mine = await _sent(db, SANDBOX, ALICE, "parcel sent")
        old = await _sent(db, SANDBOX, ALICE, "old news", age_s=3 * 86400)
        stale = await _sent(db, SANDBOX, ALICE, "typo", age_s=20 * 60)
        queued = await _outbound(db, SANDBOX, ALICE, "not yet")
        agent = {"Authorization": f"Bearer {await _key(db, Role.AGENT, SANDBOX, CLOUD)}"}
        outsider = {"Authorization": f"Bearer {await _key(db, Role.AGENT, CLOUD)}"}
        async with _served(tmp_path, db) as app:
            client = app.test_client()

            async def post(
                path: str, json: Any = None, headers: dict[str, str] = agent
            ) -> tuple[int, Any]:
                response = await client.post(path, json=json, headers=headers)
                return response.status_code, await response.get_json()

            base = f"/api/accounts/{SANDBOX}"
            status, got = await post(f"{base}/chats/{ALICE}/actions", {"type": "archive"})
            assert status == 202, got
            assert got["status"] == "queued" and got["type"] == "archive"
            assert got["chat_id"] == ALICE and got["id"].startswith("act_")

            # The same Idempotency-Key: one action, one job.
            keyed = {**agent, "Idempotency-Key": "pin-1"}
            s1, first = await post(f"{base}/chats/{ALICE}/actions", {"type": "pin"}, keyed)
            s2, again = await post(f"{base}/chats/{ALICE}/actions", {"type": "pin"}, keyed)
            assert (s1, s2) == (202, 202) and first["id"] == again["id"]
            assert await _queued_actions(db, SANDBOX) == 2

            # Refusals, nothing queued: the engine named, bad bodies, windows.
            status, got = await post(
                f"/api/accounts/{CLOUD}/chats/{ALICE}/actions", {"type": "pin"}
            )
            assert status == 409 and "the cloud engine cannot pin chats" in got["error"]
            # a rule between fields (the schema cannot say it): 422 naming `until`
            status, got = await post(f"{base}/chats/{ALICE}/actions", {"type": "mute"})
            assert status == 422 and got["issues"][0]["path"] == "until", got
            status, got = await post(
                f"{base}/chats/{ALICE}/actions", {"type": "pin", "until": time.time() + 60}
            )
            assert status == 422 and got["issues"][0]["path"] == "until", got
            status, got = await post(
                f"{base}/chats/{ALICE}/actions", {"type": "mute", "until": time.time() - 5}
            )
            assert status == 422
            status, got = await post(f"{base}/chats/{ALICE}/actions", {"type": "nap"})
            assert status == 400
            status, got = await post(f"{base}/chats/{NOBODY}/actions", {"type": "read"})
            assert status == 404
            status, got = await post(f"{base}/messages/{inbound}/revoke")
            assert status == 422 and "your own" in got["error"]
            status, got = await post(f"{base}/messages/{queued}/revoke")
            assert status == 422 and "not sent yet" in got["error"]
            status, got = await post(f"{base}/messages/{old}/revoke")
            assert status == 422 and "too old" in got["error"]
            status, got = await post(f"{base}/messages/{stale}/edit", {"text": "fixed"})
            assert status == 422 and "too old" in got["error"]
            status, got = await post(f"{base}/messages/{mine}/edit", {"text": ""})
            assert status == 400
            status, got = await post(f"/api/accounts/{CLOUD}/messages/NOPE/revoke")
            assert status == 404
            assert await _queued_actions(db, SANDBOX) == 2
            assert await _queued_actions(db, CLOUD) == 0

            # Out of the caller's grants: 404 as if absent.
            status, _ = await post(f"{base}/chats/{ALICE}/actions", {"type": "read"}, outsider)
            assert status == 404

            status, got = await post(f"{base}/messages/{mine}/edit", {"text": "parcel SENT"})
            assert status == 202 and got["message_id"] == mine, got
            assert got["params"] == {"text": "parcel SENT"}
            status, got = await post(f"{base}/messages/{old}/revoke")
            assert status == 422
            status, revoke = await post(f"{base}/messages/{mine}/revoke")
            assert status == 202 and revoke["type"] == "revoke"
            status, got = await post(f"{base}/chats/{ALICE}/presence", {"state": "composing"})
            assert status == 202 and got["params"]["state"] == "composing"
            status, got = await post(
                f"/api/accounts/{CLOUD}/chats/{ALICE}/presence", {"state": "composing"}
            )
            assert status == 202  # the cloud engine has a typing indicator
            status, got = await post(
                f"/api/accounts/{CLOUD}/chats/{ALICE}/presence", {"state": "dancing"}
            )
            assert status == 400

            response = await client.get(f"{base}/actions/{revoke['id']}", headers=agent)
            assert response.status_code == 200
            assert (await response.get_json())["status"] == "queued"
            response = await client.get(f"{base}/actions/act_nope12345", headers=agent)
            assert response.status_code == 404

    _run(open_db, db_path, body)


class _Accounts:
    def __init__(self, engine: Any) -> None:
        self.runtime = SimpleNamespace(connected=True, engine=engine)

    def get(self, account_id: str) -> Any:
        return self.runtime if account_id == SANDBOX else None


async def _until(predicate: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_the_action_loop_applies_each_action_once(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        # The sandbox fails each action's first attempt: every one is retried.
        await _accounts(db, fail_transient_attempts=1)
        await _inbound(db, SANDBOX, ALICE, "hello")
        mine = await _sent(db, SANDBOX, ALICE, "parcel sent")
        other = await _sent(db, SANDBOX, ALICE, "second")
        supported = registry.capabilities("sandbox").actions
        until = time.time() + 3600
        accepted = []
        async with db.write() as conn:
            for type_, params, message in (
                ("read", None, None),
                ("archive", None, None),
                ("pin", None, None),
                ("mute", {"until": until}, None),
                ("edit", {"text": "parcel SENT"}, mine),
                ("revoke", None, other),
                ("presence", {"state": "composing"}, None),
            ):
                accepted.append(
                    await accept_action(
                        conn,
                        account_id=SANDBOX,
                        engine="sandbox",
                        supported=supported,
                        chat_jid=ALICE,
                        type_=type_,  # type: ignore[arg-type]
                        params=params,
                        message_id=message,
                    )
                )
        engine = SandboxEngine(
            SANDBOX, {"fail_transient_attempts": 1}, {}, SimpleNamespace(settings={}), db=db
        )
        written = 0

        async def events_written() -> None:
            nonlocal written
            written += 1

        loop = ActionLoop(db, _Accounts(engine), events_written=events_written)  # type: ignore[arg-type]
        loop.queue.backoff_base_s = loop.queue.backoff_cap_s = 0.05
        await loop.recover()
        loop.start()

        async def all_done() -> bool:
            rows = [await actions_store.action_row(db, SANDBOX, a.action.id) for a in accepted]
            return all(r is not None and r.status != "queued" for r in rows)

        try:
            await _until(all_done, "every action to finish")
        finally:
            await loop.stop(5)
        rows = [await actions_store.action_row(db, SANDBOX, a.action.id) for a in accepted]
        assert [r.status for r in rows if r] == ["done"] * 7, [r.error for r in rows if r]

        chat = await actions_store.chat_state(db, SANDBOX, ALICE)
        assert chat is not None
        assert (chat.archived, chat.pinned, chat.muted_until, chat.unread_count) == (
            True,
            True,
            until,
            0,
        )
        edited = await store.message_row(db, SANDBOX, mine)
        assert edited is not None and edited.body == "parcel SENT"
        revoked = await store.message_row(db, SANDBOX, other)
        assert revoked is not None and revoked.deleted_at is not None

        events = await _events(
            db, SANDBOX, "action.completed", "chat.updated", "message.edited", "message.deleted"
        )
        completed = [e for e in events if e["event"] == "action.completed"]
        assert sorted(e["id"] for e in completed) == sorted(a.action.id for a in accepted)
        changes = [e["changes"] for e in events if e["event"] == "chat.updated"]
        assert {"archived": True} in changes and {"pinned": True} in changes
        assert {"muted_until": until} in changes and {"unread_count": 0} in changes
        (edit_event,) = [e for e in events if e["event"] == "message.edited"]
        assert edit_event["previous_text"] == "parcel sent" and edit_event["text"] == "parcel SENT"
        assert [e["id"] for e in events if e["event"] == "message.deleted"] == [other]
        assert written >= 1

        # One effect each on the simulated WhatsApp, despite a failed first attempt.
        served = await db.fetchall(
            "SELECT type, offered FROM sandbox_server_actions WHERE account_id = ?", (SANDBOX,)
        )
        assert sorted(r[0] for r in served) == sorted(
            ["read", "archive", "pin", "mute", "edit", "revoke", "presence"]
        )
        assert all(r[1] == 1 for r in served)

        # A worker that died after WhatsApp accepted but before the commit hands the edit
        # over again: the same send_id, so still one edit at WhatsApp.
        edit_row = rows[4]
        assert edit_row is not None and edit_row.send_id is not None
        action = EngineAction(
            id=edit_row.id,
            account_id=SANDBOX,
            type="edit",
            chat_jid=ALICE,
            params=edit_row.params,
            message_id=mine,
            send_id=edit_row.send_id,
        )
        engine._transient_failures[action.id] = 1  # past its simulated failure
        await engine.perform(action)
        served = await db.fetchall(
            "SELECT COUNT(*), MAX(offered) FROM sandbox_server_actions "
            "WHERE account_id = ? AND type = 'edit'",
            (SANDBOX,),
        )
        assert tuple(served[0]) == (1, 2)

    _run(open_db, db_path, body)


def test_an_expired_typing_indicator_is_dropped_not_sent_late(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _accounts(db)
        await _inbound(db, SANDBOX, ALICE, "hello")
        async with db.write() as conn:
            accepted = await accept_action(
                conn,
                account_id=SANDBOX,
                engine="sandbox",
                supported=registry.capabilities("sandbox").actions,
                chat_jid=ALICE,
                type_="presence",
                params={"state": "composing"},
                now=time.time() - 60,
            )
        engine = SandboxEngine(SANDBOX, {}, {}, SimpleNamespace(settings={}), db=db)

        async def nothing() -> None:
            return None

        loop = ActionLoop(db, _Accounts(engine), events_written=nothing)  # type: ignore[arg-type]
        loop.start()

        async def finished() -> bool:
            row = await actions_store.action_row(db, SANDBOX, accepted.action.id)
            return row is not None and row.status != "queued"

        try:
            await _until(finished, "the indicator to be dropped")
        finally:
            await loop.stop(5)
        row = await actions_store.action_row(db, SANDBOX, accepted.action.id)
        assert row is not None and row.status == "failed" and "expired" in (row.error or "")
        assert await db.fetchall("SELECT 1 FROM sandbox_server_actions") == []
        failed = await _events(db, SANDBOX, "action.failed")
        assert [e["id"] for e in failed] == [accepted.action.id]

    _run(open_db, db_path, body)


def test_actions_of_an_account_offline_wait_for_it_and_run_when_it_connects(
    open_db: OpenDb, db_path: Path
) -> None:
    """Not connected: each action is given back once for a minute (before: every two
    seconds, a write each, for as long as the account stayed offline); it runs as soon
    as the account connects (``account_connected``), not at the minute's recheck."""

    async def body(db: Database) -> None:
        await _accounts(db)
        await _inbound(db, SANDBOX, ALICE, "hello")
        async with db.write() as conn:
            accepted = [
                await accept_action(
                    conn,
                    account_id=SANDBOX,
                    engine="sandbox",
                    supported=registry.capabilities("sandbox").actions,
                    chat_jid=ALICE,
                    type_=type_,  # type: ignore[arg-type]
                    params=None,
                )
                for type_ in ("archive", "pin")
            ]
        engine = SandboxEngine(SANDBOX, {}, {}, SimpleNamespace(settings={}), db=db)

        async def nothing() -> None:
            return None

        accounts = _Accounts(engine)
        accounts.runtime.connected = False
        loop = ActionLoop(db, accounts, events_written=nothing)  # type: ignore[arg-type]
        released = count_releases(loop.queue)
        loop.start()

        async def given_back() -> bool:
            return len(released) >= 1

        async def both_done() -> bool:
            rows = [await actions_store.action_row(db, SANDBOX, a.action.id) for a in accepted]
            return all(r is not None and r.status == "done" for r in rows)

        try:
            await _until(given_back, "the first action to be given back")
            await asyncio.sleep(2.5)  # the old recheck came every 2 s
            # One chat: its second action waits behind the first, in the queue.
            assert released == ["account not connected"]
            due = await db.fetchall(
                "SELECT run_at, last_error FROM queue_jobs WHERE queue = ? AND state = 'queued'"
                " ORDER BY id",
                (ACTION_QUEUE,),
            )
            assert len(due) == 2 and due[0][1] == "account not connected"
            assert due[0][0] > time.time() + 50
            accounts.runtime.connected = True
            await loop.account_connected(SANDBOX)
            await _until(both_done, "both actions to run once connected", timeout_s=10)
        finally:
            await loop.stop(5)
        assert released == ["account not connected"]

    _run(open_db, db_path, body)


def test_inbox_archive_and_read_queue_whatsapp_actions_when_the_account_says_so(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _accounts(db)
        async with db.write() as conn:
            await store.update_account(
                conn,
                SANDBOX,
                now=2.0,
                settings={"archive_on_whatsapp": True, "mark_read_by_users": True},
            )
            await store.update_account(conn, CLOUD, now=2.0, settings={"archive_on_whatsapp": True})
        await _inbound(db, SANDBOX, ALICE, "hello")
        await _inbound(db, CLOUD, ALICE, "hello")
        agent = {"Authorization": f"Bearer {await _key(db, Role.AGENT, SANDBOX, CLOUD)}"}
        async with _served(tmp_path, db) as app:
            client = app.test_client()
            for account in (SANDBOX, CLOUD):
                path = f"/api/accounts/{account}/chats/{ALICE}"
                response = await client.patch(path, json={"archived": True}, headers=agent)
                assert response.status_code == 200, await response.get_json()
                assert (await response.get_json())["archived"] is True
                response = await client.post(f"{path}/read", headers=agent)
                assert response.status_code == 200
        rows = await db.fetchall(
            "SELECT account_id, type FROM engine_actions ORDER BY created_at, rowid"
        )
        # The cloud engine cannot archive: its chat is archived here only, no action.
        assert [tuple(r) for r in rows] == [(SANDBOX, "archive"), (SANDBOX, "read")]
        assert await _queued_actions(db, SANDBOX) == 2

    _run(open_db, db_path, body)


def test_an_edit_from_whatsapp_changes_the_senders_message_only(
    open_db: OpenDb, db_path: Path
) -> None:
    pytest.importorskip("neonize")
    from neonize.proto import Neonize_pb2 as ev
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    from appliance.engines.web.protobuf import map_inbound

    def jid(value: str) -> Any:
        user, _, server = value.partition("@")
        return ev.JID(User=user, Server=server, Device=0, RawAgent=0, Integrator=0, IsEmpty=False)

    async def body(db: Database) -> None:
        await _accounts(db)
        original = await _inbound(db, SANDBOX, ALICE, "see you at 5")
        protocol = e2e.ProtocolMessage(
            key=MessageKey(remoteJID=ALICE, fromMe=False, ID=original),
            type=e2e.ProtocolMessage.MESSAGE_EDIT,
            editedMessage=e2e.Message(conversation="see you at 6"),
        )
        event = ev.Message(
            Info=ev.MessageInfo(
                MessageSource=ev.MessageSource(Chat=jid(ALICE), Sender=jid(ALICE)),
                ID="WAEDIT1",
                Timestamp=1_700_000_000,
            ),
            Message=e2e.Message(
                editedMessage=e2e.FutureProofMessage(message=e2e.Message(protocolMessage=protocol))
            ),
        )
        mapped = map_inbound(event)
        assert mapped is not None
        edit, _ = mapped
        assert (edit.type, edit.reply_to) == ("edit", original)
        assert edit.content == {
            "type": "edit",
            "edit": {"message_id": original, "text": "see you at 6"},
        }

        forged = dataclasses.replace(edit, sender_jid=NOBODY)
        async with db.write() as conn:
            await apply_edit(conn, SANDBOX, forged, time.time())  # not the sender's: ignored
        row = await store.message_row(db, SANDBOX, original)
        assert row is not None and row.body == "see you at 5"
        async with db.write() as conn:
            await apply_edit(conn, SANDBOX, edit, time.time())
        row = await store.message_row(db, SANDBOX, original)
        assert row is not None and row.body == "see you at 6"
        (event_data,) = await _events(db, SANDBOX, "message.edited")
        assert event_data["by"] == ALICE and event_data["previous_text"] == "see you at 5"

    _run(open_db, db_path, body)


def test_locations_and_contact_cards_map_both_ways_on_the_web_engine() -> None:
    pytest.importorskip("neonize")
    from neonize.proto import Neonize_pb2 as ev
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    from appliance.engines.web.content import outbound
    from appliance.engines.web.protobuf import map_inbound
    from appliance.messaging.models import CONTENT

    place = CONTENT.validate_python(
        {
            "type": "location",
            "location": {"latitude": 41.04, "longitude": 29.0, "name": "Office", "address": "X"},
        }
    )
    card = CONTENT.validate_python(
        {
            "type": "contacts",
            "contacts": [
                {
                    "name": {"formatted_name": "Bob Smith", "first_name": "Bob"},
                    "phones": [{"phone": "+90 555 111 22 33", "wa_id": "905551112233"}],
                }
            ],
        }
    )
    sent_place = outbound(place, None)  # type: ignore[arg-type]
    assert sent_place.locationMessage.degreesLatitude == 41.04
    assert (sent_place.locationMessage.name, sent_place.locationMessage.address) == ("Office", "X")
    sent_card = outbound(card, None)  # type: ignore[arg-type]
    assert sent_card.contactMessage.displayName == "Bob Smith"
    assert "TEL;type=CELL;waid=905551112233:+90 555 111 22 33" in sent_card.contactMessage.vcard
    two = CONTENT.validate_python({"type": "contacts", "contacts": [card.contacts[0]] * 2})  # type: ignore[union-attr]
    assert len(outbound(two, None).contactsArrayMessage.contacts) == 2  # type: ignore[arg-type]

    def received(message: Any) -> Any:
        source = ev.MessageSource(
            Chat=ev.JID(User="905551110001", Server="s.whatsapp.net"),
            Sender=ev.JID(User="905551110001", Server="s.whatsapp.net"),
        )
        event = ev.Message(Info=ev.MessageInfo(MessageSource=source, ID="WA1"), Message=message)
        mapped = map_inbound(event)
        assert mapped is not None
        return mapped[0]

    got = received(sent_place)
    assert (got.type, got.body) == ("location", "Office X")
    assert got.content["location"] == {
        "latitude": 41.04,
        "longitude": 29.0,
        "name": "Office",
        "address": "X",
    }
    got = received(sent_card)
    assert got.type == "contacts" and got.body == "Bob Smith"
    (back,) = got.content["contacts"]
    assert back["name"] == {"formatted_name": "Bob Smith"}
    assert back["phones"] == [{"phone": "+90 555 111 22 33", "wa_id": "905551112233"}]
    live = e2e.Message(liveLocationMessage=e2e.LiveLocationMessage(degreesLatitude=1.5))
    assert received(live).content["location"] == {
        "latitude": 1.5,
        "longitude": 0.0,
        "live": True,
    }


def test_the_cloud_engine_sends_locations_and_contact_cards_in_graphs_shapes(
    open_db: OpenDb, db_path: Path
) -> None:
    import httpx
    import orjson

    from appliance.engines.base import OutboundMessage
    from appliance.engines.cloud import CloudEngine
    from tests.unit.test_cloud_engine import CIPHER, GUARD, FakeHost, _cloud_account

    def graph(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no Graph call expected: {request.url}")

    async def body(db: Database) -> None:
        async with db.write() as conn:
            await _cloud_account(conn)
        row = await store.account_row(db, "c1")
        assert row is not None
        engine = CloudEngine(
            "c1",
            orjson.loads(row["engine_settings"]),
            {},
            FakeHost(db, "c1"),
            db=db,
            cipher=CIPHER,
            transport=httpx.MockTransport(graph),
            **GUARD,
        )
        place = {"latitude": 41.0, "longitude": 29.5, "name": "Office"}
        card = {"name": {"formatted_name": "Bob"}, "phones": [{"phone": "+1 555", "type": "CELL"}]}
        buttons = {
            "type": "button",
            "body": {"text": "Did the parcel arrive?"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]},
        }
        listed = {
            "type": "list",
            "header": {"type": "text", "text": "Menu"},
            "body": {"text": "Pick one"},
            "footer": {"text": "thanks"},
            "action": {
                "button": "Open",
                "sections": [{"title": "Hours", "rows": [{"id": "r1", "title": "Today"}]}],
            },
        }
        for type_, part in (
            ("location", place),
            ("contacts", [card]),
            ("interactive", buttons),
            ("interactive", listed),
        ):
            message = OutboundMessage(
                account_id="c1",
                id=f"msg_{type_}",
                to_jid="16505551234@s.whatsapp.net",
                type=type_,
                content={"type": type_, type_: part},
            )
            payload = await engine._payload(message, "16505551234")
            assert payload["type"] == type_ and payload[type_] == part, payload

    _run(open_db, db_path, body)


INTERACTIVE = {
    "to": "+905551110001",
    "type": "interactive",
    "interactive": {
        "type": "button",
        "body": {"text": "Did the parcel arrive?"},
        "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]},
    },
}


def test_interactive_sends_need_an_engine_that_sends_them(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _accounts(db)
        async with db.write() as conn:
            await store.create_account(
                conn,
                account_id="acc_web",
                name="acc_web",
                engine="web",
                engine_settings={},
                settings={},
                now=1.0,
            )
        agent = {"Authorization": f"Bearer {await _key(db, Role.AGENT, CLOUD, 'acc_web')}"}
        async with _served(tmp_path, db) as app:
            client = app.test_client()
            response = await client.post(
                "/api/accounts/acc_web/messages", json=INTERACTIVE, headers=agent
            )
            assert response.status_code == 409
            error = (await response.get_json())["error"]
            assert error == "the web engine cannot send interactive messages"
            response = await client.post(
                f"/api/accounts/{CLOUD}/messages", json=INTERACTIVE, headers=agent
            )
            assert response.status_code == 202, await response.get_json()
            bad = {**INTERACTIVE, "interactive": {**INTERACTIVE["interactive"], "type": "list"}}
            response = await client.post(f"/api/accounts/{CLOUD}/messages", json=bad, headers=agent)
            assert response.status_code == 400
            # more than 10 rows over all sections: a rule between fields, so 422
            eleven = {
                **INTERACTIVE,
                "interactive": {
                    "type": "list",
                    "body": {"text": "Pick one"},
                    "action": {
                        "button": "Open",
                        "sections": [
                            {"rows": [{"id": f"{s}{r}", "title": "row"} for r in range(n)]}
                            for s, n in (("a", 6), ("b", 5))
                        ],
                    },
                },
            }
            response = await client.post(
                f"/api/accounts/{CLOUD}/messages", json=eleven, headers=agent
            )
            error = await response.get_json()
            assert response.status_code == 422, error
            assert error["issues"][0]["path"] == "interactive.action.sections", error
        rows = await db.fetchall("SELECT account_id, type FROM messages WHERE direction = 'out'")
        assert [tuple(r) for r in rows] == [(CLOUD, "interactive")]

    _run(open_db, db_path, body)
