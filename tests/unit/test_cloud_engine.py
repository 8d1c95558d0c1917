"""The cloud engine's pure parts, and the engine against an in-process fake Graph API.

The signature check is cross-checked against pywa's validator (a third-party
implementation of Meta's X-Hub-Signature-256 check). No network: the engine talks to
an ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from pywa.utils import webhook_updates_validator

from appliance.crypto import DataCipher
from appliance.engines.base import InboundMessage, OutboundMessage, SendError
from appliance.engines.cloud import (
    ERROR_CLASSES,
    MASK,
    CloudConfig,
    CloudEngine,
    check_signature,
    parse_webhook,
    send_error_for,
    signature_for,
    store_settings,
)
from appliance.messaging import store
from tests.samples import png as _png

PHONE_ID = "106540352242922"


async def _resolve(host: str, port: int) -> list[str]:
    """Names in these tests, never asked of DNS. lookaside.example stands for Meta's
    CDN (a public address; the mock transport answers, nothing is sent)."""
    table = {"lookaside.example": ["157.240.1.1"], "internal.example": ["10.1.2.3"]}
    if host not in table:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return table[host]


# The fake Graph is on 127.0.0.1, which the SSRF guard only reaches when allowlisted.
GUARD: dict[str, Any] = {
    "allowed_networks": [ipaddress.ip_network("127.0.0.1/32")],
    "resolver": _resolve,
}
CIPHER = DataCipher(b"unit-test-data-key")
RAW_SETTINGS = {
    "phone_number_id": PHONE_ID,
    "access_token": "EAAG-test-access-token-0123456789",
    "app_secret": "test-app-secret-abcdef",
    "verify_token": "verify-me",
    "base_url": "http://127.0.0.1:9",
}


def _envelope(value: dict[str, Any]) -> dict[str, Any]:
    """The documented webhook body around one ``changes[].value``."""
    return {
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


def _contacts(name: str = "Sheena Nelson", wa_id: str = "16505551234") -> list[dict[str, Any]]:
    return [{"profile": {"name": name}, "wa_id": wa_id}]


# -- signatures ----------------------------------------------------------------------------


def test_signature_agrees_with_pywa() -> None:
    for i in range(50):
        secret = os.urandom(16).hex()
        body = os.urandom(i * 7) + b'{"object":"whatsapp_business_account"}'
        header = signature_for(secret, body)
        assert header == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert webhook_updates_validator(secret, body, header) is True
        assert check_signature(secret, body, header) == "ok"
        changed = body + b" "
        assert webhook_updates_validator(secret, changed, header) is False
        assert check_signature(secret, changed, header) == "mismatch"
        wrong = signature_for("other-secret", body)
        assert webhook_updates_validator(secret, body, wrong) is False
        assert check_signature(secret, body, wrong) == "mismatch"


def test_signature_missing_or_malformed() -> None:
    assert check_signature("s", b"{}", None) == "missing"
    assert check_signature("s", b"{}", "") == "missing"
    digest = hmac.new(b"s", b"{}", hashlib.sha256).hexdigest()
    assert check_signature("s", b"{}", digest) == "mismatch"  # no "sha256=" prefix
    assert check_signature("s", b"{}", "sha1=" + digest) == "mismatch"
    assert check_signature("s", b"{}", "sha256=" + digest.upper()) == "ok"  # hex case


# -- settings --------------------------------------------------------------------------------


def test_settings_are_stored_encrypted_and_shown_masked() -> None:
    stored = store_settings(RAW_SETTINGS, CIPHER)
    dumped = orjson.dumps(stored)
    assert RAW_SETTINGS["access_token"].encode() not in dumped
    assert RAW_SETTINGS["app_secret"].encode() not in dumped
    assert stored["access_token"].startswith(MASK) and stored["app_secret"].startswith(MASK)
    assert stored["api_version"] == "v21.0"
    config = CloudConfig.load(stored, CIPHER)
    assert config.access_token == RAW_SETTINGS["access_token"]
    assert config.app_secret == RAW_SETTINGS["app_secret"]
    assert config.url(PHONE_ID, "messages") == f"http://127.0.0.1:9/v21.0/{PHONE_ID}/messages"
    # Sending the stored (masked) settings back keeps the secrets.
    again = store_settings(stored, CIPHER)
    assert CloudConfig.load(again, CIPHER).access_token == RAW_SETTINGS["access_token"]
    # A new token replaces the old one.
    renewed = store_settings({**stored, "access_token": "EAAG-new-token-999999999"}, CIPHER)
    assert CloudConfig.load(renewed, CIPHER).access_token == "EAAG-new-token-999999999"
    # Another appliance's ciphertext is refused.
    with pytest.raises(ValueError, match="access_token_enc"):
        store_settings(stored, DataCipher(b"another-key"))


def test_settings_validation() -> None:
    for missing in ("phone_number_id", "access_token", "app_secret", "verify_token"):
        with pytest.raises(ValidationError):
            store_settings({k: v for k, v in RAW_SETTINGS.items() if k != missing}, CIPHER)
    with pytest.raises(ValidationError):
        store_settings({**RAW_SETTINGS, "base_url": "ftp://x"}, CIPHER)
    with pytest.raises(ValidationError):
        store_settings({**RAW_SETTINGS, "unknown": 1}, CIPHER)
    with pytest.raises(ValidationError):
        store_settings({**RAW_SETTINGS, "api_version": "21"}, CIPHER)


# -- payload mapping -----------------------------------------------------------------------


def test_text_message_mapping() -> None:
    body = _envelope(
        {
            "contacts": _contacts(),
            "messages": [
                {
                    "from": "16505551234",
                    "id": "wamid.HBgLMTY1MDUwNzY1MjAVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA",
                    "timestamp": "1749416383",
                    "type": "text",
                    "text": {"body": "Does it come in another color?"},
                }
            ],
        }
    )
    messages, statuses = parse_webhook(body, PHONE_ID)
    assert statuses == []
    (m,) = messages
    assert m.id.startswith("wamid.")
    assert m.chat_jid == m.sender_jid == "16505551234@s.whatsapp.net"
    assert m.type == "text" and m.body == "Does it come in another color?"
    assert m.sender_name == "Sheena Nelson"
    assert m.timestamp == 1749416383.0
    assert m.content == {"type": "text", "text": {"body": "Does it come in another color?"}}
    assert m.reply_to is None


def test_image_reply_and_reaction_mapping() -> None:
    body = _envelope(
        {
            "contacts": _contacts(),
            "messages": [
                {
                    "from": "16505551234",
                    "id": "wamid.IMG1",
                    "timestamp": "1749416383",
                    "type": "image",
                    "context": {"from": "15550783881", "id": "wamid.OURS1"},
                    "image": {
                        "caption": "this one",
                        "mime_type": "image/jpeg",
                        "sha256": "Ddl4T2e0pZ6i/ZJp9p+0Q+9qYDrpNGX4U9Jxgkx1Vxk=",
                        "id": "1003383421387256",
                    },
                },
                {
                    "from": "16505551234",
                    "id": "wamid.REACT1",
                    "timestamp": "1749416390",
                    "type": "reaction",
                    "reaction": {"message_id": "wamid.OURS1", "emoji": "\U0001f44d"},
                },
                {
                    "from": "16505551234",
                    "id": "wamid.DOC1",
                    "timestamp": "1749416391",
                    "type": "document",
                    "document": {
                        "filename": "terms.pdf",
                        "mime_type": "application/pdf",
                        "id": "2003383421387256",
                    },
                },
            ],
        }
    )
    image, reaction, document = parse_webhook(body, PHONE_ID)[0]
    assert image.type == "image" and image.body == "this one"
    assert image.content["image"]["id"] == "1003383421387256"
    assert image.content["context"] == {"message_id": "wamid.OURS1"}
    assert image.reply_to == "wamid.OURS1"
    assert reaction.type == "reaction" and reaction.reply_to == "wamid.OURS1"
    assert reaction.content["reaction"]["emoji"] == "\U0001f44d"
    assert document.body is None and document.content["document"]["filename"] == "terms.pdf"


def test_status_mapping() -> None:
    def status(value: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": "wamid.OUT1",
            "status": value,
            "timestamp": "1750263773",
            "recipient_id": "16505551234",
            **extra,
        }

    failed_error = {
        "code": 131047,
        "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {"details": "Message failed to send because more than 24 hours have passed"},
    }
    body = _envelope(
        {
            "statuses": [
                status("sent", biz_opaque_callback_data="msg_ours"),
                status("delivered"),
                status("read"),
                status("failed", errors=[failed_error]),
            ]
        }
    )
    messages, statuses = parse_webhook(body, PHONE_ID)
    assert messages == []
    assert [s.status for s in statuses] == ["sent", "delivered", "read", "failed"]
    assert all(s.wamid == "wamid.OUT1" for s in statuses)
    assert statuses[0].our_id == "msg_ours"
    assert statuses[3].error is not None and statuses[3].error.startswith("131047: Re-engagement")
    assert "24 hours" in statuses[3].error


def test_other_phone_number_is_skipped() -> None:
    body = _envelope({"statuses": [{"id": "wamid.X", "status": "read"}]})
    assert parse_webhook(body, "999")[1] == []
    assert len(parse_webhook(body, PHONE_ID)[1]) == 1


# -- error codes -----------------------------------------------------------------------------


async def _cloud_account(conn: Any, *, outbound_id: str | None = None) -> None:
    """Account c1 on the cloud engine, with one queued text to 16505551234 if asked."""
    await store.create_account(
        conn,
        account_id="c1",
        name="c1",
        engine="cloud",
        engine_settings=store_settings(RAW_SETTINGS, CIPHER),
        settings={},
        now=1.0,
    )
    if outbound_id is not None:
        await store.insert_outbound(
            conn,
            account_id="c1",
            message_id=outbound_id,
            chat_jid="16505551234@s.whatsapp.net",
            type_="text",
            body="hi",
            content={"type": "text", "text": {"body": "hi"}},
            reply_to=None,
            media_id=None,
            client_key=None,
            now=1.0,
        )


def _graph_error(code: int, message: str = "x") -> dict[str, Any]:
    return {"error": {"message": message, "type": "OAuthException", "code": code}}


@pytest.mark.parametrize(
    ("status", "code", "permanent", "retry_min"),
    [
        (400, 130429, False, 1.0),
        (400, 131056, False, 6.0),
        (400, 131047, True, None),
        (400, 131026, True, None),
        (500, 131000, False, None),
        (503, 131016, False, None),
        (400, 80007, False, 30.0),
        (400, 4, False, 30.0),
        (400, 100, True, None),  # invalid parameter: other 4xx
        (404, 0, True, None),
        (500, 1, False, None),
        (502, 0, False, None),
        (401, 190, False, None),
    ],
)
def test_error_code_classes(
    status: int, code: int, permanent: bool, retry_min: float | None
) -> None:
    error = send_error_for(status, _graph_error(code, f"(#{code}) boom"))
    assert error.permanent is permanent
    if retry_min is None:
        assert error.retry_after_s is None
    else:
        assert error.retry_after_s is not None and error.retry_after_s >= retry_min
    assert str(code) in error.reason or code == 0


def test_error_without_json_body() -> None:
    assert send_error_for(502, None).permanent is False
    assert send_error_for(400, "<html>").permanent is True
    assert 131047 in ERROR_CLASSES and "template" in ERROR_CLASSES[131047][2]


# -- the engine against an in-process fake Graph ----------------------------------------------


class FakeHost:
    def __init__(self, db: Any, account_id: str) -> None:
        self.db = db
        self.account_id = account_id
        self.settings: dict[str, Any] = {}  # the account's settings (download_media)
        self.receipts: list[tuple[str, str]] = []
        self.inbound: list[Any] = []
        self.batches: list[list[Any]] = []  # every on_inbound call, as given

    async def on_state(self, state: str, **_: Any) -> None:
        pass

    async def on_inbound(self, messages: list[Any]) -> list[bool]:
        self.batches.append(list(messages))
        new = []
        async with self.db.write() as conn:
            for m in messages:
                stored = await store.insert_inbound(
                    conn,
                    account_id=self.account_id,
                    message_id=m.id,
                    chat_jid=m.chat_jid,
                    sender_jid=m.sender_jid,
                    sender_name=m.sender_name,
                    type_=m.type,
                    body=m.body,
                    content=m.content,
                    reply_to=m.reply_to,
                    media_id=None,
                    wa_timestamp=m.timestamp,
                    now=time.time(),
                )
                new.append(stored is not None)
        self.inbound.extend(m for m, n in zip(messages, new, strict=True) if n)
        return new

    async def on_receipt(self, message_id: str, status: str) -> None:
        self.receipts.append((message_id, status))
        async with self.db.write() as conn:
            await store.set_message_status(conn, self.account_id, message_id, status, now=1.0)

    async def save_engine_state(self, state: dict[str, Any]) -> None:
        pass


def test_engine_send_status_and_inbox(open_db: Any, db_path: Path) -> None:
    import httpx

    requests: list[httpx.Request] = []
    answers: list[httpx.Response] = []

    def graph(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "GET":
            return httpx.Response(200, json={"display_phone_number": "+1 555-078-3881"})
        if answers:
            return answers.pop(0)
        return httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": "16505551234", "wa_id": "16505551234"}],
                "messages": [{"id": f"wamid.OUT{len(requests)}"}],
            },
        )

    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await _cloud_account(conn, outbound_id="msg_1")
            row = await store.account_row(db, "c1")
            host = FakeHost(db, "c1")
            engine = CloudEngine(
                "c1",
                orjson.loads(row["engine_settings"]),
                {},
                host,
                db=db,
                cipher=CIPHER,
                transport=httpx.MockTransport(graph),
                **GUARD,
            )
            assert await engine.connect() == "+15550783881"
            assert requests[0].headers["Authorization"] == f"Bearer {RAW_SETTINGS['access_token']}"
            out = OutboundMessage(
                account_id="c1",
                id="msg_1",
                to_jid="16505551234@s.whatsapp.net",
                type="text",
                content={"type": "text", "text": {"body": "hi"}},
            )
            await engine.send(out)
            sent = orjson.loads(requests[1].content)
            assert requests[1].url.path == f"/v21.0/{PHONE_ID}/messages"
            assert sent == {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "16505551234",
                "type": "text",
                "text": {"body": "hi", "preview_url": False},
                "biz_opaque_callback_data": "msg_1",
            }
            await engine.send(out)  # a retry after Graph accepted it: not sent again
            assert len(requests) == 2
            # A reply points at Graph's id of our message.
            answers.append(httpx.Response(400, json=_graph_error(131047)))
            reply = OutboundMessage(
                account_id="c1",
                id="msg_2",
                to_jid="16505551234@s.whatsapp.net",
                type="text",
                content={
                    "type": "text",
                    "text": {"body": "re"},
                    "context": {"message_id": "msg_1"},
                },
            )
            with pytest.raises(SendError) as refused:
                await engine.send(reply)
            assert refused.value.permanent and "131047" in refused.value.reason
            assert orjson.loads(requests[2].content)["context"] == {"message_id": "wamid.OUT2"}
            # Status webhooks (twice, as Meta retries) and an inbound reply.
            hook = _envelope(
                {
                    "statuses": [
                        {"id": "wamid.OUT2", "status": "delivered", "timestamp": "1"},
                        {"id": "wamid.OUT2", "status": "read", "timestamp": "2"},
                    ],
                    "contacts": _contacts(),
                    "messages": [
                        {
                            "from": "16505551234",
                            "id": "wamid.IN1",
                            "timestamp": "3",
                            "type": "text",
                            "text": {"body": "thanks"},
                            "context": {"from": "15550783881", "id": "wamid.OUT2"},
                        }
                    ],
                }
            )
            async with db.write() as conn:
                for _ in range(2):
                    await conn.execute(
                        "INSERT INTO cloud_inbox (account_id, payload, received_at) "
                        "VALUES ('c1', ?, 0)",
                        (orjson.dumps(hook),),
                    )
            assert await engine.process_inbox() == 2
            assert await engine.process_inbox() == 0
            assert len(host.inbound) == 1 and host.inbound[0].reply_to == "msg_1"
            assert (await store.message_row(db, "c1", "msg_1"))["status"] == "read"
            count = await db.scalar("SELECT count(*) FROM messages WHERE id = 'wamid.IN1'")
            assert count == 1
            await engine.close()

    asyncio.run(body())


def test_timeouts_and_pair_rate_are_transient(open_db: Any, db_path: Path) -> None:
    import httpx

    calls: list[str] = []

    def graph(request: httpx.Request) -> httpx.Response:
        to = orjson.loads(request.content)["to"]
        calls.append(to)
        if to == "1":
            raise httpx.ReadTimeout("slow", request=request)
        if to == "2":
            return httpx.Response(400, json=_graph_error(131056, "pair rate"))
        return httpx.Response(502, text="bad gateway")

    async def body() -> None:
        async with open_db(db_path) as db:
            engine = CloudEngine(
                "c1",
                store_settings(RAW_SETTINGS, CIPHER),
                {},
                FakeHost(db, "c1"),
                db=db,
                cipher=CIPHER,
                transport=httpx.MockTransport(graph),
                **GUARD,
            )

            def out(number: str, message_id: str) -> OutboundMessage:
                return OutboundMessage(
                    account_id="c1",
                    id=message_id,
                    to_jid=f"{number}@s.whatsapp.net",
                    type="text",
                    content={"type": "text", "text": {"body": "x"}},
                )

            for number, message_id in (("1", "m1"), ("2", "m2"), ("3", "m3")):
                with pytest.raises(SendError) as failed:
                    await engine.send(out(number, message_id))
                assert failed.value.permanent is False
            # The pair-rate block holds further sends to that recipient without calling Graph.
            with pytest.raises(SendError) as held:
                await engine.send(out("2", "m4"))
            assert held.value.retry_after_s is not None and 0 < held.value.retry_after_s <= 6
            assert calls == ["1", "2", "3"]
            group = OutboundMessage(
                account_id="c1",
                id="m5",
                to_jid="120363025246125244@g.us",
                type="text",
                content={"type": "text", "text": {"body": "x"}},
            )
            with pytest.raises(SendError) as refused:
                await engine.send(group)
            assert refused.value.permanent is True
            await engine.close()

    asyncio.run(body())


# -- inbound media ---------------------------------------------------------------------------


PNG = _png()
TOKEN = RAW_SETTINGS["access_token"]


class MediaGraph:
    """Graph's media lookup (``GET /v21.0/{media_id}``) and the media URL it names
    (``/media/{media_id}`` on the same fake host), with per-id overrides."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.meta: dict[str, dict[str, Any]] = {}  # media id -> lookup fields to change
        self.answers: dict[str, Any] = {}  # media id -> the media URL's answer
        self.requests: list[Any] = []
        self.delay_s = 0.0
        self.inflight = 0
        self.max_inflight = 0
        self.cut_off = 0  # media downloads cancelled while the server still delayed

    def add(self, media_id: str, data: bytes, **meta: Any) -> None:
        self.files[media_id] = data
        self.meta[media_id] = meta

    async def __call__(self, request: Any) -> Any:
        import httpx

        self.requests.append(request)
        path = request.url.path
        if path.startswith("/v21.0/"):
            media_id = path.removeprefix("/v21.0/")
            if media_id not in self.files:
                error = {
                    "message": "Unsupported get request. Object with ID does not exist",
                    "type": "GraphMethodException",
                    "code": 100,
                    "error_subcode": 33,
                }
                return httpx.Response(404, json={"error": error})
            data = self.files[media_id]
            answer = {
                "messaging_product": "whatsapp",
                "url": f"http://127.0.0.1:9/media/{media_id}?ext=1&hash=ATs",
                "mime_type": "image/png",
                "sha256": hashlib.sha256(data).hexdigest(),
                "file_size": str(len(data)),
                "id": media_id,
            }
            answer.update(self.meta[media_id])
            return httpx.Response(200, json={k: v for k, v in answer.items() if v is not None})
        if path.startswith("/media/"):
            media_id = path.removeprefix("/media/")
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                await asyncio.sleep(self.delay_s)
            except asyncio.CancelledError:
                self.cut_off += 1
                raise
            finally:
                self.inflight -= 1
            if media_id in self.answers:
                return self.answers[media_id]
            return httpx.Response(200, content=self.files[media_id])
        return httpx.Response(500)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


def _media_message(wamid: str, media_id: str, type_: str = "image", **part: Any) -> dict:
    return {
        "from": "16505551234",
        "id": wamid,
        "timestamp": "1749416383",
        "type": type_,
        type_: {"id": media_id, "mime_type": "image/png", **part},
    }


def _text_message(wamid: str, text: str) -> dict:
    return {
        "from": "16505551234",
        "id": wamid,
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": text},
    }


def _run_inbox(
    open_db: Any,
    db_path: Path,
    graph: MediaGraph,
    posts: list[list[dict[str, Any]]],
    *,
    settings: dict[str, Any] | None = None,
    account_settings: dict[str, Any] | None = None,
    media_max_bytes: int = 16 * 1024 * 1024,
) -> FakeHost:
    """Each post in ``posts`` (a list of messages) is one cloud_inbox row; the inbox is
    processed once per row, in order. Returns the host with what it was given."""
    import httpx

    result: list[FakeHost] = []

    async def body() -> None:
        async with open_db(db_path) as db:
            stored = store_settings({**RAW_SETTINGS, **(settings or {})}, CIPHER)
            async with db.write() as conn:
                await store.create_account(
                    conn,
                    account_id="c1",
                    name="c1",
                    engine="cloud",
                    engine_settings=stored,
                    settings={},
                    now=1.0,
                )
            host = FakeHost(db, "c1")
            host.settings = dict(account_settings or {})
            engine = CloudEngine(
                "c1",
                stored,
                {},
                host,
                db=db,
                cipher=CIPHER,
                transport=httpx.MockTransport(graph),
                **GUARD,
                media_max_bytes=media_max_bytes,
            )
            for messages in posts:
                hook = _envelope({"contacts": _contacts(), "messages": messages})
                async with db.write() as conn:
                    await conn.execute(
                        "INSERT INTO cloud_inbox (account_id, payload, received_at) "
                        "VALUES ('c1', ?, 0)",
                        (orjson.dumps(hook),),
                    )
                assert await engine.process_inbox() == 1
            await engine.close()
            result.append(host)

    asyncio.run(body())
    return result[0]


def _given(host: FakeHost) -> dict[str, Any]:
    """Message id -> the InboundMessage the host was given first."""
    out: dict[str, Any] = {}
    for batch in host.batches:
        for m in batch:
            out.setdefault(m.id, m)
    return out


def test_inbound_media_is_downloaded(open_db: Any, db_path: Path) -> None:
    graph = MediaGraph()
    webp = b"RIFF\x1a\x00\x00\x00WEBPVP8L" + bytes(14)
    graph.add("1001", PNG)
    graph.add("1002", webp, mime_type="image/webp")
    graph.add("1003", b"%PDF-1.4\n%%EOF\n", mime_type="application/pdf", sha256=None)
    sha_b64 = base64.b64encode(hashlib.sha256(PNG).digest()).decode()
    host = _run_inbox(
        open_db,
        db_path,
        graph,
        [
            [
                _text_message("wamid.T1", "before"),
                _media_message("wamid.I1", "1001", caption="look", sha256=sha_b64),
                _media_message("wamid.S1", "1002", "sticker", animated=False),
                _media_message("wamid.D1", "1003", "document", filename="terms.pdf"),
                _text_message("wamid.T2", "after"),
            ]
        ],
    )
    given = _given(host)
    assert [m.id for b in host.batches for m in b] == [
        "wamid.T1",
        "wamid.I1",
        "wamid.S1",
        "wamid.D1",
        "wamid.T2",
    ]  # order kept
    image, sticker, document = given["wamid.I1"], given["wamid.S1"], given["wamid.D1"]
    assert image.media == ("image/png", PNG)
    assert image.body == "look" and image.content["image"]["id"] == "1001"
    assert "download_error" not in image.content["image"]
    assert sticker.media == ("image/webp", webp)
    assert document.media == ("application/pdf", b"%PDF-1.4\n%%EOF\n")
    assert given["wamid.T1"].media is None and given["wamid.T2"].media is None
    lookup = graph.requests[0]
    assert lookup.method == "GET" and lookup.url.path == "/v21.0/1001"
    assert lookup.url.params["phone_number_id"] == PHONE_ID
    assert lookup.headers["Authorization"] == f"Bearer {TOKEN}"
    fetches = [r for r in graph.requests if r.url.path.startswith("/media/")]
    assert len(fetches) == 3
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in fetches)
    assert {r.url.params["hash"] for r in fetches} == {"ATs"}  # the URL as given


def test_sha256_mismatch_keeps_the_message(open_db: Any, db_path: Path) -> None:
    graph = MediaGraph()
    graph.add("2001", PNG, sha256=hashlib.sha256(b"other").hexdigest())
    graph.add("2002", PNG, sha256=None)  # only the webhook's (base64) sha256 is checked
    wrong_b64 = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    host = _run_inbox(
        open_db,
        db_path,
        graph,
        [
            [
                _media_message("wamid.M1", "2001"),
                _media_message("wamid.M2", "2002", sha256=wrong_b64),
            ]
        ],
    )
    for wamid, media_id in (("wamid.M1", "2001"), ("wamid.M2", "2002")):
        message = _given(host)[wamid]
        assert message.media is None
        assert "sha256 mismatch" in message.content["image"]["download_error"]
        assert message.content["image"]["id"] == media_id
    assert {m.id for m in host.inbound} == {"wamid.M1", "wamid.M2"}  # stored anyway


def test_too_large_media_is_refused(open_db: Any, db_path: Path) -> None:
    import httpx

    graph = MediaGraph()
    big = PNG + bytes(5000)
    graph.add("3001", big)  # the lookup says it is too large: the bytes are not fetched
    graph.add("3002", big, file_size="100")  # the lookup understates it
    graph.add("3003", big, file_size=None)
    graph.answers["3003"] = httpx.Response(200, content=big, headers={"Content-Length": "100"})
    graph.add("3004", PNG, file_size=None)  # just under the limit
    host = _run_inbox(
        open_db,
        db_path,
        graph,
        [[_media_message(f"wamid.L{n}", f"300{n}") for n in (1, 2, 3, 4)]],
        media_max_bytes=1024,
    )
    given = _given(host)
    for n in (1, 2, 3):
        error = given[f"wamid.L{n}"].content["image"]["download_error"]
        assert error.startswith("media too large") and "1024" in error, error
        assert given[f"wamid.L{n}"].media is None
    assert given["wamid.L4"].media == ("image/png", PNG)
    assert "/media/3001" not in graph.paths()


def test_graph_404_and_refused_urls(open_db: Any, db_path: Path, caplog: Any) -> None:
    import httpx

    graph = MediaGraph()
    graph.add("4002", PNG)
    graph.answers["4002"] = httpx.Response(302, headers={"Location": "http://10.0.0.1/x"})
    graph.add("4003", PNG, url="http://192.0.2.7/media/4003")  # not https, another host
    graph.add("4004", PNG)
    graph.answers["4004"] = httpx.Response(500, text="oops")
    graph.add("4005", PNG, url="https://lookaside.example/media/4005")
    graph.add("4006", PNG, url=None)
    with caplog.at_level("DEBUG"):
        host = _run_inbox(
            open_db,
            db_path,
            graph,
            [[_media_message(f"wamid.E{n}", f"400{n}") for n in range(1, 7)]],
        )
    given = _given(host)
    errors = {n: given[f"wamid.E{n}"].content["image"].get("download_error") for n in range(1, 7)}
    assert errors[1].startswith("media lookup failed") and "100" in errors[1]
    assert "redirect" in errors[2] and "not followed" in errors[2]
    assert errors[3].startswith("media URL refused")
    assert errors[4] == "media download failed: HTTP 500"
    assert errors[6] == "media lookup answered no URL"
    # https to another host is allowed (Meta's CDN): the fake transport answers it.
    assert errors[5] is None and given["wamid.E5"].media == ("image/png", PNG)
    assert all(given[f"wamid.E{n}"].media is None for n in (1, 2, 3, 4, 6))
    # Requests go to the checked address, named in the Host header.
    hosts = {(r.url.host, r.headers["Host"]) for r in graph.requests}
    assert hosts == {("127.0.0.1", "127.0.0.1:9"), ("157.240.1.1", "lookaside.example")}
    assert TOKEN not in repr(errors) and TOKEN not in caplog.text
    assert len(host.inbound) == 6


def test_download_timeout(open_db: Any, db_path: Path, monkeypatch: Any) -> None:
    import appliance.engines.cloud.inbox as cloud

    monkeypatch.setattr(cloud, "MEDIA_TIMEOUT_S", 0.2)
    graph = MediaGraph()
    graph.add("5001", PNG)
    graph.delay_s = 30.0
    host = _run_inbox(open_db, db_path, graph, [[_media_message("wamid.SLOW", "5001")]])
    # The download was cut off while the server still delayed, not waited out: no
    # wall-clock bound (the machine may be busy), the cancellation is what counts.
    assert graph.cut_off == 1
    error = _given(host)["wamid.SLOW"].content["image"]["download_error"]
    assert error == "download timed out after 0.2s"


@pytest.mark.parametrize(
    ("engine_override", "account_setting", "downloads"),
    [(False, None, False), (None, False, False), (True, False, True), (None, None, True)],
)
def test_download_media_setting(
    open_db: Any,
    db_path: Path,
    engine_override: bool | None,
    account_setting: bool | None,
    downloads: bool,
) -> None:
    graph = MediaGraph()
    graph.add("6001", PNG)
    host = _run_inbox(
        open_db,
        db_path,
        graph,
        [[_media_message("wamid.SET", "6001")]],
        settings={} if engine_override is None else {"download_media": engine_override},
        account_settings={} if account_setting is None else {"download_media": account_setting},
    )
    message = _given(host)["wamid.SET"]
    if downloads:
        assert message.media == ("image/png", PNG) and len(graph.requests) == 2
    else:
        assert graph.requests == []  # no request at all
        assert message.media is None and "download_error" not in message.content["image"]


def test_download_media_setting_is_validated() -> None:
    assert store_settings(RAW_SETTINGS, CIPHER)["download_media"] is None
    stored = store_settings({**RAW_SETTINGS, "download_media": False}, CIPHER)
    assert CloudConfig.load(stored, CIPHER).download_media is False
    with pytest.raises(ValidationError):
        store_settings({**RAW_SETTINGS, "download_media": "sometimes"}, CIPHER)


def test_downloads_are_bounded_and_not_repeated(open_db: Any, db_path: Path) -> None:
    graph = MediaGraph()
    graph.delay_s = 0.05
    for n in range(10):
        graph.add(f"70{n:02d}", PNG + bytes([n]))
    first = [_media_message(f"wamid.B{n}", f"70{n:02d}") for n in range(10)]
    # Meta's retry of B0 in the same post, and later a retry of the whole post.
    host = _run_inbox(open_db, db_path, graph, [[*first, first[0]], first])
    fetched = [p for p in graph.paths() if p.startswith("/media/")]
    assert sorted(fetched) == sorted(f"/media/70{n:02d}" for n in range(10))  # once each
    assert 1 < graph.max_inflight <= 4
    assert all(sum(m.media is not None for m in b) <= 4 for b in host.batches)
    given = _given(host)
    assert all(given[f"wamid.B{n}"].media == ("image/png", PNG + bytes([n])) for n in range(10))
    assert len(host.inbound) == 10


def test_translate_keeps_every_field(open_db: Any, db_path: Path) -> None:
    import httpx

    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await _cloud_account(conn)
                await conn.execute(
                    "INSERT INTO cloud_wamids (account_id, wamid, message_id, created_at) "
                    "VALUES ('c1', 'wamid.OURS', 'msg_ours', 0)"
                )
            engine = CloudEngine(
                "c1",
                store_settings(RAW_SETTINGS, CIPHER),
                {},
                FakeHost(db, "c1"),
                db=db,
                cipher=CIPHER,
                transport=httpx.MockTransport(lambda r: httpx.Response(500)),
                **GUARD,
            )
            message = InboundMessage(
                id="wamid.IN",
                chat_jid="1@s.whatsapp.net",
                sender_jid="1@s.whatsapp.net",
                type="image",
                content={"type": "image", "image": {"id": "1"}},
                body="cap",
                sender_name="S",
                reply_to="wamid.OURS",
                timestamp=5.0,
                media=("image/png", PNG),
                received_at=7.0,
            )
            translated = await engine.inbox.translate(message)
            assert translated == dataclasses.replace(message, reply_to="msg_ours")
            assert translated.media == ("image/png", PNG) and translated.received_at == 7.0
            await engine.close()

    asyncio.run(body())


def test_a_status_webhook_records_the_wamid_of_a_send(open_db: Any, db_path: Path) -> None:
    """The worker died after Graph accepted msg_9 and before send() recorded the wamid:
    the status webhook (biz_opaque_callback_data) records it, so the retry is not sent."""
    import httpx

    posts: list[Any] = []

    def graph(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(200, json={"messages": [{"id": "wamid.AGAIN"}]})

    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await _cloud_account(conn, outbound_id="msg_9")
                statuses = [
                    {"id": "wamid.X9", "status": "sent", "biz_opaque_callback_data": "msg_9"},
                    {"id": "wamid.NOPE", "status": "sent", "biz_opaque_callback_data": "msg_x"},
                ]
                await conn.execute(
                    "INSERT INTO cloud_inbox (account_id, payload, received_at) "
                    "VALUES ('c1', ?, 0)",
                    (orjson.dumps(_envelope({"statuses": statuses})),),
                )
            host = FakeHost(db, "c1")
            engine = CloudEngine(
                "c1",
                store_settings(RAW_SETTINGS, CIPHER),
                {},
                host,
                db=db,
                cipher=CIPHER,
                transport=httpx.MockTransport(graph),
                **GUARD,
            )
            assert await engine.process_inbox() == 1
            rows = await db.fetchall("SELECT wamid, message_id FROM cloud_wamids")
            assert [(r["wamid"], r["message_id"]) for r in rows] == [("wamid.X9", "msg_9")]
            assert ("msg_9", "sent") in host.receipts
            retry = OutboundMessage(
                account_id="c1",
                id="msg_9",
                to_jid="16505551234@s.whatsapp.net",
                type="text",
                content={"type": "text", "text": {"body": "hi"}},
            )
            await engine.send(retry)
            assert posts == []  # not sent twice
            await engine.close()

    asyncio.run(body())


# -- the SSRF guard on every request -------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "allowed"),
    [
        ("http://10.0.0.5:8080", []),  # a private address
        ("http://127.0.0.1:9", []),  # loopback, not allowlisted
        ("http://169.254.169.254", ["169.254.0.0/16"]),  # metadata needs an exact entry
        ("https://internal.example", ["127.0.0.1/32"]),  # a name resolving to 10.1.2.3
    ],
)
def test_engine_never_calls_a_refused_address(
    open_db: Any, db_path: Path, base_url: str, allowed: list[str], caplog: Any
) -> None:
    import httpx

    reached: list[httpx.Request] = []

    def graph(request: httpx.Request) -> httpx.Response:
        reached.append(request)
        return httpx.Response(200, json={"display_phone_number": "+1 555", "id": "1"})

    async def body() -> None:
        async with open_db(db_path) as db:
            settings = store_settings({**RAW_SETTINGS, "base_url": base_url}, CIPHER)
            async with db.write() as conn:
                await store.create_account(
                    conn,
                    account_id="c1",
                    name="c1",
                    engine="cloud",
                    engine_settings=settings,
                    settings={},
                    now=1.0,
                )
            host = FakeHost(db, "c1")
            engine = CloudEngine(
                "c1",
                settings,
                {},
                host,
                db=db,
                cipher=CIPHER,
                transport=httpx.MockTransport(graph),
                allowed_networks=[ipaddress.ip_network(n) for n in allowed],
                resolver=_resolve,
            )
            with pytest.raises(ConnectionError) as refused:
                await engine.connect()
            assert "refused" in str(refused.value)
            assert "OUTBOUND_ALLOW_NETWORKS" in str(refused.value)
            out = OutboundMessage(
                account_id="c1",
                id="msg_1",
                to_jid="16505551234@s.whatsapp.net",
                type="text",
                content={"type": "text", "text": {"body": "hi"}},
            )
            with pytest.raises(SendError) as failed:
                await engine.send(out)
            assert failed.value.permanent and "refused" in failed.value.reason
            await engine.mark_read("16505551234@s.whatsapp.net", ["wamid.X"])
            hook = _envelope({"contacts": _contacts(), "messages": [_media_message("w1", "77")]})
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO cloud_inbox (account_id, payload, received_at) "
                    "VALUES ('c1', ?, 0)",
                    (orjson.dumps(hook),),
                )
            assert await engine.process_inbox() == 1
            error = host.inbound[0].content["image"]["download_error"]
            assert error.startswith("media lookup refused") and TOKEN not in error
            await engine.close()

    asyncio.run(body())
    assert reached == []  # not one request, so the token went nowhere
    assert TOKEN not in caplog.text


def test_media_url_on_a_refused_address_is_not_fetched(open_db: Any, db_path: Path) -> None:
    graph = MediaGraph()
    graph.add("6001", PNG, url="https://internal.example/media/6001")  # resolves to 10.1.2.3
    graph.add("6002", PNG, url="https://10.9.9.9/media/6002")
    graph.add("6003", PNG, url="https://lookaside.example/media/6003")
    host = _run_inbox(
        open_db, db_path, graph, [[_media_message(f"wamid.R{n}", f"600{n}") for n in (1, 2, 3)]]
    )
    given = _given(host)
    for n in (1, 2):
        error = given[f"wamid.R{n}"].content["image"]["download_error"]
        assert error.startswith("media URL refused") and "OUTBOUND_ALLOW_NETWORKS" in error
        assert given[f"wamid.R{n}"].media is None
    assert given["wamid.R3"].media == ("image/png", PNG)
    fetched = [r.headers["Host"] for r in graph.requests if r.url.path.startswith("/media/")]
    assert fetched == ["lookaside.example"]


# -- the engine's seams: errors, host, store --------------------------------------------------


def test_engine_errors_join_the_hierarchy() -> None:
    from appliance.engines.base import LoggedOut
    from appliance.engines.cloud import GraphRefused, MediaDownloadError
    from appliance.errors import ApplianceError, EngineError

    for cls in (SendError, LoggedOut, MediaDownloadError, GraphRefused):
        assert issubclass(cls, EngineError) and issubclass(cls, ApplianceError)
    refused = send_error_for(401, _graph_error(190))
    assert isinstance(refused, GraphRefused) and isinstance(refused, SendError)
    assert refused.token_refused and not refused.pair_rate_limited
    assert send_error_for(400, _graph_error(131056)).pair_rate_limited
    assert not send_error_for(502, None).token_refused


class FailureHost(FakeHost):
    def __init__(self, db: Any, account_id: str) -> None:
        super().__init__(db, account_id)
        self.failures: list[tuple[str, str]] = []

    async def on_delivery_failed(self, message_id: str, reason: str) -> None:
        self.failures.append((message_id, reason))


def test_a_failed_status_is_reported_to_the_host(open_db: Any, db_path: Path) -> None:
    """The engine writes no message state itself: a failure WhatsApp reports after the
    send goes to EngineHost.on_delivery_failed."""
    import httpx

    error = {"code": 131047, "title": "Re-engagement message"}
    statuses = [
        {"id": "wamid.F1", "status": "failed", "errors": [error], "biz_opaque_callback_data": "m"},
        {"id": "wamid.F1", "status": "failed"},  # no reason given
    ]

    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await _cloud_account(conn, outbound_id="m")
                await store.set_message_status(conn, "c1", "m", "sent", now=2.0)
                await conn.execute(
                    "INSERT INTO cloud_inbox (account_id, payload, received_at) "
                    "VALUES ('c1', ?, 0)",
                    (orjson.dumps(_envelope({"statuses": statuses})),),
                )
            host = FailureHost(db, "c1")
            engine = CloudEngine(
                "c1",
                store_settings(RAW_SETTINGS, CIPHER),
                {},
                host,
                db=db,
                cipher=CIPHER,
                transport=httpx.MockTransport(lambda r: httpx.Response(500)),
                **GUARD,
            )
            assert await engine.process_inbox() == 1
            assert host.failures == [
                ("m", "131047: Re-engagement message"),
                ("m", "failed (no reason given)"),
            ]
            assert (await store.message_row(db, "c1", "m"))["status"] == "sent"
            await engine.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    ("status", "fails"),
    [("queued", True), ("sent", True), ("delivered", True), ("read", False), ("failed", False)],
)
def test_report_failure(open_db: Any, db_path: Path, status: str, fails: bool) -> None:
    """A failure reported after the send fails the message from any state but read and
    failed, with one message.failed event."""

    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await _cloud_account(conn, outbound_id="m")
                if status != "queued":
                    await store.set_message_status(conn, "c1", "m", "sending", now=2.0)
                    await store.set_message_status(conn, "c1", "m", status, now=2.0)
            before = await db.scalar("SELECT COALESCE(MAX(id), 0) FROM events")
            async with db.write() as conn:
                changed = await store.report_failure(
                    conn, "c1", "m", "WhatsApp reported: 131026: gone", now=3.0
                )
            assert changed is fails
            row = await store.message_row(db, "c1", "m")
            failed = await db.fetchall("SELECT type FROM events WHERE id > ?", (before,))
            if fails:
                assert row["status"] == "failed"
                assert row["error"] == "WhatsApp reported: 131026: gone"
                assert [r["type"] for r in failed] == ["message.failed"]
            else:
                assert row["status"] == status and [r["type"] for r in failed] == []

    asyncio.run(body())
