"""Actions that reach WhatsApp, in the real installed appliance (API, worker, SQLite,
supervisord), with the ``web`` engine's neonize client replaced at its boundary by
``tests/fakes/fake_whatsapp.py`` (see tests/integration/test_web_engine.py): each
action reaches the fake as neonize's own protobuf (app-state patches, chat presence,
protocol messages), is ``done`` with its events, and a retried action has one effect.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("neonize")

from google.protobuf.json_format import MessageToDict
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

from tests.fakes.fake_whatsapp import FakeWhatsAppServer
from tests.integration.conftest import Appliance, bearer, new_api_key
from tests.integration.test_web_engine import (
    _events,
    _linked,
    _send,
    _text,
    _wait,
    _wait_status,
    web_appliance,
)

pytestmark = pytest.mark.integration

PHONE = "15550003333"
ALICE, ALICE_JID = "+15552223333", "15552223333@s.whatsapp.net"
ACCOUNT = "wa1"


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
    with bearer(app, new_api_key(app, "actions-admin", "admin")) as c:
        yield c


def _action(c: httpx.Client, path: str, body: Any = None, **headers: str) -> dict[str, Any]:
    response = c.post(f"/api/accounts/{ACCOUNT}/{path}", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return dict(response.json())


def _done(app: Appliance, c: httpx.Client, action: dict[str, Any]) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        got = c.get(f"/api/accounts/{ACCOUNT}/actions/{action['id']}").json()
        return got if got["status"] != "queued" else None

    got = dict(_wait(finished, 30, f"action {action['type']} to finish", app))
    assert got["status"] == "done", got
    return got


def _patch(fake: FakeWhatsAppServer, count: int) -> dict[str, Any]:
    patches = _wait(lambda: len(p := fake.app_state(ACCOUNT)) >= count and p, 20, "a patch")
    return dict(MessageToDict(patches[count - 1], preserving_proto_field_name=True))


def _chat(c: httpx.Client) -> dict[str, Any]:
    """The chat ({} until its first message is stored)."""
    response = c.get(f"/api/accounts/{ACCOUNT}/chats/{ALICE_JID}")
    if response.status_code == 404:
        return {}
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_chat_settings_reach_whatsapp_as_app_state_patches(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, ACCOUNT, PHONE)
    fake.push_text(ACCOUNT, ALICE_JID, "hello there")
    _wait(lambda: _chat(admin).get("unread_count") == 1, 60, "the inbound message", app)
    inbound_id = _events(admin, ACCOUNT, "message.received")[-1]["data"]["id"]

    archive = _action(admin, f"chats/{ALICE_JID}/actions", {"type": "archive"})
    _done(app, admin, archive)
    patch = _patch(fake, 1)
    assert patch["Type"] == "REGULAR_LOW"
    pin_off, archived = patch["Mutations"]  # WhatsApp unpins what it archives
    assert pin_off["Index"] == ["pin_v1", ALICE_JID] and pin_off["Version"] == 5
    assert archived["Index"] == ["archive", ALICE_JID] and archived["Version"] == 3
    assert archived["Value"]["archiveChatAction"]["archived"] is True
    assert _chat(admin)["archived"] is True

    pin = _action(admin, f"chats/{ALICE_JID}/actions", {"type": "pin"})
    _done(app, admin, pin)
    (pinned,) = _patch(fake, 2)["Mutations"]
    assert pinned["Index"] == ["pin_v1", ALICE_JID]
    assert pinned["Value"]["pinAction"]["pinned"] is True

    until = int(time.time()) + 3600
    mute = _action(admin, f"chats/{ALICE_JID}/actions", {"type": "mute", "until": until})
    _done(app, admin, mute)
    patch = _patch(fake, 3)
    assert patch["Type"] == "REGULAR_HIGH"
    (muted,) = patch["Mutations"]
    assert muted["Index"] == ["mute", ALICE_JID] and muted["Version"] == 2
    assert muted["Value"]["muteAction"] == {"muted": True, "muteEndTimestamp": str(until * 1000)}

    read = _action(admin, f"chats/{ALICE_JID}/actions", {"type": "read"})
    _done(app, admin, read)
    (marked,) = _patch(fake, 4)["Mutations"]
    assert marked["Index"] == ["markChatAsRead", ALICE_JID]
    assert marked["Value"]["markChatAsReadAction"]["read"] is True
    receipts = _wait(lambda: fake.reads(ACCOUNT), 20, "read receipts")
    assert receipts[-1].ids == [inbound_id] and receipts[-1].chat == ALICE_JID
    assert _chat(admin)["unread_count"] == 0

    # Read on the phone: WhatsApp's read-self receipt clears the unread count.
    again = fake.push_text(ACCOUNT, ALICE_JID, "one more thing")
    _wait(lambda: _chat(admin).get("unread_count") == 1, 60, "the second message", app)
    fake.receipt(ACCOUNT, [again], "read-self", chat=ALICE_JID)
    _wait(lambda: _chat(admin).get("unread_count") == 0, 60, "the phone's read", app)
    by_phone = [e["data"] for e in _events(admin, ACCOUNT, "chat.updated")]
    assert {"chat_id": ALICE_JID, "changes": {"unread_count": 0}, "by": "phone"} in by_phone

    changes = [e["data"]["changes"] for e in _events(admin, ACCOUNT, "chat.updated")]
    assert {"archived": True} in changes and {"pinned": True} in changes
    assert {"muted_until": until} in changes and {"unread_count": 0} in changes
    completed = {e["data"]["id"] for e in _events(admin, ACCOUNT, "action.completed")}
    assert {archive["id"], pin["id"], mute["id"], read["id"]} <= completed


def test_typing_revoke_and_edit_reach_whatsapp_once(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, ACCOUNT, PHONE)
    typing = _action(admin, f"chats/{ALICE_JID}/presence", {"state": "composing"})
    _done(app, admin, typing)
    recording = _action(admin, f"chats/{ALICE_JID}/presence", {"state": "recording"})
    _done(app, admin, recording)
    presences = fake.presences(ACCOUNT)
    assert [(p.chat, p.state, p.media) for p in presences[-2:]] == [
        (ALICE_JID, 0, 0),  # composing, text
        (ALICE_JID, 0, 1),  # composing, audio
    ]

    first = _send(admin, ACCOUNT, _text(ALICE, "the parcel is on its way"))
    _wait_status(app, admin, ACCOUNT, first, "sent")
    wa_id = [s for s in fake.sent(ACCOUNT) if s.message.get("conversation")][-1].id
    sends_before = len(fake.sent(ACCOUNT))

    # An edit, retried with the same key: one action, one protocol message.
    key = f"edit-{time.time_ns()}"
    body = {"text": "the parcel arrives today"}
    edit = _action(admin, f"messages/{first}/edit", body, **{"Idempotency-Key": key})
    again = _action(admin, f"messages/{first}/edit", body, **{"Idempotency-Key": key})
    assert again["id"] == edit["id"]
    _done(app, admin, edit)
    edits = [s for s in fake.sent(ACCOUNT)[sends_before:] if s.kind == "editedMessage"]
    assert len(edits) == 1
    protocol = edits[0].message["editedMessage"]["message"]["protocolMessage"]
    assert protocol["type"] == "MESSAGE_EDIT"
    assert protocol["key"] == {"remoteJID": ALICE_JID, "fromMe": True, "ID": wa_id}
    assert protocol["editedMessage"] == {"conversation": "the parcel arrives today"}
    message = admin.get(f"/api/accounts/{ACCOUNT}/messages/{first}").json()
    assert message["content"]["text"]["body"] == "the parcel arrives today"
    (edited,) = [e for e in _events(admin, ACCOUNT, "message.edited") if e["data"]["id"] == first]
    assert edited["data"]["previous_text"] == "the parcel is on its way"

    revoke = _action(admin, f"messages/{first}/revoke")
    _done(app, admin, revoke)
    revokes = [s for s in fake.sent(ACCOUNT)[sends_before:] if s.kind == "protocolMessage"]
    assert len(revokes) == 1
    assert revokes[0].message["protocolMessage"] == {
        "key": {"remoteJID": ALICE_JID, "fromMe": True, "ID": wa_id},
        "type": "REVOKE",
    }
    deleted = [e for e in _events(admin, ACCOUNT, "message.deleted") if e["data"]["id"] == first]
    assert len(deleted) == 1
    # Deleted now: a second revoke is refused before anything is queued.
    response = admin.post(f"/api/accounts/{ACCOUNT}/messages/{first}/revoke")
    assert response.status_code == 422, response.text


def test_locations_contact_cards_and_blocks_reach_whatsapp_and_come_back(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, ACCOUNT, PHONE)
    place = {"latitude": 41.0082, "longitude": 28.9784, "name": "Office", "address": "Istanbul"}
    sent_place = _send(admin, ACCOUNT, {"to": ALICE, "type": "location", "location": place})
    _wait_status(app, admin, ACCOUNT, sent_place, "sent")
    location = [s for s in fake.sent(ACCOUNT) if s.kind == "locationMessage"][-1]
    assert location.message["locationMessage"] == {
        "degreesLatitude": 41.0082,
        "degreesLongitude": 28.9784,
        "name": "Office",
        "address": "Istanbul",
    }
    card = {
        "name": {"formatted_name": "Bob"},
        "phones": [{"phone": "+15554445555", "wa_id": "15554445555"}],
    }
    sent_card = _send(admin, ACCOUNT, {"to": ALICE, "type": "contacts", "contacts": [card]})
    _wait_status(app, admin, ACCOUNT, sent_card, "sent")
    contact = [s for s in fake.sent(ACCOUNT) if s.kind == "contactMessage"][-1]
    assert contact.message["contactMessage"]["displayName"] == "Bob"
    assert (
        "TEL;type=CELL;waid=15554445555:+15554445555" in contact.message["contactMessage"]["vcard"]
    )

    # The contact sends a location and a card back: stored in the Cloud API shapes.
    got_place = fake.push_message(
        ACCOUNT,
        e2e.Message(locationMessage=e2e.LocationMessage(degreesLatitude=1.5, degreesLongitude=2.5)),
        chat=ALICE_JID,
    )
    vcard = "\n".join(
        [
            "BEGIN:VCARD",
            "VERSION:3.0",
            "FN:Carol",
            "TEL;type=CELL;waid=15556667777:+1 555 666 7777",
            "END:VCARD",
        ]
    )
    got_card = fake.push_message(
        ACCOUNT,
        e2e.Message(contactMessage=e2e.ContactMessage(displayName="Carol", vcard=vcard)),
        chat=ALICE_JID,
    )
    fake.wait_acked(ACCOUNT, got_card)
    stored_place = admin.get(f"/api/accounts/{ACCOUNT}/messages/{got_place}").json()
    assert stored_place["content"] == {
        "type": "location",
        "location": {"latitude": 1.5, "longitude": 2.5},
    }
    stored_card = admin.get(f"/api/accounts/{ACCOUNT}/messages/{got_card}").json()
    assert stored_card["type"] == "contacts"
    (carol,) = stored_card["content"]["contacts"]
    assert carol["name"] == {"formatted_name": "Carol"}
    assert carol["phones"] == [{"phone": "+1 555 666 7777", "wa_id": "15556667777"}]

    # Block and unblock at WhatsApp (issue 13): the web engine can now.
    blocked = admin.post(f"/api/accounts/{ACCOUNT}/contacts/{ALICE_JID}/block")
    assert blocked.status_code == 200, blocked.text
    assert ALICE_JID in fake.blocked(ACCOUNT)
    unblocked = admin.post(f"/api/accounts/{ACCOUNT}/contacts/{ALICE_JID}/unblock")
    assert unblocked.status_code == 200, unblocked.text
    assert ALICE_JID not in fake.blocked(ACCOUNT)


def test_an_action_the_cloud_engine_cannot_do_names_the_engine(admin: httpx.Client) -> None:
    created = admin.post(
        "/api/accounts",
        json={
            "id": "cl1",
            "name": "cl1",
            "engine": "cloud",
            "engine_settings": {
                "phone_number_id": "1234567890",
                "access_token": "EAAtest",
                "app_secret": "s3cret",
                "verify_token": "verify-me",
                "base_url": "http://127.0.0.1:9",
            },
        },
    )
    assert created.status_code == 201, created.text
    response = admin.post(f"/api/accounts/cl1/chats/{ALICE_JID}/actions", json={"type": "archive"})
    assert response.status_code == 409, response.text
    assert "the cloud engine cannot archive chats" in response.json()["error"]
