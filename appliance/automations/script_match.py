"""Which messages a script's trigger filter lets through, and the data a run sees.

Pure functions (no database): the trigger data of a stored message (the script's
``message``), of a sample message (dry and manual runs), and ``matches`` for the
filters of `message` (inbound) and `outbound` scripts. Regexes run on RE2 (linear
time), case-insensitively.
"""

from __future__ import annotations

import time
from typing import Any

from appliance.automations.scripts_models import SampleMessage, TriggerFilter, compile_filter_regex
from appliance.messaging.models import MessageOut, content_dict, recipient_jid


def trigger_data(message: MessageOut, *, is_group: bool | None = None) -> dict[str, Any]:
    """The script's ``message``: a plain copy of the (inbound or outbound) message."""
    chat = message.chat_id
    content = content_dict(message.content)
    text = content.get("text", {}).get("body") if message.type == "text" else None
    if text is None:
        media = content.get(message.type)
        text = media.get("caption") if isinstance(media, dict) else None
    return {
        "id": message.id,
        "chat_id": chat,
        "direction": message.direction,
        "from": message.from_,
        "type": message.type,
        "body": text or "",
        "content": content,
        "is_group": chat.endswith("@g.us") if is_group is None else is_group,
        "timestamp": message.timestamp,
    }


def sample_trigger(sample: SampleMessage) -> dict[str, Any]:
    sender = recipient_jid(sample.from_)
    chat = recipient_jid(sample.chat_id) if sample.chat_id else sender
    return {
        "id": sample.id,
        "chat_id": chat,
        "from": sender,
        "type": "text",
        "body": sample.body,
        "content": {"text": {"body": sample.body}},
        "is_group": chat.endswith("@g.us"),
        "timestamp": time.time(),
    }


def message_of_event(data: dict[str, Any]) -> MessageOut | None:
    """The message a ``message.*`` event carries (its payload is the message)."""
    try:
        return MessageOut.model_validate(data)
    except ValueError:
        return None


def matches(filter_: TriggerFilter, message: dict[str, Any]) -> bool:
    """Whether a message passes a script's filter (every given condition must hold)."""
    if filter_.chats and message["chat_id"] not in filter_.chats:
        return False
    if filter_.senders and message.get("from") not in filter_.senders:
        return False
    if filter_.chat_type == "private" and message["is_group"]:
        return False
    if filter_.chat_type == "group" and not message["is_group"]:
        return False
    body = str(message.get("body") or "")
    if filter_.contains is not None and filter_.contains.casefold() not in body.casefold():
        return False
    return not (filter_.regex is not None and not compile_filter_regex(filter_.regex).search(body))
