"""The ``web`` engine in the real installed appliance, with neonize's client replaced at
its boundary by ``tests/fakes/fake_whatsapp.py``.

The worker builds its clients with the test-only setting
``WEB_CLIENT_FACTORY=fake_whatsapp:client_factory`` (the installation's venv gets a
``.pth`` line naming ``tests/fakes``); those clients talk to a ``FakeWhatsAppServer``
that this test process runs on 127.0.0.1 (``APPLIANCE_FAKE_WHATSAPP_ADDR``). Everything
else is the real thing: API processes, worker, SQLite, the engine's own mapping of
neonize events, webhooks verified with the ``standardwebhooks`` package. Nothing
connects anywhere but loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("neonize")

from standardwebhooks import Webhook

from tests.fakes.fake_whatsapp import FakeWhatsAppServer, Sent
from tests.integration.conftest import (
    Appliance,
    bearer,
    free_port,
    new_api_key,
    running_appliance,
)
from tests.samples import png as _png

pytestmark = pytest.mark.integration

FAKES = Path(__file__).resolve().parents[1] / "fakes"
ENV = (
    "WEB_CLIENT_FACTORY=fake_whatsapp:client_factory\n"
    "WEBHOOK_ALLOW_NETWORKS=127.0.0.1/32\n"
    "WEBHOOK_RETRY_SCHEDULE_S=0,0.2,0.5,1,1\n"
    "SEND_CHAT_INTERVAL_MS=0\n"
    "API_RATE_LIMIT_PER_MIN=100000\n"
    "API_RATE_LIMIT_PER_ADDR_PER_MIN=100000\n"
)
# Engine settings that keep the drills short (whatsmeow's own reconnect gets 1 s).
FAST = {"reconnect_grace_s": 1, "probe_timeout_s": 2}
PHONE_1, PHONE_2 = "15550001111", "15550002222"
ALICE, ALICE_JID = "+15552223333", "15552223333@s.whatsapp.net"
CAROL, CAROL_JID = "+15556667777", "15556667777@s.whatsapp.net"
BOB_JID = "15554445555@s.whatsapp.net"
BOB_LID = "208430004441234@lid"
GROUP = "120363025246125244@g.us"


# -- installation -----------------------------------------------------------------------------


@contextlib.contextmanager
def web_appliance(factory: pytest.TempPathFactory, fake: FakeWhatsAppServer) -> Iterator[Appliance]:
    """conftest's running_appliance, plus, before the first start, the ``.pth`` that lets
    the worker import ``fake_whatsapp``, and the fake's address for the worker."""

    def add_fakes_to_path(prefix: Path) -> None:
        site = next((prefix / "opt/appliance/venv/lib").glob("python3*/site-packages"))
        (site / "appliance_test_fakes.pth").write_text(f"{FAKES}\n")

    with running_appliance(
        factory,
        "web",
        ENV,
        before_start=add_fakes_to_path,
        start_env={"APPLIANCE_FAKE_WHATSAPP_ADDR": fake.address},
    ) as app:
        yield app


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
    with bearer(app, new_api_key(app, "web-admin", "admin")) as c:
        yield c


# -- a webhook receiver ---------------------------------------------------------------------


class Receiver:
    """Webhook deliveries to 127.0.0.1, each verified with ``standardwebhooks``."""

    def __init__(self) -> None:
        self.secret = ""
        self.port = free_port()
        self.received: list[dict[str, Any]] = []
        self.unverified = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(receiver.secret).verify(body, headers)
                    with receiver.lock:
                        receiver.received.append(json.loads(body))
                except Exception:
                    with receiver.lock:
                        receiver.unverified += 1
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self, *types: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.received if not types or e["type"] in types]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def receiver(admin: httpx.Client) -> Iterator[Receiver]:
    hook = Receiver()
    created = admin.post(
        "/api/webhooks",
        json={
            "url": hook.url,
            "events": [
                "message.sent",
                "message.delivered",
                "message.read",
                "message.received",
                "message.failed",
                "account.status",
            ],
        },
    )
    assert created.status_code == 201, created.text
    hook.secret = created.json()["secret"]
    try:
        yield hook
    finally:
        admin.delete(f"/api/webhooks/{created.json()['id']}")
        hook.close()


# -- helpers ----------------------------------------------------------------------------------


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str, app: Appliance | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            tail = "\n".join(app.log_text("worker").splitlines()[-40:]) if app else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{tail}")
        time.sleep(0.1)


def _status(c: httpx.Client, account: str) -> dict[str, Any]:
    response = c.get(f"/api/accounts/{account}/status")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _wait_state(
    app: Appliance, c: httpx.Client, account: str, state: str, timeout_s: float = 20
) -> dict[str, Any]:
    return dict(
        _wait(
            lambda: (s := _status(c, account))["state"] == state and s,
            timeout_s,
            f"{account} to be {state}",
            app,
        )
    )


def _message(c: httpx.Client, account: str, message_id: str) -> dict[str, Any] | None:
    response = c.get(f"/api/accounts/{account}/messages/{message_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return dict(response.json())


def _wait_status(
    app: Appliance, c: httpx.Client, account: str, message_id: str, *statuses: str, timeout_s=20
) -> dict[str, Any]:
    return dict(
        _wait(
            lambda: (m := _message(c, account, message_id)) and m["status"] in statuses and m,
            timeout_s,
            f"message {message_id} to be {'/'.join(statuses)}",
            app,
        )
    )


def _events(c: httpx.Client, account: str, *types: str, after: int = 0) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"account": account, "limit": 1000}
    if types:
        params["types"] = ",".join(types)
    for _ in range(50):
        page = c.get("/api/events", params={**params, "after": after})
        assert page.status_code == 200, page.text
        items.extend(page.json()["items"])
        after = int(page.json()["next"])
        if len(page.json()["items"]) < 1000:
            break
    return items


def _last_event_id(c: httpx.Client, account: str) -> int:
    events = _events(c, account)
    return int(events[-1]["id"]) if events else 0


def _send(c: httpx.Client, account: str, body: dict[str, Any]) -> str:
    response = c.post(f"/api/accounts/{account}/messages", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _text(to: str, body: str, **extra: Any) -> dict[str, Any]:
    return {"to": to, "type": "text", "text": {"body": body}, **extra}


def _sent_where(fake: FakeWhatsAppServer, account: str, match: Callable[[Sent], bool]) -> Sent:
    """The newest send of the account that matches (waits for it)."""
    found = _wait(
        lambda: [s for s in fake.sent(account) if match(s)], 20, f"a matching send of {account}"
    )
    return found[-1]


def _linked(
    app: Appliance, c: httpx.Client, fake: FakeWhatsAppServer, account: str, phone: str
) -> None:
    """The account exists, is linked to ``phone`` and connected (whatever ran before)."""
    if c.get(f"/api/accounts/{account}").status_code == 404:
        created = c.post(
            "/api/accounts",
            json={"id": account, "name": account, "engine": "web", "engine_settings": FAST},
        )
        assert created.status_code == 201, created.text
    if _status(c, account)["state"] != "connected":
        if not fake.linked(account):
            fake.scan(account, phone=phone)
        _wait_state(app, c, account, "connected")


# -- linking ----------------------------------------------------------------------------------


def test_linking_with_the_qr_code(app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer):
    created = admin.post(
        "/api/accounts",
        json={"id": "w1", "name": "w1", "engine": "web", "engine_settings": FAST},
    )
    assert created.status_code == 201, created.text
    assert created.json()["engine"] == "web"
    code = fake.qr("w1")
    _wait_state(app, admin, "w1", "pairing")
    raw = admin.get("/api/accounts/w1/qr", params={"format": "raw"})
    assert raw.status_code == 200 and raw.text == code
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.headers["cache-control"] == "no-store"
    png = admin.get("/api/accounts/w1/qr", params={"format": "png"})
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    svg = admin.get("/api/accounts/w1/qr", params={"format": "svg"})
    assert svg.headers["content-type"] == "image/svg+xml" and b"<svg" in svg.content

    refreshed = fake.refresh_qr("w1")  # WhatsApp rotates the code: the API follows
    _wait(
        lambda: admin.get("/api/accounts/w1/qr", params={"format": "raw"}).text == refreshed,
        10,
        "the refreshed QR code",
    )
    fake.scan("w1", phone=PHONE_1)
    status = _wait_state(app, admin, "w1", "connected")
    assert status["phone"] == f"+{PHONE_1}"
    assert admin.get("/api/accounts/w1/qr").status_code == 409  # linked: no QR code
    states = [e["data"]["state"] for e in _events(admin, "w1", "account.status")]
    assert states == ["connecting", "pairing", "pairing", "connected"], states
    reasons = [e["data"]["reason"] for e in _events(admin, "w1", "account.status")]
    assert reasons[1:3] == ["scan the QR code (code 1)", "scan the QR code (code 2)"]
    session = app.data / "sessions" / "w1"
    assert (session / "session.db").is_file()
    assert not (session / "ids.db").exists()  # the id map is a table of the main database
    assert oct(session.stat().st_mode & 0o777) == "0o700"


def test_linking_with_a_pairing_code(app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer):
    created = admin.post(
        "/api/accounts",
        json={"id": "w2", "name": "w2", "engine": "web", "engine_settings": FAST},
    )
    assert created.status_code == 201, created.text
    fake.qr("w2")
    _wait_state(app, admin, "w2", "pairing")
    bad = admin.post("/api/accounts/w2/pairing-code", json={"phone": "12345"})
    assert bad.status_code == 400
    answer = admin.post("/api/accounts/w2/pairing-code", json={"phone": f"+{PHONE_2}"})
    assert answer.status_code == 200, answer.text
    code = answer.json()["code"]
    assert len(code) == 9 and code[4] == "-"
    _wait(
        lambda: _status(admin, "w2")["reason"] == "enter the pairing code on the phone",
        10,
        "the pairing-code state",
    )
    fake.enter_pairing_code("w2", code)
    assert _wait_state(app, admin, "w2", "connected")["phone"] == f"+{PHONE_2}"
    again = admin.post("/api/accounts/w2/pairing-code", json={"phone": f"+{PHONE_2}"})
    assert again.status_code == 409  # linked already


# -- sending ----------------------------------------------------------------------------------


def test_text_reply_and_reaction_reach_whatsapp_with_receipts_as_events_and_webhooks(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer, receiver: Receiver
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    before = len(fake.sent("w1"))
    first = _send(admin, "w1", _text(ALICE, "hello"))
    sent = fake.wait_sent("w1", before + 1)[-1]
    assert (sent.to, sent.message) == (ALICE_JID, {"conversation": "hello"})
    _wait_status(app, admin, "w1", first, "sent")

    reply = _send(admin, "w1", _text(ALICE, "and more", context={"message_id": first}))
    quoted = fake.wait_sent("w1", before + 2)[-1]
    context = quoted.message["extendedTextMessage"]["contextInfo"]
    assert quoted.message["extendedTextMessage"]["text"] == "and more"
    assert context["stanzaID"] == sent.id  # WhatsApp's id of our message, not ours
    assert "participant" not in context

    react = {"to": ALICE, "type": "reaction", "reaction": {"message_id": first, "emoji": "👍"}}
    reaction = _send(admin, "w1", react)
    reacted = fake.wait_sent("w1", before + 3)[-1].message["reactionMessage"]
    assert reacted["text"] == "👍"
    assert reacted["key"] == {"remoteJID": ALICE_JID, "fromMe": True, "ID": sent.id}
    for message_id in (reply, reaction):
        _wait_status(app, admin, "w1", message_id, "sent")

    fake.receipt("w1", [sent.id], "delivered")
    _wait_status(app, admin, "w1", first, "delivered")
    fake.receipt("w1", [sent.id, quoted.id], "read")
    _wait_status(app, admin, "w1", first, "read")
    _wait_status(app, admin, "w1", reply, "read")

    kinds = [
        e["type"]
        for e in _events(admin, "w1", "message.sent", "message.delivered", "message.read")
        if e["data"]["id"] == first
    ]
    assert kinds == ["message.sent", "message.delivered", "message.read"]
    hooked = _wait(
        lambda: (
            (got := [e["type"] for e in receiver.events() if e["data"].get("id") == first])
            and len(got) >= 3
            and got
        ),
        20,
        "the webhook deliveries",
    )
    assert sorted(hooked) == ["message.delivered", "message.read", "message.sent"]
    assert receiver.unverified == 0


def test_inbound_text_group_and_lid_senders_are_stored_once(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer, receiver: Receiver
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    after = _last_event_id(admin, "w1")
    plain = fake.push_text("w1", ALICE_JID, "hi there", push_name="Alice")
    fake.wait_acked("w1", plain)  # acknowledged only once stored
    stored = _message(admin, "w1", plain)
    assert stored is not None
    assert (stored["direction"], stored["status"], stored["type"]) == ("in", "received", "text")
    assert stored["content"] == {"type": "text", "text": {"body": "hi there"}}
    assert (stored["chat_id"], stored["from"]) == (ALICE_JID, ALICE_JID)

    group = fake.push_text("w1", GROUP, "hello all", sender=BOB_JID, push_name="Bob")
    by_lid = fake.push_text(
        "w1", GROUP, "from a lid", sender=BOB_LID, sender_alt=BOB_JID, push_name="Bob"
    )
    for message_id in (group, by_lid):
        fake.wait_acked("w1", message_id)
        message = _message(admin, "w1", message_id)
        assert message is not None
        assert (message["chat_id"], message["from"]) == (GROUP, BOB_JID)

    # WhatsApp delivers again what it believes unacknowledged: stored once all the same.
    again = fake.push_text("w1", ALICE_JID, "hi there", message_id=plain, push_name="Alice")
    assert again == plain
    _wait(lambda: fake.acked("w1", plain) == 2, 10, "the redelivery to be acknowledged")
    received = _events(admin, "w1", "message.received", after=after)
    assert sorted(e["data"]["id"] for e in received) == sorted([plain, group, by_lid])
    hooked = _wait(
        lambda: (
            {e["data"]["id"] for e in receiver.events("message.received")} >= {plain, group, by_lid}
        ),
        20,
        "message.received webhooks",
    )
    assert hooked and receiver.unverified == 0

    # A reply to our message names WhatsApp's id: stored against the appliance's id.
    ours = _send(admin, "w1", _text(ALICE, "question?"))
    wa_id = _sent_where(fake, "w1", lambda s: s.message == {"conversation": "question?"}).id
    _wait_status(app, admin, "w1", ours, "sent")
    answer = fake.push_text("w1", ALICE_JID, "answer", reply_to=wa_id)
    fake.wait_acked("w1", answer)
    stored_answer = _message(admin, "w1", answer)
    assert stored_answer is not None and stored_answer["reply_to"] == ours
    assert stored_answer["content"]["context"] == {"message_id": ours}

    # Replying to and reacting to their message: WhatsApp's keys name them.
    reply = _send(admin, "w1", _text(ALICE, "noted", context={"message_id": plain}))
    react = {"to": ALICE, "type": "reaction", "reaction": {"message_id": plain, "emoji": "❤"}}
    reaction = _send(admin, "w1", react)
    for message_id in (reply, reaction):
        _wait_status(app, admin, "w1", message_id, "sent")
    recent = fake.sent("w1")[-2:]
    context = recent[0].message["extendedTextMessage"]["contextInfo"]
    assert (context["stanzaID"], context["participant"]) == (plain, ALICE_JID)
    key = recent[1].message["reactionMessage"]["key"]
    assert key == {"remoteJID": ALICE_JID, "fromMe": False, "ID": plain}


def test_outbound_image_is_uploaded_and_sent(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    png = _png()
    uploaded = admin.post("/api/accounts/w1/media", params={"filename": "dot.png"}, content=png)
    assert uploaded.status_code == 201, uploaded.text
    media_id = uploaded.json()["id"]
    body = {"to": ALICE, "type": "image", "image": {"id": media_id, "caption": "look"}}
    message_id = _send(admin, "w1", body)
    _wait_status(app, admin, "w1", message_id, "sent")
    image = _sent_where(fake, "w1", lambda s: s.kind == "imageMessage").message["imageMessage"]
    assert (image["caption"], image["mimetype"]) == ("look", "image/png")
    assert int(image["fileLength"]) == len(png)
    assert fake.uploads("w1")[-1] == png


def _webp(size: int = 4) -> bytes:
    """A real still WebP (Pillow comes with neonize)."""
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGBA", (size, size), (0, 128, 255, 255)).save(out, format="webp")
    return out.getvalue()


def test_stickers_go_out_as_webp_and_come_in_stored_with_events_and_webhooks(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer, receiver: Receiver
) -> None:
    """Issue 12: a sticker end to end through the real processes, both ways."""
    _linked(app, admin, fake, "w1", PHONE_1)
    after = _last_event_id(admin, "w1")

    # Out, from a PNG: neonize's builder makes it a square WebP before uploading it.
    png = _png(3, 2)
    uploaded = admin.post("/api/accounts/w1/media", params={"filename": "s.png"}, content=png)
    assert uploaded.status_code == 201, uploaded.text
    converted = _send(
        admin, "w1", {"to": ALICE, "type": "sticker", "sticker": {"id": uploaded.json()["id"]}}
    )
    sent = _wait_status(app, admin, "w1", converted, "sent")
    assert sent["type"] == "sticker" and sent["direction"] == "out"
    first = _sent_where(fake, "w1", lambda s: s.kind == "stickerMessage")
    sticker = first.message
    assert sticker["stickerMessage"]["mimetype"] == "image/webp"
    webp_out = fake.uploads("w1")[-1]
    assert webp_out[:4] == b"RIFF" and webp_out[8:12] == b"WEBP"
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(webp_out)) as image:
        assert image.size == (512, 512)  # WhatsApp's sticker size, from a 3x2 PNG
    assert int(sticker["stickerMessage"]["fileLength"]) == len(webp_out)

    # Out, a WebP: sent as is, and as a reply (WhatsApp's id in the context).
    webp = _webp()
    stored = admin.post("/api/accounts/w1/media", params={"filename": "s.webp"}, content=webp)
    assert stored.status_code == 201, stored.text
    assert stored.json()["content_type"] == "image/webp"
    sends = len(fake.sent("w1"))
    as_is = _send(
        admin,
        "w1",
        {
            "to": ALICE,
            "type": "sticker",
            "sticker": {"id": stored.json()["id"]},
            "context": {"message_id": converted},
        },
    )
    _wait_status(app, admin, "w1", as_is, "sent")
    reply = fake.wait_sent("w1", sends + 1)[-1].message["stickerMessage"]
    assert fake.uploads("w1")[-1] == webp
    assert reply["contextInfo"]["stanzaID"] == first.id  # WhatsApp's id, not ours

    # In: stored with its media downloadable, one message.received event and webhook.
    blob = fake.add_media(webp, "image/webp")
    inbound = e2e_sticker(blob)
    received = fake.push_message("w1", inbound, chat=ALICE_JID, push_name="Alice")
    fake.wait_acked("w1", received)
    message = _message(admin, "w1", received)
    assert message is not None
    assert (message["direction"], message["type"], message["status"]) == (
        "in",
        "sticker",
        "received",
    )
    part = message["content"]["sticker"]
    assert part["id"].startswith("med_") and part["mime_type"] == "image/webp"
    assert part["file_size"] == len(webp)
    media = admin.get(f"/api/accounts/w1/media/{part['id']}")
    assert media.status_code == 200 and media.content == webp
    assert media.headers["content-type"] == "image/webp"

    events = _events(admin, "w1", "message.received", "message.sent", after=after)
    by_id = {(e["type"], e["data"]["id"]): e["data"] for e in events}
    assert by_id[("message.received", received)]["content"]["sticker"]["id"] == part["id"]
    assert {("message.sent", converted), ("message.sent", as_is)} <= set(by_id)
    hooked = _wait(
        lambda: [
            e
            for e in receiver.events("message.received")
            if e["data"]["id"] == received and e["data"]["type"] == "sticker"
        ],
        20,
        "the sticker's message.received webhook",
    )
    assert hooked[0]["data"]["content"]["sticker"]["id"] == part["id"]
    _wait(
        lambda: {e["data"]["id"] for e in receiver.events("message.sent")} >= {converted, as_is},
        20,
        "the stickers' message.sent webhooks",
    )
    assert receiver.unverified == 0


def e2e_sticker(blob: dict[str, Any]) -> Any:
    """A StickerMessage pointing at a blob of the fake's media servers."""
    import base64

    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    part = e2e.StickerMessage(
        URL=blob["url"],
        directPath=blob["direct_path"],
        mediaKey=base64.b64decode(blob["media_key"]),
        fileSHA256=base64.b64decode(blob["sha256"]),
        fileEncSHA256=base64.b64decode(blob["enc_sha256"]),
        fileLength=blob["length"],
        mimetype=blob["mimetype"],
        isAnimated=False,
    )
    return e2e.Message(stickerMessage=part)


# -- failures stay with their account ---------------------------------------------------------


def test_send_failures_are_retried_or_fail_and_stay_with_their_account(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer, receiver: Receiver
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    _linked(app, admin, fake, "w2", PHONE_2)
    fake.fail_sends("w1", 2, "server returned error 479")
    retried = _send(admin, "w1", _text(CAROL, "eventually"))
    other = _send(admin, "w2", _text(CAROL, "at once"))
    _wait_status(app, admin, "w2", other, "sent", timeout_s=10)
    assert _message(admin, "w1", retried)["status"] in ("queued", "sending")
    _wait_status(app, admin, "w1", retried, "sent", timeout_s=30)
    assert [s.message for s in fake.sent("w1") if s.to == CAROL_JID] == [
        {"conversation": "eventually"}
    ]  # the failed attempts were refused, the third went through once

    fake.fail_sends("w1", 1, "can't send message to invalid jid")
    refused = _send(admin, "w1", _text(CAROL, "never"))
    failed = _wait_status(app, admin, "w1", refused, "failed")
    assert "invalid jid" in failed["error"]
    _wait(
        lambda: [e for e in receiver.events("message.failed") if e["data"]["id"] == refused],
        20,
        "the message.failed webhook",
    )
    for account in ("w1", "w2"):
        assert _status(admin, account)["state"] == "connected"
    still = _send(admin, "w2", _text(CAROL, "still here"))
    _wait_status(app, admin, "w2", still, "sent")


def test_a_dropped_connection_is_resumed(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    after = _last_event_id(admin, "w1")
    hellos = len(fake.hellos("w1"))
    fake.drop("w1")  # whatsmeow reconnects by itself within the grace period
    _wait(lambda: len(fake.hellos("w1")) > hellos and fake.connected("w1"), 10, "a reconnect")
    time.sleep(1.5)  # longer than reconnect_grace_s: the engine stayed with its client
    assert _events(admin, "w1", "account.status", after=after) == []
    quick = _send(admin, "w1", _text(ALICE, "after a blip"))
    _wait_status(app, admin, "w1", quick, "sent")

    fake.drop("w1", refuse_for_s=3)  # longer than the grace: the engine reconnects
    _wait(
        lambda: [
            e
            for e in _events(admin, "w1", "account.status", after=after)
            if e["data"]["state"] == "disconnected"
        ],
        10,
        "the disconnect to be noticed",
        app,
    )
    _wait_state(app, admin, "w1", "connected", timeout_s=20)
    assert None not in fake.hellos("w1")[hellos:]  # always with the stored session
    states = [e["data"]["state"] for e in _events(admin, "w1", "account.status", after=after)]
    assert states[0] == "disconnected" and states[-1] == "connected", states
    assert "pairing" not in states
    later = _send(admin, "w1", _text(ALICE, "after an outage"))
    _wait_status(app, admin, "w1", later, "sent")


def test_an_idempotent_retry_reaches_whatsapp_once(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    body = _text(CAROL, "exactly once, please")
    headers = {"Idempotency-Key": f"web-{time.time_ns()}"}
    first = admin.post("/api/accounts/w1/messages", json=body, headers=headers)
    again = admin.post("/api/accounts/w1/messages", json=body, headers=headers)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    _wait_status(app, admin, "w1", first.json()["id"], "sent")
    time.sleep(0.5)
    assert [s.message for s in fake.sent("w1")].count({"conversation": body["text"]["body"]}) == 1


def test_a_worker_killed_during_the_hand_over_sends_again_and_loses_nothing(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    """kill -9 while WhatsApp has the message but has not answered. neonize 0.5.2 cannot
    send under our id, so the outcome is unknown and the message goes out again
    (runbook: the one case a recipient may get a message twice); it is never lost."""
    _linked(app, admin, fake, "w1", PHONE_1)
    text = f"in flight {time.time_ns()}"
    fake.delay_sends("w1", 30)
    try:
        message_id = _send(admin, "w1", _text(CAROL, text))
        _sent_where(fake, "w1", lambda s: s.message == {"conversation": text})
        assert _message(admin, "w1", message_id)["status"] == "sending"
        killed = app.pid_of("worker:worker")
        os.kill(killed, signal.SIGKILL)
    finally:
        fake.delay_sends("w1", 0)
    app.wait_running("worker:worker", replacing=killed)
    _wait_status(app, admin, "w1", message_id, "sent", timeout_s=30)
    copies = [s for s in fake.sent("w1") if s.message == {"conversation": text}]
    assert len(copies) == 2 and copies[0].id != copies[1].id
    assert "re-sending a message whose earlier attempt had no answer" in app.log_text("worker")


# -- restarts and logging out -----------------------------------------------------------------


def test_a_restarted_worker_resumes_without_a_qr_code_and_loses_nothing(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    _linked(app, admin, fake, "w2", PHONE_2)
    qr_codes = {a: fake.qr_count(a) for a in ("w1", "w2")}
    before = _send(admin, "w1", _text(ALICE, "before the restart"))
    _wait_status(app, admin, "w1", before, "sent")
    wa_before = _sent_where(
        fake, "w1", lambda s: s.message == {"conversation": "before the restart"}
    )

    app.ctl("restart", "worker", "--wait", "60")
    for account in ("w1", "w2"):
        _wait(lambda a=account: fake.connected(a), 20, f"{account} to reconnect", app)
        _wait_state(app, admin, account, "connected")
        assert fake.hellos(account)[-1] is not None  # the stored session, no new QR code
        assert fake.qr_count(account) == qr_codes[account]

    # While the worker is down, WhatsApp holds what comes in and the API takes sends.
    app.supervisor.stopProcess("worker:worker", True)
    try:
        _wait(lambda: not fake.connected("w1"), 10, "the client to go away")
        held = fake.push_text("w1", ALICE_JID, "while you were away")
        fake.receipt("w1", [wa_before.id], "read")
        queued = _send(admin, "w1", _text(ALICE, "queued while down"))
        assert _message(admin, "w1", queued)["status"] == "queued"
        assert fake.acked("w1", held) == 0
    finally:
        app.supervisor.startProcess("worker:worker", True)
    fake.wait_acked("w1", held)
    assert _message(admin, "w1", held)["content"]["text"]["body"] == "while you were away"
    _wait_status(app, admin, "w1", queued, "sent")
    # the id map survived: WhatsApp's id in the held receipt maps to the appliance's id
    _wait_status(app, admin, "w1", before, "read")
    assert fake.qr_count("w1") == qr_codes["w1"]


def test_logout_forgets_the_session_and_linking_again_needs_a_new_qr_code(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w2", PHONE_2)
    session = app.data / "sessions" / "w2"
    assert session.is_dir()
    logouts = fake.logouts("w2")
    answer = admin.post("/api/accounts/w2/logout")
    assert answer.status_code == 202, answer.text
    _wait_state(app, admin, "w2", "logged_out")
    assert not session.exists()
    assert fake.logouts("w2") == logouts + 1 and not fake.linked("w2")

    qr_codes = fake.qr_count("w2")
    assert admin.post("/api/accounts/w2/connect").status_code == 202
    fake.qr("w2", after=qr_codes)  # a new QR code: the old session is gone
    assert fake.hellos("w2")[-1] is None
    _wait_state(app, admin, "w2", "pairing")
    fake.scan("w2", phone=PHONE_2)
    _wait_state(app, admin, "w2", "connected")


def test_deleting_an_account_logs_its_device_out_at_whatsapp(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w9", "15550009999")
    session = app.data / "sessions" / "w9"
    assert session.is_dir()
    logouts = fake.logouts("w9")
    assert admin.delete("/api/accounts/w9", params={"confirm": "w9"}).status_code == 204
    # The phone does not keep a dead entry under "Linked devices".
    _wait(lambda: fake.logouts("w9") == logouts + 1, 20, "the device logged out at WhatsApp")
    assert not fake.linked("w9")
    _wait(lambda: not session.exists(), 20, "the session removed")


def test_the_phone_unlinking_the_device_logs_only_that_account_out(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    _linked(app, admin, fake, "w2", PHONE_2)
    fake.log_out("w2")
    status = _wait_state(app, admin, "w2", "logged_out")
    assert "link the phone again" in status["reason"]
    assert not (app.data / "sessions" / "w2").exists()
    assert _status(admin, "w1")["state"] == "connected"
    unaffected = _send(admin, "w1", _text(ALICE, "still linked"))
    _wait_status(app, admin, "w1", unaffected, "sent")


# -- inbound media, revokes, read receipts ---------------------------------------------------


def test_inbound_image_is_stored_and_a_revoke_flags_the_original(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    after = _last_event_id(admin, "w1")
    png = _png(3, 3)
    image_id = fake.push_image("w1", ALICE_JID, png, caption="a dot", push_name="Alice")
    fake.wait_acked("w1", image_id)
    stored = _message(admin, "w1", image_id)
    assert stored is not None and stored["type"] == "image"
    part = stored["content"]["image"]
    assert part["id"].startswith("med_"), part
    assert (part["caption"], part["mime_type"]) == ("a dot", "image/png")
    assert part["file_size"] == len(png)
    media = admin.get(f"/api/accounts/w1/media/{part['id']}")
    assert media.status_code == 200 and media.content == png
    assert media.headers["content-type"] == "image/png"

    # The media servers lost the file: the message is kept, with the reason.
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    gone = e2e.Message(
        imageMessage=e2e.ImageMessage(mimetype="image/jpeg", directPath="/v/t62/missing.enc")
    )
    lost = fake.push_message("w1", gone, chat=ALICE_JID)
    fake.wait_acked("w1", lost)
    kept = _message(admin, "w1", lost)
    assert kept is not None and "404" in kept["content"]["image"]["download_error"]
    assert "id" not in kept["content"]["image"]

    revoke = fake.push_revoke("w1", ALICE_JID, image_id, sender=ALICE_JID)
    fake.wait_acked("w1", revoke)
    deleted = _wait(
        lambda: (m := _message(admin, "w1", image_id)) and m["deleted_at"] and m,
        10,
        "the original to be flagged deleted",
    )
    assert deleted["content"]["image"]["caption"] == "a dot"  # content is kept
    assert _message(admin, "w1", revoke) is None  # the revoke is not a message of its own
    flagged = _events(admin, "w1", "message.deleted", after=after)
    assert [e["data"]["id"] for e in flagged] == [image_id]


def test_mark_as_read_tells_whatsapp_who_sent_what(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    created = admin.post(
        "/api/accounts",
        json={
            "id": "w3",
            "name": "w3",
            "engine": "web",
            "engine_settings": FAST,
            "settings": {"mark_as_read": True},
        },
    )
    assert created.status_code == 201, created.text
    fake.scan("w3", phone="15550003333")
    _wait_state(app, admin, "w3", "connected")
    direct = fake.push_text("w3", ALICE_JID, "read me")
    group = fake.push_text("w3", GROUP, "read me too", sender=BOB_JID)
    expected = {direct: (ALICE_JID, ALICE_JID), group: (GROUP, BOB_JID)}
    _wait(
        lambda: {i: (r.chat, r.sender) for r in fake.reads("w3") for i in r.ids} == expected,
        10,
        "read receipts naming each message's chat and sender",
        app,
    )


def test_the_watchdog_replaces_a_client_whose_connection_stopped_answering(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    from neonize.proto import Neonize_pb2 as ev

    _linked(app, admin, fake, "w3", "15550003333")
    after = _last_event_id(admin, "w3")
    hellos = len(fake.hellos("w3"))
    probes = fake.probes("w3")
    fake.hang_probes("w3")
    try:
        fake.push_event("w3", ev.KeepAliveTimeout(ErrorCount=1, LastSuccess=int(time.time())))
        _wait(lambda: fake.probes("w3") > probes, 5, "the watchdog's probe", app)
        _wait(lambda: len(fake.hellos("w3")) > hellos, 15, "a new client", app)
    finally:
        fake.hang_probes("w3", False)
    _wait_state(app, admin, "w3", "connected")
    reasons = [
        e["data"]["reason"] or ""
        for e in _events(admin, "w3", "account.status", after=after)
        if e["data"]["state"] == "disconnected"
    ]
    assert len(reasons) == 1 and "watchdog" in reasons[0] and "no answer" in reasons[0], reasons
    assert fake.hellos("w3")[-1] is not None
    back = _send(admin, "w3", _text(ALICE, "watched"))
    _wait_status(app, admin, "w3", back, "sent")


def test_a_device_unlinked_while_the_worker_was_down_is_logged_out_at_connect(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    _linked(app, admin, fake, "w1", PHONE_1)
    _linked(app, admin, fake, "w3", "15550003333")
    app.supervisor.stopProcess("worker:worker", True)
    try:
        fake.log_out("w3")  # the phone removed the linked device meanwhile
    finally:
        app.supervisor.startProcess("worker:worker", True)
    status = _wait_state(app, admin, "w3", "logged_out")
    assert "link the phone again" in status["reason"]
    assert fake.hellos("w3")[-1] is not None  # it tried with the stored session
    assert not (app.data / "sessions" / "w3").exists()
    _wait_state(app, admin, "w1", "connected")
    fine = _send(admin, "w1", _text(ALICE, "unaffected"))
    _wait_status(app, admin, "w1", fine, "sent")


def test_more_accounts_than_the_stock_thread_pool_all_keep_working(
    app: Appliance, admin: httpx.Client, fake: FakeWhatsAppServer
) -> None:
    """neonize holds a thread per connected client; the stock executor has CPUs + 4."""
    _linked(app, admin, fake, "w1", PHONE_1)
    many = [f"m{n}" for n in range(min(32, (os.cpu_count() or 1) + 4))]
    for account in many:
        created = admin.post(
            "/api/accounts",
            json={"id": account, "name": account, "engine": "web", "engine_settings": FAST},
        )
        assert created.status_code == 201, created.text
    try:
        for n, account in enumerate(many):
            fake.scan(account, phone=f"1555900{n:04d}")
        for account in many:
            _wait_state(app, admin, account, "connected")
        ids = {a: _send(admin, a, _text(ALICE, f"from {a}")) for a in [*many, "w1"]}
        for account, message_id in ids.items():
            _wait_status(app, admin, account, message_id, "sent")
    finally:
        for account in many:
            admin.delete(f"/api/accounts/{account}", params={"confirm": account})
