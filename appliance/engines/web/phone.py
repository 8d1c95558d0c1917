"""Messages the account sends from the phone or another linked device (``IsFromMe``).

WhatsApp delivers them to every linked device, this one included: they are stored as
outbound with origin ``phone`` (``message.sent``), and their receipts then update
them like any outbound message (receipts name WhatsApp's id, which is their id).

Our own API sends can come back the same way. They are recognised by WhatsApp's id in
the id map (``web_ids``, written the moment WhatsApp accepted the send) and skipped,
so a send is one row. An echo that overtakes the recording of that id (the send's
``accepted`` commit) is caught by waiting for the account's sends in flight first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.engines.base import InboundMessage
from appliance.engines.web.protobuf import map_inbound
from appliance.messaging.history_store import HistoryStatus, PhoneMessage

INFLIGHT_WAIT_S = 30.0


def phone_message(
    inbound: InboundMessage, *, from_me: bool, status: HistoryStatus | None = None
) -> PhoneMessage:
    """An InboundMessage (as ``map_inbound`` makes it) as a PhoneMessage."""
    return PhoneMessage(
        id=inbound.id,
        chat_jid=inbound.chat_jid,
        direction="out" if from_me else "in",
        type=inbound.type,
        content=inbound.content,
        timestamp=inbound.timestamp,
        body=inbound.body,
        sender_jid=None if from_me else inbound.sender_jid,
        sender_name=None if from_me else inbound.sender_name,
        reply_to=inbound.reply_to,
        status=status or ("sent" if from_me else "received"),
    )


def map_own(event: Any) -> PhoneMessage | None:
    """A ``MessageEv`` the account sent elsewhere as a PhoneMessage; None for what is
    not a user message. Revokes and media downloads are not handled here."""
    mapped = map_inbound(event, own=True)
    if mapped is None:
        return None
    inbound, _media = mapped
    if inbound.type == "revoke":
        return None
    return phone_message(inbound, from_me=True)


class OwnMessages:
    """Tells echoes of our sends from messages typed on the phone."""

    def __init__(
        self,
        is_ours: Callable[[str], Awaitable[bool]],
        inflight: Callable[[], list[asyncio.Task[str]]],
    ) -> None:
        self.is_ours = is_ours  # WhatsApp id -> whether one of our sends has it
        self.inflight = inflight  # the sends WhatsApp has not answered yet

    async def is_echo(self, wa_id: str) -> bool:
        if await self.is_ours(wa_id):
            return True
        running = self.inflight()
        if not running:
            return False
        # A send may have been accepted as this id and not be recorded yet.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(t) for t in running), return_exceptions=True),
                INFLIGHT_WAIT_S,
            )
        return await self.is_ours(wa_id)
