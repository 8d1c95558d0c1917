"""Archive, pin and mute made on the phone come back (issue 12, item 4), in the real
installed appliance with the ``web`` engine against ``tests/fakes/fake_whatsapp.py``.

neonize 0.5.2 passes no app-state event on to Python; whatsmeow keeps what the phone
did in its chat-settings store, which the engine reads with ``get_chat_settings``. The
fake keeps that store the way whatsmeow does: the phone's changes
(``phone_changes_chat``) and our own patches land in it, and nothing else tells the
engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("neonize")

from tests.fakes.fake_whatsapp import FakeWhatsAppServer
from tests.integration.conftest import Appliance, bearer, new_api_key
from tests.integration.test_web_engine import FAST, _events, _wait, _wait_state, web_appliance

pytestmark = pytest.mark.integration

ACCOUNT, PHONE = "wp1", "15550004444"
ALICE_JID = "15552223333@s.whatsapp.net"
POLL_S = 0.5


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
    with bearer(app, new_api_key(app, "phone-settings-admin", "admin")) as c:
        yield c


def _chat(c: httpx.Client) -> dict[str, Any]:
    response = c.get(f"/api/accounts/{ACCOUNT}/chats/{ALICE_JID}")
    if response.status_code == 404:
        return {}
    assert response.status_code == 200, response.text
    return dict(response.json())


def _by_phone(c: httpx.Client) -> list[dict[str, Any]]:
    return [
        e["data"]["changes"]
        for e in _events(c, ACCOUNT, "chat.updated")
        if e["data"].get("by") == "phone"
    ]


def _looks(fake: FakeWhatsAppServer, more: int) -> None:
    """Wait until the engine read whatsmeow's store ``more`` more times."""
    start = fake.chat_settings_reads(ACCOUNT)
    _wait(
        lambda: fake.chat_settings_reads(ACCOUNT) >= start + more,
        60,
        f"{more} more reads of the chat settings",
    )


def test_archive_pin_and_mute_made_on_the_phone_come_back(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    settings = {**FAST, "chat_settings_poll_s": POLL_S}
    created = admin.post(
        "/api/accounts",
        json={"id": ACCOUNT, "name": ACCOUNT, "engine": "web", "engine_settings": settings},
    )
    assert created.status_code == 201, created.text
    fake.scan(ACCOUNT, phone=PHONE)
    _wait_state(app, admin, ACCOUNT, "connected", timeout_s=60)
    fake.push_text(ACCOUNT, ALICE_JID, "hello there")
    _wait(lambda: _chat(admin).get("unread_count") == 1, 60, "the inbound message", app)
    assert (_chat(admin)["archived"], _chat(admin)["pinned"]) == (False, False)

    # Archived, pinned and muted on the phone: only whatsmeow's store knows.
    until = int(time.time()) + 3600
    fake.phone_changes_chat(ACCOUNT, ALICE_JID, archived=True, pinned=True, muted_until=until)
    chat = _wait(
        lambda: (c := _chat(admin))["archived"] and c["pinned"] and c["muted_until"] and c,
        60,
        "the phone's settings in our chat",
        app,
    )
    assert chat["muted_until"] == until
    assert _by_phone(admin) == [{"archived": True, "pinned": True, "muted_until": until}]

    # Unmuted and unpinned on the phone; muted "always" is WhatsApp's -1.
    fake.phone_changes_chat(ACCOUNT, ALICE_JID, pinned=False, muted_until=0)
    _wait(
        lambda: (c := _chat(admin))["pinned"] is False and c["muted_until"] is None,
        60,
        "the unpin and unmute",
        app,
    )
    fake.phone_changes_chat(ACCOUNT, ALICE_JID, muted_until=-1)
    _wait(
        lambda: _chat(admin)["muted_until"] == 253_402_300_799,
        60,
        "the mute for always",
        app,
    )

    # Our own unarchive: done, kept (the phone's store follows it), not undone.
    action = admin.post(
        f"/api/accounts/{ACCOUNT}/chats/{ALICE_JID}/actions", json={"type": "unarchive"}
    )
    assert action.status_code == 202, action.text
    _wait(
        lambda: (
            admin.get(f"/api/accounts/{ACCOUNT}/actions/{action.json()['id']}").json()["status"]
            == "done"
        ),
        30,
        "the unarchive",
        app,
    )
    phone_changes = len(_by_phone(admin))
    _looks(fake, 3)
    assert _chat(admin)["archived"] is False
    assert len(_by_phone(admin)) == phone_changes  # nothing came back as the phone's

    # Unchanged settings are not reported again: one event per change on the phone.
    assert _by_phone(admin) == [
        {"archived": True, "pinned": True, "muted_until": until},
        {"pinned": False, "muted_until": None},
        {"muted_until": 253_402_300_799},
    ]
