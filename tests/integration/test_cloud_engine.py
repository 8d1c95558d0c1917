"""The cloud engine against a fake Graph API and a fake Meta webhook sender, both on
127.0.0.1 in this test (threads), with the real installed appliance.

Nothing here connects to Meta: every Cloud API account's base_url is the fake, and
the appliance's own webhooks go to a receiver on 127.0.0.1 (OUTBOUND_ALLOW_NETWORKS),
which verifies every delivery with the ``standardwebhooks`` package.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.integration.conftest import Appliance, bearer, new_api_key, running_appliance
from tests.samples import png as _png

pytestmark = pytest.mark.integration

PHONE_ID = "106540352242922"
TOKEN = "EAAG-integration-token-0123456789"
APP_SECRET = "integration-app-secret"
VERIFY = "verify-token-42"
REFUSED_PHONE_ID = "401401"


class FakeGraph:
    """A minimal Graph API: phone number lookup, /messages with scripted errors, and
    media: the lookup ``GET /v21.0/{media_id}`` and the URL it names (``/media/{id}``)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.sent: list[dict[str, Any]] = []  # {"path", "auth", "json"}
        self.gets: list[dict[str, Any]] = []  # {"path", "query", "auth"}
        self.media: dict[str, bytes] = {}
        self.script: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.counter = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                path, _, query = self.path.partition("?")
                with fake.lock:
                    fake.gets.append({"path": path, "query": query, "auth": auth})
                if f"/{REFUSED_PHONE_ID}" in path or auth != f"Bearer {TOKEN}":
                    self._answer(
                        401,
                        {"error": {"message": "Invalid OAuth access token", "code": 190}},
                    )
                    return
                object_id = path.rpartition("/")[2]
                data = fake.media.get(object_id)
                if path.startswith("/media/") and data is not None:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif path.startswith("/v21.0/") and data is not None:
                    self._answer(
                        200,
                        {
                            "messaging_product": "whatsapp",
                            "url": f"{fake.url}/media/{object_id}?ext=1&hash=ATsq",
                            "mime_type": "image/png",
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "file_size": str(len(data)),
                            "id": object_id,
                        },
                    )
                elif path == f"/v21.0/{PHONE_ID}":
                    self._answer(
                        200,
                        {"display_phone_number": "+1 555-078-3881", "id": PHONE_ID},
                    )
                else:
                    error = {
                        "message": "Unsupported get request. Object does not exist",
                        "type": "GraphMethodException",
                        "code": 100,
                        "error_subcode": 33,
                    }
                    self._answer(404, {"error": error})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.sent.append(
                        {
                            "path": self.path,
                            "auth": self.headers.get("Authorization"),
                            "json": body,
                            "at": time.monotonic(),
                        }
                    )
                    queued = fake.script.get(body.get("to", ""), [])
                    answer = queued.pop(0) if queued else None
                    fake.counter += 1
                    wamid = f"wamid.FAKE{fake.counter:06d}"
                if answer is not None:
                    self._answer(*answer)
                    return
                self._answer(
                    200,
                    {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                        "messages": [{"id": wamid}],
                    },
                )

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def to(self, number: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.sent if s["json"].get("to") == number]

    def got(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [g for g in self.gets if g["path"] == path]


class FakeMeta:
    """Posts webhooks the way Meta does: signed with the app secret."""

    def __init__(self, app: Appliance, account: str) -> None:
        self.url = f"{app.base_url}/engines/cloud/{account}/webhook"

    def post(
        self, body: bytes, *, secret: str | None = APP_SECRET, signed_body: bytes | None = None
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            digest = hmac.new(secret.encode(), signed_body or body, hashlib.sha256).hexdigest()
            headers["X-Hub-Signature-256"] = f"sha256={digest}"
        return httpx.post(self.url, content=body, headers=headers, timeout=10)

    def post_many(self, body: bytes, times: int) -> list[int]:
        """The same delivery from several threads at once (Meta's retries)."""
        codes: list[int] = []
        lock = threading.Lock()

        def one() -> None:
            code = self.post(body).status_code
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=one) for _ in range(times)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        return codes


def envelope(value: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550783881",
                                    "phone_number_id": PHONE_ID,
                                },
                                **value,
                            },
                        }
                    ],
                }
            ],
        }
    ).encode()


def status_hook(wamid: str, status: str, **extra: Any) -> bytes:
    return envelope(
        {
            "statuses": [
                {
                    "id": wamid,
                    "status": status,
                    "timestamp": str(int(time.time())),
                    "recipient_id": "16505551234",
                    **extra,
                }
            ]
        }
    )


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _wait(predicate: Any, timeout_s: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _message(app: Appliance, account: str, message_id: str) -> sqlite3.Row | None:
    rows = _query(
        app, "SELECT * FROM messages WHERE account_id = ? AND id = ?", account, message_id
    )
    return rows[0] if rows else None


def _final(app: Appliance, account: str, message_id: str, timeout_s: float = 40) -> sqlite3.Row:
    def done() -> sqlite3.Row | None:
        row = _message(app, account, message_id)
        return row if row is not None and row["status"] in ("sent", "failed") else None

    return _wait(done, timeout_s, f"{message_id} sent or failed")


def _settings(graph: FakeGraph, phone_id: str = PHONE_ID) -> dict[str, Any]:
    return {
        "phone_number_id": phone_id,
        "access_token": TOKEN,
        "app_secret": APP_SECRET,
        "verify_token": VERIFY,
        "base_url": graph.url,
    }


@pytest.fixture(scope="module")
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


@pytest.fixture(scope="module")
def cloud_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    # The fake Graph and our webhook receiver; 127.0.0.2 (also loopback) stays refused.
    env = "OUTBOUND_ALLOW_NETWORKS=127.0.0.1/32\n"
    with running_appliance(tmp_path_factory, "cloud", env) as app:
        yield app


@pytest.fixture(scope="module")
def admin(cloud_app: Appliance, graph: FakeGraph) -> Iterator[httpx.Client]:
    with bearer(cloud_app, new_api_key(cloud_app, "cloud", "admin")) as c:
        created = c.post(
            "/api/accounts",
            json={
                "id": "cl",
                "name": "cloud",
                "engine": "cloud",
                "engine_settings": _settings(graph),
            },
        )
        assert created.status_code == 201, created.text
        _wait(
            lambda: (
                _query(cloud_app, "SELECT state FROM accounts WHERE id = 'cl'")[0]["state"]
                == "connected"
            ),
            30,
            "cloud account connected",
        )
        yield c


def test_account_settings_are_masked(cloud_app: Appliance, admin: httpx.Client) -> None:
    answer = admin.get("/api/accounts/cl")
    assert answer.status_code == 200
    assert TOKEN not in answer.text and APP_SECRET not in answer.text
    settings = answer.json()["engine_settings"]
    assert settings["access_token"].startswith("****")
    assert settings["api_version"] == "v21.0"
    stored = _query(cloud_app, "SELECT engine_settings FROM accounts WHERE id = 'cl'")[0][0]
    assert TOKEN not in stored and APP_SECRET not in stored
    status = admin.get("/api/accounts/cl/status").json()
    assert status["state"] == "connected" and status["phone"] == "+15550783881"
    spec = httpx.get(f"{cloud_app.base_url}/openapi.json", timeout=10).json()
    assert "/engines/cloud/{account}/webhook" in spec["paths"]
    assert set(spec["paths"]["/engines/cloud/{account}/webhook"]) >= {"get", "post"}


def test_verification_handshake(cloud_app: Appliance, admin: httpx.Client) -> None:
    url = f"{cloud_app.base_url}/engines/cloud/cl/webhook"
    ok = httpx.get(
        url,
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"},
    )
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert ok.headers["content-type"].startswith("text/plain")
    wrong = httpx.get(
        url, params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"}
    )
    assert wrong.status_code == 403 and "error" in wrong.json() and "requestId" in wrong.json()
    mode = httpx.get(
        url, params={"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"}
    )
    assert mode.status_code == 403
    unknown = httpx.get(
        f"{cloud_app.base_url}/engines/cloud/nope/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
    )
    # An unknown account answers exactly as a wrong token: existence is not revealed.
    assert unknown.status_code == 403
    assert {k: v for k, v in unknown.json().items() if k != "requestId"} == {
        k: v for k, v in wrong.json().items() if k != "requestId"
    }


def _inbound(wamid: str, text: str) -> bytes:
    return envelope(
        {
            "contacts": [{"profile": {"name": "Sheena"}, "wa_id": "16505551234"}],
            "messages": [
                {
                    "from": "16505551234",
                    "id": wamid,
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
    )


def test_signature_refusals(cloud_app: Appliance, admin: httpx.Client) -> None:
    meta = FakeMeta(cloud_app, "cl")
    body = _inbound("wamid.SIGREFUSED1", "should not be stored")
    missing = meta.post(body, secret=None)
    assert missing.status_code == 401 and "error" in missing.json()
    wrong = meta.post(body, secret="not-the-secret")
    assert wrong.status_code == 403 and "error" in wrong.json()
    changed = meta.post(body, signed_body=body.replace(b"stored", b"Stored"))
    assert changed.status_code == 403
    time.sleep(1.0)
    assert _message(cloud_app, "cl", "wamid.SIGREFUSED1") is None
    assert _query(cloud_app, "SELECT count(*) FROM cloud_inbox")[0][0] == 0


def test_inbound_is_stored_once(cloud_app: Appliance, admin: httpx.Client) -> None:
    meta = FakeMeta(cloud_app, "cl")
    body = _inbound("wamid.DEDUPE1", "hello appliance")
    assert meta.post_many(body, 4) == [200] * 4
    row = _wait(lambda: _message(cloud_app, "cl", "wamid.DEDUPE1"), 15, "inbound stored")
    assert row["body"] == "hello appliance" and row["direction"] == "in"
    assert row["chat_jid"] == "16505551234@s.whatsapp.net"
    _wait(
        lambda: _query(cloud_app, "SELECT count(*) FROM cloud_inbox")[0][0] == 0,
        15,
        "inbox drained",
    )
    # Meta retries later too: still one message and one event.
    assert meta.post(body).status_code == 200
    _wait(
        lambda: _query(cloud_app, "SELECT count(*) FROM cloud_inbox")[0][0] == 0,
        15,
        "inbox drained",
    )
    events = _query(
        cloud_app,
        "SELECT count(*) FROM events WHERE type = 'message.received' AND data LIKE ?",
        '%"wamid.DEDUPE1"%',
    )
    assert events[0][0] == 1
    count = _query(cloud_app, "SELECT count(*) FROM messages WHERE id = 'wamid.DEDUPE1'")
    assert count[0][0] == 1


def test_send_text_and_status_webhooks(
    cloud_app: Appliance, admin: httpx.Client, graph: FakeGraph
) -> None:
    sent = admin.post(
        "/api/accounts/cl/messages",
        json={"to": "+16505551234", "type": "text", "text": {"body": "hi from the appliance"}},
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]
    assert _final(cloud_app, "cl", message_id)["status"] == "sent"
    (request,) = graph.to("16505551234")
    assert request["path"] == f"/v21.0/{PHONE_ID}/messages"
    assert request["auth"] == f"Bearer {TOKEN}"
    body = request["json"]
    assert body["messaging_product"] == "whatsapp" and body["to"] == "16505551234"
    assert body["type"] == "text" and body["text"]["body"] == "hi from the appliance"
    wamid = _query(cloud_app, "SELECT wamid FROM cloud_wamids WHERE message_id = ?", message_id)[0][
        0
    ]
    assert wamid.startswith("wamid.FAKE")
    meta = FakeMeta(cloud_app, "cl")
    assert meta.post(status_hook(wamid, "sent")).status_code == 200
    assert meta.post_many(status_hook(wamid, "delivered"), 2) == [200, 200]
    _wait(lambda: _message(cloud_app, "cl", message_id)["status"] == "delivered", 15, "delivered")
    assert meta.post(status_hook(wamid, "read")).status_code == 200
    _wait(lambda: _message(cloud_app, "cl", message_id)["status"] == "read", 15, "read")
    types = [
        r[0]
        for r in _query(
            cloud_app,
            "SELECT type FROM events WHERE data LIKE ? ORDER BY id",
            f'%"id":"{message_id}"%',
        )
    ]
    assert types == ["message.sent", "message.delivered", "message.read"]
    # A reply in the chat points at our message id.
    reply = envelope(
        {
            "messages": [
                {
                    "from": "16505551234",
                    "id": "wamid.REPLY1",
                    "timestamp": str(int(time.time())),
                    "type": "text",
                    "text": {"body": "got it"},
                    "context": {"from": "15550783881", "id": wamid},
                }
            ]
        }
    )
    assert meta.post(reply).status_code == 200
    row = _wait(lambda: _message(cloud_app, "cl", "wamid.REPLY1"), 15, "reply stored")
    assert row["reply_to"] == message_id


def _graph_error(code: int, title: str) -> dict[str, Any]:
    return {"error": {"message": f"(#{code}) {title}", "type": "OAuthException", "code": code}}


# number -> (scripted answers before success, expected final status, text in the error)
CASES: dict[str, tuple[list[tuple[int, dict[str, Any]]], str, str | None]] = {
    "15550000001": ([(400, _graph_error(131047, "Re-engagement message"))], "failed", "131047"),
    "15550000002": ([(400, _graph_error(131026, "Message undeliverable"))], "failed", "131026"),
    "15550000003": ([(400, _graph_error(130429, "Rate limit hit"))], "sent", None),
    "15550000004": ([(400, _graph_error(131056, "Pair rate limit hit"))], "sent", None),
    "15550000005": ([(500, _graph_error(131000, "Something went wrong"))], "sent", None),
    "15550000006": ([(503, _graph_error(131016, "Service unavailable"))], "sent", None),
    "15550000007": ([(502, {"error": {"message": "bad gateway"}})] * 2, "sent", None),
    "15550000008": ([(400, _graph_error(100, "Invalid parameter"))], "failed", "100"),
}


def test_error_codes_end_in_the_documented_state(
    cloud_app: Appliance, admin: httpx.Client, graph: FakeGraph
) -> None:
    ids: dict[str, str] = {}
    for number, (answers, _, _) in CASES.items():
        with graph.lock:
            graph.script[number] = list(answers)
        sent = admin.post(
            "/api/accounts/cl/messages",
            json={"to": f"+{number}", "type": "text", "text": {"body": f"to {number}"}},
        )
        assert sent.status_code == 202, sent.text
        ids[number] = sent.json()["id"]
    for number, (answers, expected, reason) in CASES.items():
        row = _final(cloud_app, "cl", ids[number], timeout_s=60)
        assert row["status"] == expected, (number, row["status"], row["error"])
        attempts = graph.to(number)
        if expected == "failed":
            assert reason is not None and reason in row["error"]
            assert len(attempts) == 1  # permanent: not retried
        else:
            assert len(attempts) == len(answers) + 1
    assert "template" in _message(cloud_app, "cl", ids["15550000001"])["error"]
    # Throughput and pair-rate waits follow the mapped delays.
    pair = graph.to("15550000004")
    assert pair[1]["at"] - pair[0]["at"] >= 5.5
    throughput = graph.to("15550000003")
    assert throughput[1]["at"] - throughput[0]["at"] >= 1.5


def test_failed_status_webhook_after_send(
    cloud_app: Appliance, admin: httpx.Client, graph: FakeGraph
) -> None:
    sent = admin.post(
        "/api/accounts/cl/messages",
        json={"to": "+15550000020", "type": "text", "text": {"body": "later failure"}},
    )
    message_id = sent.json()["id"]
    assert _final(cloud_app, "cl", message_id)["status"] == "sent"
    wamid = _query(cloud_app, "SELECT wamid FROM cloud_wamids WHERE message_id = ?", message_id)[0][
        0
    ]
    error = {
        "code": 131026,
        "title": "Message undeliverable",
        "error_data": {"details": "Message Undeliverable."},
    }
    hook = status_hook(wamid, "failed", errors=[error])
    assert FakeMeta(cloud_app, "cl").post(hook).status_code == 200
    row = _wait(
        lambda: (
            (r := _message(cloud_app, "cl", message_id)) is not None
            and r["status"] == "failed"
            and r
        ),
        15,
        "failed by webhook",
    )
    assert "131026" in row["error"]
    events = _query(
        cloud_app,
        "SELECT count(*) FROM events WHERE type = 'message.failed' AND data LIKE ?",
        f'%"id":"{message_id}"%',
    )
    assert events[0][0] == 1


def test_refused_token_is_logged_out(
    cloud_app: Appliance, admin: httpx.Client, graph: FakeGraph
) -> None:
    created = admin.post(
        "/api/accounts",
        json={
            "id": "cl401",
            "name": "refused",
            "engine": "cloud",
            "engine_settings": _settings(graph, REFUSED_PHONE_ID),
        },
    )
    assert created.status_code == 201, created.text

    def logged_out() -> dict[str, Any] | None:
        status = admin.get("/api/accounts/cl401/status").json()
        return status if status["state"] == "logged_out" else None

    status = _wait(logged_out, 20, "logged_out")
    assert "access token" in status["reason"]


# -- inbound media ---------------------------------------------------------------------------


PNG = _png()


def _image(wamid: str, media_id: str, caption: str) -> dict[str, Any]:
    return {
        "from": "16505551234",
        "id": wamid,
        "timestamp": str(int(time.time())),
        "type": "image",
        "image": {
            "caption": caption,
            "mime_type": "image/png",
            "sha256": base64.b64encode(hashlib.sha256(PNG).digest()).decode(),
            "id": media_id,
        },
    }


def _inbox_drained(app: Appliance) -> None:
    _wait(lambda: _query(app, "SELECT count(*) FROM cloud_inbox")[0][0] == 0, 20, "inbox drained")


def test_inbound_image_is_downloaded_and_served(
    cloud_app: Appliance, admin: httpx.Client, graph: FakeGraph
) -> None:
    graph.media["880001"] = PNG
    body = envelope(
        {
            "contacts": [{"profile": {"name": "Sheena"}, "wa_id": "16505551234"}],
            "messages": [
                _image("wamid.IMG1", "880001", "a red square"),
                _image("wamid.IMG404", "880404", "gone at Graph"),  # lookup answers 404
            ],
        }
    )
    meta = FakeMeta(cloud_app, "cl")
    assert meta.post(body).status_code == 200
    row = _wait(lambda: _message(cloud_app, "cl", "wamid.IMG1"), 20, "image stored")
    assert row["body"] == "a red square" and row["type"] == "image"
    # Fetched the documented way, with the token, once.
    (lookup,) = graph.got("/v21.0/880001")
    assert lookup["auth"] == f"Bearer {TOKEN}" and f"phone_number_id={PHONE_ID}" in lookup["query"]
    (fetch,) = graph.got("/media/880001")
    assert fetch["auth"] == f"Bearer {TOKEN}" and fetch["query"] == "ext=1&hash=ATsq"
    # A failed download keeps the message, with a reason and no secret.
    failed = _wait(lambda: _message(cloud_app, "cl", "wamid.IMG404"), 20, "failed image stored")
    failed_part = json.loads(failed["content"])["image"]
    assert failed_part["download_error"].startswith("media lookup failed"), failed_part
    assert "100" in failed_part["download_error"] and failed_part["id"] == "880404"
    assert TOKEN not in failed["content"] and failed["body"] == "gone at Graph"
    # Meta retries the post: stored once, not downloaded again.
    assert meta.post(body).status_code == 200
    _inbox_drained(cloud_app)
    assert len(graph.got("/v21.0/880001")) == 1 and len(graph.got("/media/880001")) == 1
    # The worker stores the bytes and points the part at our media id, keeping Graph's.
    part = json.loads(row["content"])["image"]
    assert str(part.get("id", "")).startswith("med_"), (
        "the worker's commit_inbound stores InboundMessage.media and rewrites the part "
        f"(id -> med_..., engine_media_id); stored part: {part}"
    )
    assert part["engine_media_id"] == "880001" and "download_error" not in part
    assert part["mime_type"] == "image/png"
    served = admin.get(f"/api/accounts/cl/media/{part['id']}")
    assert served.status_code == 200, served.text
    assert served.content == PNG
    assert served.headers["content-type"] == "image/png"
    shown = admin.get("/api/accounts/cl/messages/wamid.IMG1")
    assert shown.status_code == 200 and shown.json()["content"]["image"]["id"] == part["id"]


# -- the appliance's own webhooks for a cloud account ---------------------------------------


class HookReceiver:
    """Receives the appliance's webhooks on 127.0.0.1 and verifies each one with the
    ``standardwebhooks`` package against the endpoint's secret."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secret: str | None = None
        self.envelopes: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.unverified = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    if receiver.secret is None:
                        raise WebhookVerificationError("no secret yet")
                    Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver.lock:
                    if verified:
                        receiver.envelopes.append(json.loads(body))
                        receiver.headers.append(headers)
                    else:
                        receiver.unverified += 1
                self.send_response(200 if verified else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def seen(self) -> dict[tuple[str, str], set[int]]:
        """(type, message id) -> the event ids delivered for it."""
        out: dict[tuple[str, str], set[int]] = {}
        with self.lock:
            for e in self.envelopes:
                out.setdefault((e["type"], e["data"].get("id", "")), set()).add(e["id"])
        return out


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    hooks = HookReceiver()
    hooks.thread.start()
    try:
        yield hooks
    finally:
        hooks.server.shutdown()
        hooks.server.server_close()
        hooks.thread.join(timeout=10)


def test_appliance_webhooks_for_a_cloud_account(
    cloud_app: Appliance, admin: httpx.Client, graph: FakeGraph, receiver: HookReceiver
) -> None:
    types = ["message.received", "message.sent", "message.delivered", "message.read"]
    created = admin.post(
        "/api/webhooks", json={"url": receiver.url, "events": types, "accounts": ["cl"]}
    )
    assert created.status_code == 201, created.text
    receiver.secret = created.json()["secret"]
    try:
        meta = FakeMeta(cloud_app, "cl")
        assert meta.post(_inbound("wamid.HOOKIN1", "hello hooks")).status_code == 200
        sent = admin.post(
            "/api/accounts/cl/messages",
            json={"to": "+15550000040", "type": "text", "text": {"body": "hooked"}},
        )
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["id"]
        assert _final(cloud_app, "cl", message_id)["status"] == "sent"
        wamid = _query(cloud_app, "SELECT wamid FROM cloud_wamids WHERE message_id = ?", message_id)
        for status in ("sent", "delivered", "read"):
            assert meta.post(status_hook(wamid[0][0], status)).status_code == 200
        wanted = {
            ("message.received", "wamid.HOOKIN1"),
            ("message.sent", message_id),
            ("message.delivered", message_id),
            ("message.read", message_id),
        }
        _wait(lambda: wanted <= set(receiver.seen()), 30, f"webhooks {sorted(wanted)}")
        time.sleep(0.5)  # a duplicate event, if any, would arrive by now
        seen = receiver.seen()
        assert all(len(seen[key]) == 1 for key in wanted), seen  # one event each
        assert receiver.unverified == 0
        with receiver.lock:
            envelopes = list(zip(receiver.envelopes, receiver.headers, strict=True))
        for envelope_, headers in envelopes:
            assert set(envelope_) == {"id", "type", "account_id", "created_at", "data"}
            assert envelope_["account_id"] == "cl" and envelope_["type"] in types
            assert headers["webhook-id"] == str(envelope_["id"])
        by_type = {e["type"]: e for e, _ in envelopes if e["data"].get("id") == message_id}
        for kind in ("sent", "delivered", "read"):
            assert by_type[f"message.{kind}"]["data"]["status"] == kind
        received = next(e for e, _ in envelopes if e["data"].get("id") == "wamid.HOOKIN1")
        assert received["data"]["content"]["text"]["body"] == "hello hooks"
        assert TOKEN not in json.dumps([e for e, _ in envelopes])
    finally:
        admin.delete(f"/api/webhooks/{created.json()['id']}")


# -- Idempotency-Key ---------------------------------------------------------------------------


def test_idempotent_send_reaches_graph_once(
    cloud_app: Appliance, admin: httpx.Client, graph: FakeGraph
) -> None:
    number = "15550000050"
    body = {"to": f"+{number}", "type": "text", "text": {"body": "exactly once"}}
    headers = {"Idempotency-Key": "cloud-once-0001"}
    first = admin.post("/api/accounts/cl/messages", json=body, headers=headers)
    second = admin.post("/api/accounts/cl/messages", json=body, headers=headers)
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json()["id"] == second.json()["id"]
    message_id = first.json()["id"]
    assert _final(cloud_app, "cl", message_id)["status"] == "sent"
    # The same key again after the send: still the one message.
    third = admin.post("/api/accounts/cl/messages", json=body, headers=headers)
    assert third.status_code == 202 and third.json()["id"] == message_id
    time.sleep(1.0)  # a second send, if any, would reach the fake by now
    assert len(graph.to(number)) == 1
    count = _query(
        cloud_app,
        "SELECT count(*) FROM messages WHERE account_id = 'cl' AND direction = 'out' "
        "AND body = 'exactly once'",
    )
    assert count[0][0] == 1


# -- base_url and the SSRF guard ---------------------------------------------------------------


def test_worker_never_calls_a_graph_url_outside_the_allowlist(
    cloud_app: Appliance, admin: httpx.Client, graph: FakeGraph
) -> None:
    """A cloud account whose base_url is a non-public address outside
    OUTBOUND_ALLOW_NETWORKS (127.0.0.2: loopback, but only 127.0.0.1/32 is allowed)
    fails to connect with the reason, and the server there never gets a request."""
    elsewhere = FakeGraph("127.0.0.2")
    elsewhere.thread.start()
    try:
        created = admin.post(
            "/api/accounts",
            json={
                "id": "cx",
                "name": "outside",
                "engine": "cloud",
                "engine_settings": {**_settings(graph), "base_url": elsewhere.url},
            },
        )
        assert created.status_code == 201, created.text

        def failed() -> sqlite3.Row | None:
            row = _query(cloud_app, "SELECT state, state_reason FROM accounts WHERE id = 'cx'")[0]
            return row if row["state"] == "failed" else None

        row = _wait(failed, 30, "the account outside the allowlist failing")
        assert "refused" in row["state_reason"] and "OUTBOUND_ALLOW_NETWORKS" in row["state_reason"]
        assert TOKEN not in row["state_reason"]
        # A manager cannot move the working account there either.
        with bearer(cloud_app, new_api_key(cloud_app, "cloud-manager", "manager", "cl")) as m:
            shown = m.get("/api/accounts/cl").json()["engine_settings"]
            moved = m.patch(
                "/api/accounts/cl", json={"engine_settings": {**shown, "base_url": elsewhere.url}}
            )
            assert moved.status_code == 403, moved.text
        assert admin.get("/api/accounts/cl").json()["engine_settings"]["base_url"] == graph.url
        time.sleep(1.0)  # a reconnect attempt, if any, would have reached the fake by now
        with elsewhere.lock:
            assert elsewhere.gets == [] and elsewhere.sent == []
    finally:
        admin.delete("/api/accounts/cx", params={"confirm": "cx"})
        elsewhere.server.shutdown()
        elsewhere.server.server_close()
