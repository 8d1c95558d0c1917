"""The web engine faithful to the phone (issue 12, items 1-3) in the real installed
appliance: supervisord, API processes and worker, with neonize's client replaced at
its boundary by ``tests/fakes/fake_whatsapp.py`` (events built with neonize's own
protobuf classes). Messages typed on the "phone", our echoed sends, a history sync in
chunks with a worker kill -9 in the middle, group changes, profile pictures.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("neonize")

from neonize.proto import Neonize_pb2 as ev
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs
from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as web

from tests.fakes.fake_whatsapp import FakeWhatsAppServer, jid
from tests.integration.conftest import Appliance, bearer, new_api_key
from tests.integration.test_web_engine import (
    ALICE,
    ALICE_JID,
    CAROL_JID,
    FAST,
    GROUP,
    Receiver,
    _events,
    _message,
    _send,
    _sent_where,
    _status,
    _text,
    _wait,
    _wait_state,
    _wait_status,
    web_appliance,
)
from tests.samples import png

pytestmark = pytest.mark.integration

PHONE = "15550003333"
ME_JID = f"{PHONE}@s.whatsapp.net"
BOB_JID = "15554445555@s.whatsapp.net"
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeWhatsAppServer]:
    with FakeWhatsAppServer() as server:
        yield server


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, fake: FakeWhatsAppServer) -> Iterator[Appliance]:
    with web_appliance(tmp_path_factory, fake) as installed:
        yield installed


@pytest.fixture(scope="module")
def admin(app: Appliance) -> Iterator[httpx.Client]:
    with bearer(app, new_api_key(app, "history-admin", "admin")) as c:
        yield c


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _account(
    app: Appliance,
    c: httpx.Client,
    fake: FakeWhatsAppServer,
    account: str,
    settings: dict[str, Any] | None = None,
) -> None:
    if c.get(f"/api/accounts/{account}").status_code == 404:
        created = c.post(
            "/api/accounts",
            json={
                "id": account,
                "name": account,
                "engine": "web",
                "engine_settings": FAST,
                "settings": settings or {},
            },
        )
        assert created.status_code == 201, created.text
    if _status(c, account)["state"] != "connected":
        if not fake.linked(account):
            fake.scan(account, phone=PHONE)
        _wait_state(app, c, account, "connected")


# -- 1. messages sent elsewhere ------------------------------------------------------------


def test_a_message_typed_on_the_phone_appears_once_and_our_echoed_send_stays_one_row(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _account(app, admin, fake, "h1")
    wa_id = fake.push_text("h1", ALICE_JID, "typed on the phone", sender=ME_JID, from_me=True)
    fake.wait_acked("h1", wa_id)
    fake.push_text(  # WhatsApp delivers it again
        "h1", ALICE_JID, "typed on the phone", sender=ME_JID, from_me=True, message_id=wa_id
    )
    fake.wait_acked("h1", wa_id)
    message = _message(admin, "h1", wa_id)
    assert message is not None
    assert (message["direction"], message["origin"], message["to"]) == ("out", "phone", ALICE_JID)
    assert message["content"] == {"type": "text", "text": {"body": "typed on the phone"}}
    sent = [e for e in _events(admin, "h1", "message.sent") if e["data"]["id"] == wa_id]
    assert len(sent) == 1 and sent[0]["data"]["origin"] == "phone"
    fake.receipt("h1", [wa_id], "read", chat=ALICE_JID)  # its receipts move it on
    _wait_status(app, admin, "h1", wa_id, "read")

    # Our own API send, echoed back by WhatsApp to this linked device: one row.
    api_id = _send(admin, "h1", _text(ALICE, "sent through the API"))
    _wait_status(app, admin, "h1", api_id, "sent")
    wa_send = _sent_where(
        fake, "h1", lambda s: s.message == {"conversation": "sent through the API"}
    )
    echo = fake.push_text(
        "h1", ALICE_JID, "sent through the API", sender=ME_JID, from_me=True, message_id=wa_send.id
    )
    fake.wait_acked("h1", echo)
    rows = _query(
        app,
        "SELECT id, origin FROM messages WHERE account_id = 'h1' AND body = ?",
        "sent through the API",
    )
    assert [(r["id"], r["origin"]) for r in rows] == [(api_id, "api")]
    assert _message(admin, "h1", wa_send.id) is None


# -- 2. history sync ------------------------------------------------------------------------


def _conversation(chat: str, start: int, count: int, name: str) -> hs.Conversation:
    conv = hs.Conversation(ID=chat, name=name)
    tag = chat.split("@")[0][-4:]
    for n in range(start, start + count):
        from_me = n % 4 == 0
        info = web.WebMessageInfo(
            key={"remoteJID": chat, "fromMe": from_me, "ID": f"HIST{tag}{n:05d}"},
            message=e2e.Message(conversation=f"history message {n}"),
            messageTimestamp=T0 + n,
            status=web.WebMessageInfo.READ if from_me else web.WebMessageInfo.DELIVERY_ACK,
            pushName="" if from_me else "Pushed Name",
        )
        if chat.endswith("@g.us") and not from_me:
            info.participant = BOB_JID
        conv.messages.add(message=info, msgOrderID=n)
    return conv


def _chunks(per_chat: int = 500, per_chunk: int = 100) -> list[hs.HistorySync]:
    """3 chats x ``per_chat`` messages in chunks, newest first as the phone sends them."""
    out = []
    starts = list(range(per_chat - per_chunk, -1, -per_chunk))
    for order, start in enumerate(starts, start=1):
        data = hs.HistorySync(
            syncType=hs.HistorySync.INITIAL_BOOTSTRAP if order == 1 else hs.HistorySync.FULL,
            chunkOrder=order,
            progress=order * 100 // len(starts),
        )
        for chat, name in ((ALICE_JID, "Alice"), (CAROL_JID, "Carol"), (GROUP, "History Group")):
            data.conversations.append(_conversation(chat, start, per_chunk, name))
        data.pushnames.add(ID=BOB_JID, pushname="Bob From History")
        out.append(data)
    return out


def test_history_sync_in_chunks_with_a_chunk_twice_and_a_worker_kill_9(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    receiver = Receiver()
    hook = admin.post(
        "/api/webhooks",
        json={"url": receiver.url, "events": ["message.received", "account.sync"]},
    )
    assert hook.status_code == 201, hook.text
    receiver.secret = hook.json()["secret"]
    try:
        _history_sync(app, admin, fake, receiver)
    finally:
        admin.delete(f"/api/webhooks/{hook.json()['id']}")
        receiver.close()


def _history_sync(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer, receiver: Receiver
) -> None:
    _account(app, admin, fake, "h2", {"history_limit": 300})
    # An auto-reply that would answer every history message, were history to trigger it.
    rule = admin.post(
        "/api/accounts/h2/auto-replies",
        json={
            "name": "everything",
            "match_type": "contains",
            "pattern": "history",
            "actions": [{"type": "reply", "text": "auto"}],
        },
    )
    assert rule.status_code == 201, rule.text
    chunks = _chunks()
    assert len(chunks) == 5
    fake.push_history("h2", chunks[0])
    fake.push_history("h2", chunks[1])
    _wait(lambda: fake.history_pending("h2") == 0, 60, "two chunks imported", app)
    fake.push_history("h2", chunks[2])
    killed = app.pid_of("worker:worker")
    os.kill(killed, signal.SIGKILL)  # in the middle of the sync
    fake.push_history("h2", chunks[3])
    fake.push_history("h2", chunks[1])  # WhatsApp sends a chunk again
    fake.push_history("h2", chunks[4])
    app.wait_running("worker:worker", replacing=killed)
    _wait(lambda: fake.history_pending("h2") == 0, 90, "every chunk acknowledged", app)

    for chat in (ALICE_JID, CAROL_JID, GROUP):
        rows = _query(
            app,
            "SELECT id, history, wa_timestamp FROM messages WHERE account_id = 'h2' "
            "AND chat_jid = ?",
            chat,
        )
        assert len(rows) == 300, chat  # history_limit: the newest 300 of 500
        assert len({r["id"] for r in rows}) == 300
        assert {r["history"] for r in rows} == {1}
        assert min(r["wa_timestamp"] for r in rows) == T0 + 200
    own = _query(
        app,
        "SELECT DISTINCT direction, origin, status FROM messages WHERE account_id = 'h2' "
        "ORDER BY direction",
    )
    assert [tuple(r) for r in own] == [("in", None, "received"), ("out", "phone", "read")]
    status = _status(admin, "h2")
    assert status["sync"]["messages"] == 900 and status["sync"]["chunks"] == 5
    assert status["sync"]["state"] == "done" and status["sync"]["skipped"] == 600
    progress = [e["data"] for e in _events(admin, "h2", "account.sync")]
    for key in ("messages", "chunks", "chats", "skipped", "progress"):
        values = [p[key] for p in progress]
        assert values == sorted(values), (key, values)
    assert progress[-1]["messages"] == 900
    chat = admin.get(f"/api/accounts/h2/chats/{GROUP}/info")
    assert chat.status_code == 200 and chat.json()["name"] == "History Group"

    # History is not news: no message events, no webhook, no automation.
    assert _events(admin, "h2", "message.received", "message.sent") == []
    _wait(lambda: receiver.events("account.sync"), 30, "account.sync webhooks", app)
    assert receiver.events("message.received") == []
    jobs = _query(
        app,
        "SELECT COUNT(*) AS n FROM queue_jobs WHERE queue = 'automation' AND unique_key LIKE ?",
        "h2:%",
    )
    assert jobs[0]["n"] == 0
    assert _query(app, "SELECT COUNT(*) AS n FROM messages WHERE body = 'auto'")[0]["n"] == 0

    refused = admin.post("/api/accounts/h2/sync")
    assert refused.status_code == 422, refused.text
    assert "web engine" in refused.json()["error"]


# -- 3. names, groups, pictures --------------------------------------------------------------


def test_group_changes_on_the_phone_update_the_chat_and_emit_events(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _account(app, admin, fake, "h1")
    info = ev.GroupInfo(
        JID=jid(GROUP),
        GroupName=ev.GroupName(Name="Launch team"),
        GroupTopic=ev.GroupTopic(Topic="Where we plan"),
        Participants=[
            ev.GroupParticipant(JID=jid(ME_JID), IsSuperAdmin=True),
            ev.GroupParticipant(JID=jid(BOB_JID)),
        ],
    )
    fake.push_event("h1", ev.JoinedGroup(GroupInfo=info))
    _wait(
        lambda: admin.get(f"/api/accounts/h1/chats/{GROUP}/info").status_code == 200,
        20,
        "the group joined",
        app,
    )
    fake.push_event(
        "h1",
        ev.GroupInfoEvent(
            JID=jid(GROUP), Sender=jid(ME_JID), Name=ev.GroupName(Name="Launch team 2")
        ),
    )
    fake.push_event(
        "h1", ev.GroupInfoEvent(JID=jid(GROUP), Sender=jid(ME_JID), Join=[jid(CAROL_JID)])
    )

    def updated() -> dict[str, Any] | None:
        body = admin.get(f"/api/accounts/h1/chats/{GROUP}/info").json()
        return body if len(body["participants"]) == 3 and body["name"] == "Launch team 2" else None

    chat = _wait(updated, 20, "the subject change and the new member", app)
    assert chat["description"] == "Where we plan"
    assert {p["jid"]: p["role"] for p in chat["participants"]} == {
        ME_JID: "superadmin",
        BOB_JID: "member",
        CAROL_JID: "member",
    }
    events = [e["data"] for e in _events(admin, "h1", "chat.updated") if e["data"]["jid"] == GROUP]
    assert [e["name"] for e in events][-3:] == ["Launch team", "Launch team 2", "Launch team 2"]
    assert len(events[-1]["participants"]) == 3

    # A group message carries its sender's name; a changed name is a contact update.
    said = fake.push_text("h1", GROUP, "hello group", sender=BOB_JID, push_name="Bob Named")
    fake.wait_acked("h1", said)
    message = _message(admin, "h1", said)
    assert message is not None and message["sender_name"] == "Bob Named"
    assert message["from"] == BOB_JID
    _wait(
        lambda: [
            e
            for e in _events(admin, "h1", "contact.updated")
            if e["data"].get("push_name") == "Bob Named"
        ],
        20,
        "contact.updated with the push name",
        app,
    )


def test_a_profile_picture_is_fetched_once_then_served_from_the_store(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _account(app, admin, fake, "h1")
    picture = png(4, 4)
    fake.set_picture("h1", ALICE_JID, picture)
    fake.set_picture("h1", CAROL_JID, "hidden")
    asks_before = fake.picture_counts("h1")
    for _ in range(3):
        answer = admin.get(f"/api/accounts/h1/pictures/{ALICE}")
        assert answer.status_code == 200, answer.text
        assert answer.content == picture and answer.headers["content-type"] == "image/png"
    asks, downloads = fake.picture_counts("h1")
    assert (asks - asks_before[0], downloads - asks_before[1]) == (1, 1)
    for _ in range(2):
        hidden = admin.get(f"/api/accounts/h1/pictures/{CAROL_JID}")
        assert hidden.status_code == 404 and "privacy" in hidden.json()["error"]
    assert fake.picture_counts("h1")[0] - asks_before[0] == 2  # "hidden" remembered
    # Someone changes theirs on WhatsApp: asked again on the next request.
    fake.set_picture("h1", ALICE_JID, png(6, 6))
    fake.push_event("h1", ev.Picture(JID=jid(ALICE_JID), Author=jid(ALICE_JID), Timestamp=T0))
    _wait(
        lambda: admin.get(f"/api/accounts/h1/pictures/{ALICE}").content == png(6, 6),
        20,
        "the new picture",
        app,
    )
