"""Mapping between neonize's protobufs and the appliance's models, both directions.

Inbound: a neonize ``MessageEv`` becomes an ``InboundMessage`` (``map_inbound``), a
receipt type becomes our status (``receipt_status``). Outbound: our text, reaction and
reply context become WhatsApp E2E protobufs (``text_message``, ``reaction_message``,
``reply_context``). Everything here is a pure function of its arguments: no client, no
database, no clock unless passed in; the id map is consulted by the caller and its
answers passed as arguments (``app_id_for``, ``wa_target``).

neonize is imported inside the functions that build protobufs, so this module (and
the engine package) imports without it; the enum values we need are copied below.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

from appliance.engines.base import InboundMessage, SendError

# neonize / whatsmeow enum values (Neonize.proto), kept here so this module imports
# without neonize.
RECEIPT_DELIVERED = 1
RECEIPT_READ = 4
RECEIPT_READ_SELF = 5
RECEIPT_PLAYED = 6
PROTOCOL_REVOKE = 0
PROTOCOL_EDIT = 14  # ProtocolMessage.MESSAGE_EDIT
LOGOUT_REASONS = {2: "logged out", 4: "main device gone", 5: "unknown logout"}
FAILURE_TEMP_BANNED = 3
FAILURE_CLIENT_OUTDATED = 6
TEMP_BAN_REASONS = {
    1: "sent to too many people",
    2: "blocked by too many users",
    3: "created too many groups",
    4: "sent too many of the same message",
    5: "broadcast list",
}
MEDIA_KINDS = {
    "imageMessage": "image",
    "videoMessage": "video",
    "audioMessage": "audio",
    "documentMessage": "document",
    "stickerMessage": "sticker",
}
PERMANENT_SEND_HINTS = ("not on whatsapp", "invalid jid", "no such", "not-acceptable", "forbidden")


# -- jids ----------------------------------------------------------------------------------


def jid_str(jid: Any) -> str:
    """``user@server`` without the device part; '' for an empty jid."""
    if jid is None or not getattr(jid, "User", "") or not getattr(jid, "Server", ""):
        return ""
    return f"{jid.User}@{jid.Server}"


def _pn_jid(jid: Any, alt: Any) -> str:
    """Prefer the phone-number jid when WhatsApp addressed someone by a LID."""
    if getattr(jid, "Server", "") == "lid" and jid_str(alt):
        return jid_str(alt)
    return jid_str(jid)


def to_jid(jid: str) -> Any:
    """Our ``user@server`` string as neonize's JID protobuf."""
    from neonize.proto.Neonize_pb2 import JID

    user, _, server = jid.partition("@")
    return JID(
        User=user,
        Server=server or "s.whatsapp.net",
        Device=0,
        RawAgent=0,
        Integrator=0,
        IsEmpty=False,
    )


# -- inbound -------------------------------------------------------------------------------


def shared_content(message: Any) -> tuple[str, dict[str, Any], str | None, Any] | None:
    from appliance.engines.web.content import inbound

    return inbound(message)


def _unwrap(message: Any) -> Any:
    """Ephemeral, view-once and document-with-caption wrappers hold the real message."""
    for _ in range(4):
        for wrapper in (
            "ephemeralMessage",
            "viewOnceMessage",
            "viewOnceMessageV2",
            "viewOnceMessageV2Extension",
            "documentWithCaptionMessage",
            "editedMessage",  # an edit: a MESSAGE_EDIT protocol message inside
        ):
            if message.HasField(wrapper):
                message = getattr(message, wrapper).message
                break
        else:
            return message
    return message


def _context_of(part: Any) -> Any:
    return part.contextInfo if part.HasField("contextInfo") else None


def _same(wa_id: str) -> str:
    return wa_id


def map_inbound(
    event: Any, *, app_id_for: Callable[[str], str] = _same, own: bool = False
) -> tuple[InboundMessage, Any] | None:
    """A neonize ``MessageEv`` as an InboundMessage, with the media part to download.

    None for what is not a user message (protocol messages other than revokes, key
    distribution, and, unless ``own``, the account's own messages sent from the phone:
    engines/web/phone.py maps those with ``own=True``). ``app_id_for`` turns a
    WhatsApp id that a reply or reaction names into the appliance's id.
    """
    info = event.Info
    source = info.MessageSource
    if source.IsFromMe and not own:
        return None
    message = _unwrap(event.Message)
    chat = jid_str(source.Chat)
    sender = _pn_jid(source.Sender, source.SenderAlt)
    if not source.IsGroup and source.Chat.Server == "lid":
        # Our own message to a LID chat names the recipient's phone jid in RecipientAlt.
        chat = (jid_str(source.RecipientAlt) or chat) if source.IsFromMe else sender
    content: dict[str, Any]
    body: str | None = None
    reply_to: str | None = None
    media = None
    context = None
    if message.HasField("protocolMessage"):
        proto = message.protocolMessage
        if proto.type not in (PROTOCOL_REVOKE, PROTOCOL_EDIT) or not proto.key.ID:
            return None
        reply_to = app_id_for(proto.key.ID)
        if proto.type == PROTOCOL_EDIT:  # the sender edited a text message
            edited = proto.editedMessage
            text = edited.conversation or edited.extendedTextMessage.text
            content = {"type": "edit", "edit": {"message_id": reply_to, "text": text}}
            type_ = "edit"
        else:
            content = {"type": "revoke", "revoke": {"message_id": reply_to}}
            type_ = "revoke"
    elif message.HasField("reactionMessage"):
        reaction = message.reactionMessage
        reply_to = app_id_for(reaction.key.ID)
        content = {"type": "reaction", "reaction": {"message_id": reply_to, "emoji": reaction.text}}
        type_ = "reaction"
    elif message.conversation:
        body = message.conversation
        content = {"type": "text", "text": {"body": body}}
        type_ = "text"
    elif message.HasField("extendedTextMessage"):
        ext = message.extendedTextMessage
        body = ext.text
        content = {"type": "text", "text": {"body": body}}
        type_ = "text"
        context = _context_of(ext)
    elif (shared := shared_content(message)) is not None:  # location, contact cards
        type_, content, body, part = shared
        context = _context_of(part)
    else:
        kind = next((k for k in MEDIA_KINDS if message.HasField(k)), None)
        if kind is None:
            fields = [f.name for f, _ in message.ListFields() if f.name != "messageContextInfo"]
            if not fields or fields == ["senderKeyDistributionMessage"]:
                return None
            type_ = "unsupported"
            content = {"type": "unsupported", "unsupported": {"kind": fields[0]}}
        else:
            part = getattr(message, kind)
            type_ = MEDIA_KINDS[kind]
            described: dict[str, Any] = {"mime_type": part.mimetype}
            if getattr(part, "caption", ""):
                described["caption"] = body = part.caption
            if kind == "documentMessage" and part.fileName:
                described["filename"] = part.fileName
            if part.fileSHA256:
                described["sha256"] = part.fileSHA256.hex()
            if part.fileLength:
                described["file_size"] = part.fileLength
            if kind == "audioMessage" and part.PTT:
                described["voice"] = True
            content = {"type": type_, type_: described}
            context = _context_of(part)
            media = message
    if context is not None and context.stanzaID:
        reply_to = app_id_for(context.stanzaID)
        content["context"] = {"message_id": reply_to}
    inbound = InboundMessage(
        id=info.ID,
        chat_jid=chat,
        sender_jid=sender,
        type=type_,
        content=content,
        body=body,
        sender_name=info.Pushname or None,
        reply_to=reply_to,
        timestamp=float(info.Timestamp or 0) or time.time(),
        received_at=time.monotonic(),
    )
    return inbound, media


def replying_to(inbound: InboundMessage, message_id: str) -> InboundMessage:
    """``inbound`` naming ``message_id`` instead of the message it replies, reacts to or
    revokes (``reply_to``): WhatsApp's id of our message becomes ours. ``map_inbound``
    does the same with ``app_id_for`` when the lookup need not wait."""
    target = inbound.reply_to
    if target is None or message_id == target:
        return inbound
    content = dict(inbound.content)
    for key in ("context", "reaction", "revoke", "edit"):
        part = content.get(key)
        if isinstance(part, dict) and part.get("message_id") == target:
            content[key] = {**part, "message_id": message_id}
    return dataclasses.replace(inbound, content=content, reply_to=message_id)


def receipt_status(receipt_type: int) -> Literal["delivered", "read"] | None:
    """Our status for a neonize receipt type; None for receipts we do not report."""
    if receipt_type == RECEIPT_DELIVERED:
        return "delivered"
    if receipt_type in (RECEIPT_READ, RECEIPT_READ_SELF, RECEIPT_PLAYED):
        return "read"
    return None


# -- outbound ------------------------------------------------------------------------------


def text_message(body: str, context: Any) -> Any:
    """A text message; with a reply context it must be an extended text message."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    if context is None:
        return e2e.Message(conversation=body)
    return e2e.Message(extendedTextMessage=e2e.ExtendedTextMessage(text=body, contextInfo=context))


def reaction_message(
    *,
    to_jid: str,
    target: str,
    wa_target: str | None,
    chat: str,
    sender: str,
    emoji: str,
    now_ms: int,
) -> Any:
    """A reaction to ``target``: ours when the id map knows WhatsApp's id of it
    (``wa_target``), else theirs, naming its sender in groups."""
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    from_me = wa_target is not None
    key = MessageKey(remoteJID=to_jid, fromMe=from_me, ID=wa_target or target)
    if chat.endswith("@g.us") and not from_me:
        key.participant = sender
    return e2e.Message(
        reactionMessage=e2e.ReactionMessage(key=key, text=emoji, senderTimestampMS=now_ms)
    )


def reply_context(*, target: str, wa_target: str | None, sender: str) -> Any:
    """The ContextInfo quoting ``target``: WhatsApp's id of our own message when known,
    else their id and their jid as the participant."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    context = e2e.ContextInfo(stanzaID=wa_target or target, quotedMessage=e2e.Message())
    if wa_target is None:  # quoting them, not us
        context.participant = sender
    return context


# -- errors --------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """A short ``Type: text`` for logs and reasons."""
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def send_error(exc: BaseException) -> SendError:
    """A neonize failure as a SendError; permanent when the text says it will not change."""
    if isinstance(exc, SendError):
        return exc
    text = describe(exc)
    permanent = any(h in text.lower() for h in PERMANENT_SEND_HINTS)
    return SendError(f"WhatsApp refused the message: {text}", permanent=permanent)
