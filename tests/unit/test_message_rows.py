"""The typed rows of appliance/messaging/rows.py: one builder for every row type."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from appliance.messaging.rows import AccountRow, ChatRow, EventRow, MessageRow


def _row(**columns: Any) -> sqlite3.Row:
    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row
    sql = "SELECT " + ", ".join(f":{name} AS {name}" for name in columns)
    row = db.execute(sql, columns).fetchone()
    db.close()
    assert isinstance(row, sqlite3.Row)
    return row


CHAT = {
    "account_id": "a1",
    "jid": "1@s.whatsapp.net",
    "name": None,
    "is_group": 0,
    "archived": 1,
    "unread_count": 2,
    "last_message_id": None,
    "last_message_at": None,
    "created_at": 1.0,
    "status": "open",
    "snoozed_until": None,
    "assignee_id": None,
    "opened_at": None,
    "waiting_since": None,
    "first_response_at": None,
    "resolved_at": None,
    "pinned": 1,
    "muted_until": None,
}


def test_flags_become_booleans_and_the_stored_row_stays_readable() -> None:
    chat = ChatRow.from_row(_row(**CHAT))
    assert (chat.is_group, chat.archived, chat.pinned) == (False, True, True)
    assert chat.status == "open" and chat.unread_count == 2
    assert chat["archived"] == 1  # the column as stored


def test_a_column_the_select_did_not_name_is_a_key_error() -> None:
    without_pinned = {k: v for k, v in CHAT.items() if k != "pinned"}  # has a default
    with pytest.raises(IndexError):  # sqlite3.Row's answer to an unknown name
        _row(**without_pinned)["pinned"]
    with pytest.raises(KeyError, match="pinned"):
        ChatRow.from_row(_row(**without_pinned))


def test_json_columns_are_parsed_and_renamed_columns_found() -> None:
    account = AccountRow.from_row(
        _row(
            id="a1",
            name="A",
            engine="sandbox",
            engine_settings='{"x": 1}',
            settings="{}",
            desired="running",
            state="connected",
            state_reason=None,
            phone=None,
            engine_state='{"s": [1]}',
            created_at=1.0,
            updated_at=2.0,
        )
    )
    assert account.engine_settings == {"x": 1} and account.engine_state == {"s": [1]}
    event = EventRow.from_row(
        _row(id=7, type="chat.updated", account_id="a1", created_at=3.0, data='{"k": "v"}')
    )
    assert event.data_json == '{"k": "v"}' and event.data == {"k": "v"}


def test_optional_columns_keep_their_default_when_not_selected() -> None:
    message = {
        "account_id": "a1",
        "id": "m1",
        "chat_jid": "1@s.whatsapp.net",
        "direction": "in",
        "sender_jid": None,
        "type": "text",
        "body": "hi",
        "content": '{"type": "text", "text": {"body": "hi"}}',
        "reply_to": None,
        "media_id": None,
        "status": "received",
        "error": None,
        "wa_timestamp": None,
        "created_at": 1.0,
        "updated_at": 1.0,
        "deleted_at": None,
        "origin": None,
    }
    plain = MessageRow.from_row(_row(**message))
    assert plain.cursor is None and plain.sender_name is None
    assert plain.content_json == message["content"]
    listed = MessageRow.from_row(_row(**message, cursor=42, sender_name="Ann"))
    assert (listed.cursor, listed.sender_name) == (42, "Ann")
    with pytest.raises(KeyError, match="origin"):
        MessageRow.from_row(_row(**{k: v for k, v in message.items() if k != "origin"}))
