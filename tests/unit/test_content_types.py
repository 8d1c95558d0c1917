"""Message content as one class per type (appliance/messaging/models.py): what the API
validates flat becomes a typed content inside, and the JSON stays exactly as before
(stored content, MessageOut, the engines' input)."""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
import pytest

from appliance.engines.base import OutboundMessage
from appliance.messaging.models import (
    CONTENT,
    STORED_CONTENT,
    ImageContent,
    ReactionContent,
    ReceivedContent,
    SendMessageIn,
    TemplateContent,
    TextContent,
    content_dict,
)
from appliance.messaging.rows import MessageRow
from appliance.messaging.store import message_out

SENDS: list[dict[str, Any]] = [
    {"type": "text", "text": {"body": "hi"}},
    {"type": "text", "text": {"body": "re", "preview_url": True}, "context": {"message_id": "A1"}},
    {"type": "image", "image": {"link": "https://example.com/a.png", "caption": "a"}},
    {"type": "document", "document": {"id": "med_abcdefgh", "filename": "a.pdf"}},
    {"type": "audio", "audio": {"id": "med_abcdefgh"}},
    {"type": "video", "video": {"link": "http://example.com/v.mp4"}},
    {"type": "reaction", "reaction": {"message_id": "A1", "emoji": "👍"}},
    {
        "type": "template",
        "template": {"name": "hello", "language": {"code": "en_US"}, "components": [{"x": 1}]},
    },
]


def _flat_dump(send: SendMessageIn) -> dict[str, Any]:
    """How a send's content was stored before it was typed."""
    return send.model_dump(mode="json", exclude_none=True, exclude={"to", "messaging_product"})


@pytest.mark.parametrize("body", SENDS, ids=lambda b: str(b["type"]))
def test_typed_content_is_stored_byte_for_byte_as_the_flat_body_was(body: dict[str, Any]) -> None:
    send = SendMessageIn.model_validate({"to": "+905551112233", **body})
    typed = send.typed()
    assert typed.type == body["type"]
    assert type(typed).__name__.lower() == f"{body['type']}content"
    stored = orjson.dumps(typed.model_dump(mode="json", exclude_none=True))
    assert stored == orjson.dumps(_flat_dump(send))
    assert typed.body == send.body
    assert typed.media == send.media


def test_reply_target_is_the_quoted_or_the_reacted_message() -> None:
    reply = CONTENT.validate_python(SENDS[1])
    assert isinstance(reply, TextContent) and reply.reply_to == "A1"
    reaction = CONTENT.validate_python(
        {**SENDS[6], "context": {"message_id": "OTHER"}}  # a reaction's target wins
    )
    assert isinstance(reaction, ReactionContent) and reaction.reply_to == "A1"
    assert CONTENT.validate_python(SENDS[0]).reply_to is None


@pytest.mark.parametrize(
    "stored",
    [
        *SENDS,
        # What engines record for inbound messages: not a send type as sent, kept as is.
        {"type": "text", "text": {"body": "no preview_url key"}},
        {"type": "image", "image": {"id": "med_abcdefgh", "mime_type": "image/png", "sha256": "x"}},
        {"type": "location", "location": {"latitude": 1.5, "longitude": 2}},
        {"type": "unsupported", "unsupported": {"kind": "pollCreationMessage"}},
        {"type": "text", "text": {"body": ""}},
        {"type": "image", "image": {"download_error": "gone"}, "errors": [{"code": 1}]},
    ],
)
def test_stored_content_comes_back_exactly_as_stored(stored: dict[str, Any]) -> None:
    raw = orjson.dumps(stored)
    content = STORED_CONTENT.validate_json(raw)
    assert orjson.dumps(content_dict(content)) == raw


def test_only_send_types_as_sent_become_typed() -> None:
    assert isinstance(STORED_CONTENT.validate_python(SENDS[2]), ImageContent)
    received = STORED_CONTENT.validate_python({"type": "sticker", "sticker": {"id": "m"}})
    assert isinstance(received, ReceivedContent) and received.type == "sticker"
    with_extra = STORED_CONTENT.validate_python(
        {"type": "image", "image": {"id": "med_abcdefgh", "mime_type": "image/png"}}
    )
    assert isinstance(with_extra, ReceivedContent)


def _message_row(content: dict[str, Any]) -> MessageRow:
    columns = {
        "account_id": "a",
        "id": "M1",
        "chat_jid": "905551112233@s.whatsapp.net",
        "direction": "in",
        "sender_jid": None,
        "type": content["type"],
        "body": None,
        "content": orjson.dumps(content).decode(),
        "reply_to": None,
        "media_id": None,
        "status": "received",
        "error": None,
        "wa_timestamp": 1.0,
        "created_at": 2.0,
        "updated_at": 2.0,
        "deleted_at": None,
        "origin": None,
    }

    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row
    row = db.execute(
        "SELECT " + ", ".join(f":{name} AS {name}" for name in columns), columns
    ).fetchone()
    db.close()
    return MessageRow.from_row(row)


@pytest.mark.parametrize(
    "content",
    [SENDS[1], SENDS[7], {"type": "location", "location": {"latitude": 1.5, "longitude": 2}}],
    ids=["text", "template", "location"],
)
def test_message_out_content_on_the_wire_is_the_stored_json(content: dict[str, Any]) -> None:
    row = _message_row(content)
    out = message_out(row)
    wire = out.model_dump(mode="json", by_alias=True)
    assert orjson.dumps(wire["content"]) == orjson.dumps(content)
    assert orjson.loads(out.model_dump_json(by_alias=True))["content"] == content
    assert row["content"] == orjson.dumps(content).decode()  # the stored column, as read


def test_an_outbound_message_built_from_a_dict_is_typed() -> None:
    out = OutboundMessage(
        account_id="a", id="M1", to_jid="1@s.whatsapp.net", type="template", content=SENDS[7]
    )
    assert isinstance(out.content, TemplateContent)
    assert out.content.template.name == "hello"
    typed = CONTENT.validate_python(SENDS[0])
    same = OutboundMessage(
        account_id="a", id="M2", to_jid="1@s.whatsapp.net", type="text", content=typed
    )
    assert same.content is typed
