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
import shutil
import struct
import subprocess
import threading
import time
import zlib
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
    run_install,
)

pytestmark = pytest.mark.integration

FAKES = Path(__file__).resolve().parents[1] / "fakes"
ENV = (
    "API_PROCESSES=2\n"
    "ENABLE_TEST_ROUTES=true\n"
    "API_GRACEFUL_TIMEOUT_S=10\n"
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


def _png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# -- installation -----------------------------------------------------------------------------


@contextlib.contextmanager
def web_appliance(factory: pytest.TempPathFactory, fake: FakeWhatsAppServer) -> Iterator[Appliance]:
    """Like conftest's running_appliance, plus, before the first start, the ``.pth``
    that lets the worker import ``fake_whatsapp`` and the fake's address."""
    prefix = Path(factory.mktemp("web"))
    try:
        port = free_port()
        run_install(prefix, "--port", str(port), "--no-start")
        with (prefix / "etc/appliance/appliance.env").open("a") as fh:
            fh.write(ENV)
        site = next((prefix / "opt/appliance/venv/lib").glob("python3*/site-packages"))
        (site / "appliance_test_fakes.pth").write_text(f"{FAKES}\n")
        app = Appliance(prefix, port)
        with pytest.MonkeyPatch.context() as env:
            # appliancectl hands APPLIANCE_* variables on to supervisord and the worker.
            env.setenv("APPLIANCE_FAKE_WHATSAPP_ADDR", fake.address)
            app.ctl("start", "--wait", "60")
        app.wait_ready()
        yield app
    finally:
        subprocess.run(
            [str(prefix / "opt/appliance/venv/bin/appliancectl"), "--prefix", str(prefix), "stop"],
            capture_output=True,
            timeout=120,
        )
        if os.environ.get("KEEP_APPLIANCE") is None:
            shutil.rmtree(prefix, ignore_errors=True)


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
    assert (session / "session.db").is_file() and (session / "ids.db").is_file()
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
