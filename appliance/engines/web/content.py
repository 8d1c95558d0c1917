"""Locations and contact cards as WhatsApp Web protobufs, both ways.

Outbound: ``LocationContent`` is a ``locationMessage`` (degrees, name, address);
``ContactsContent`` one ``contactMessage`` (display name and a vCard 3.0 with a
``TEL;waid=`` line per phone, as WhatsApp writes them) or, for several cards, a
``contactsArrayMessage``. Inbound: the same messages back into the Cloud API shapes
(``location``, ``contacts`` with ``name.formatted_name``, ``phones`` and the vCard).

neonize is imported inside the functions (the engine package imports without it).
"""

from __future__ import annotations

import re
from typing import Any

from appliance.messaging.models import ContactCard, ContactsContent, LocationContent

_TEL = re.compile(r"^(?:item\d+\.)?TEL(?P<params>[^:]*):(?P<phone>.+)$", re.IGNORECASE)
_WAID = re.compile(r"waid=(\d+)", re.IGNORECASE)
_FN = re.compile(r"^FN:(.*)$", re.IGNORECASE)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(";", "\\;").replace("\n", "\\n")


def vcard(card: ContactCard) -> str:
    name = card.name
    lines = ["BEGIN:VCARD", "VERSION:3.0", f"FN:{_escape(name.formatted_name)}"]
    if name.first_name or name.last_name:
        lines.append(f"N:{_escape(name.last_name or '')};{_escape(name.first_name or '')};;;")
    for phone in card.phones:
        kind = (phone.type or "CELL").upper()
        waid = f";waid={phone.wa_id}" if phone.wa_id else ""
        lines.append(f"TEL;type={kind}{waid}:{phone.phone}")
    lines.append("END:VCARD")
    return "\n".join(lines)


def outbound(content: LocationContent | ContactsContent, context: Any) -> Any:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    if isinstance(content, LocationContent):
        place = content.location
        location = e2e.LocationMessage(
            degreesLatitude=place.latitude, degreesLongitude=place.longitude
        )
        if place.name:
            location.name = place.name
        if place.address:
            location.address = place.address
        if context is not None:
            location.contextInfo.CopyFrom(context)
        return e2e.Message(locationMessage=location)
    cards = [
        e2e.ContactMessage(displayName=c.name.formatted_name, vcard=vcard(c))
        for c in content.contacts
    ]
    if len(cards) == 1:
        if context is not None:
            cards[0].contextInfo.CopyFrom(context)
        return e2e.Message(contactMessage=cards[0])
    many = e2e.ContactsArrayMessage(displayName=f"{len(cards)} contacts", contacts=cards)
    if context is not None:
        many.contextInfo.CopyFrom(context)
    return e2e.Message(contactsArrayMessage=many)


def _card(display_name: str, card: str) -> dict[str, Any]:
    phones: list[dict[str, Any]] = []
    formatted = display_name
    for line in card.replace("\r\n", "\n").split("\n"):
        if (fn := _FN.match(line)) and not formatted:
            formatted = fn.group(1)
        match = _TEL.match(line)
        if match is None:
            continue
        phone: dict[str, Any] = {"phone": match.group("phone").strip()}
        waid = _WAID.search(match.group("params"))
        if waid:
            phone["wa_id"] = waid.group(1)
        phones.append(phone)
    return {"name": {"formatted_name": formatted or "?"}, "phones": phones, "vcard": card}


def inbound(message: Any) -> tuple[str, dict[str, Any], str | None, Any] | None:
    """(type, content, body, the part holding the reply context) of a location or
    contact card message; None for anything else."""
    if message.HasField("locationMessage") or message.HasField("liveLocationMessage"):
        live = not message.HasField("locationMessage")
        part = message.liveLocationMessage if live else message.locationMessage
        place: dict[str, Any] = {
            "latitude": part.degreesLatitude,
            "longitude": part.degreesLongitude,
        }
        body = None
        if not live:
            if part.name:
                place["name"] = part.name
            if part.address:
                place["address"] = part.address
            body = " ".join(p for p in (part.name, part.address) if p) or None
        else:
            place["live"] = True
        return "location", {"type": "location", "location": place}, body, part
    if message.HasField("contactMessage"):
        part = message.contactMessage
        cards = [_card(part.displayName, part.vcard)]
    elif message.HasField("contactsArrayMessage"):
        part = message.contactsArrayMessage
        cards = [_card(c.displayName, c.vcard) for c in part.contacts]
    else:
        return None
    body = ", ".join(c["name"]["formatted_name"] for c in cards)
    return "contacts", {"type": "contacts", "contacts": cards}, body, part
