"""The web engine's actions that reach WhatsApp (``Engine.perform``), through neonize.

- Chat settings are app-state patches (``send_app_state``), built like whatsmeow's
  ``appstate.BuildArchive/BuildPin/BuildMute/BuildMarkChatAsRead``: the index names
  the setting and the chat, the value is a ``SyncActionValue``. Setting a state twice
  is one state, so a retry repeats nothing.
- Mark read also sends read receipts for the chat's recent inbound messages
  (``mark_read``).
- The typing indicator is ``send_chat_presence``.
- Revoke and edit are protocol messages (``ProtocolMessage.REVOKE`` / ``MESSAGE_EDIT``
  wrapped in ``editedMessage``) naming WhatsApp's id of our message. They go out
  through the engine's id map under the action's ``send_id``, like a send: an id
  WhatsApp accepted before is not sent again.

neonize is imported inside the functions (the engine package imports without it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from appliance.engines.base import ActionError, EngineAction
from appliance.engines.web.connection import GO_GATE
from appliance.engines.web.protobuf import describe, to_jid

if TYPE_CHECKING:
    from appliance.engines.web.engine import WebEngine

# whatsmeow appstate: indexes, versions and patch types (PatchInfo.Type values).
INDEX_ARCHIVE, INDEX_PIN, INDEX_MUTE, INDEX_READ = "archive", "pin_v1", "mute", "markChatAsRead"
PATCH_REGULAR_LOW, PATCH_REGULAR_HIGH = 3, 4  # Neonize.proto PatchInfo.WAPatchName
PERMANENT_HINTS = ("not-authorized", "forbidden", "bad-request", "item-not-found", "406", "400")


def _error(exc: BaseException) -> ActionError:
    if isinstance(exc, ActionError):
        return exc
    text = describe(exc)
    permanent = any(hint in text.lower() for hint in PERMANENT_HINTS)
    return ActionError(f"WhatsApp refused the action: {text}", permanent=permanent)


def _mutation(index: str, jid: str, version: int, **value: Any) -> Any:
    from neonize.proto.Neonize_pb2 import MutationInfo
    from neonize.proto.waSyncAction.WAWebProtobufSyncAction_pb2 import SyncActionValue

    return MutationInfo(
        Index=[index, jid], Version=version, Value=SyncActionValue(timestamp=_ms(), **value)
    )


def _ms() -> int:
    return int(time.time() * 1000)


def _range(last_ts: float | None) -> Any:
    from neonize.proto.waSyncAction.WAWebProtobufSyncAction_pb2 import SyncActionMessageRange

    return SyncActionMessageRange(lastMessageTimestamp=int(last_ts or time.time()))


def chat_patch(action: EngineAction, last_message_at: float | None = None) -> Any:
    """The app-state patch of a chat setting (archive, pin, mute, read)."""
    from neonize.proto.Neonize_pb2 import PatchInfo
    from neonize.proto.waSyncAction import WAWebProtobufSyncAction_pb2 as sync

    jid, kind = action.chat_jid, action.type
    if kind in ("archive", "unarchive"):
        archived = kind == "archive"
        archive = _mutation(
            INDEX_ARCHIVE,
            jid,
            3,
            archiveChatAction=sync.ArchiveChatAction(
                archived=archived, messageRange=_range(last_message_at)
            ),
        )
        mutations = [archive]
        if archived:  # WhatsApp unpins what it archives
            mutations.insert(
                0, _mutation(INDEX_PIN, jid, 5, pinAction=sync.PinAction(pinned=False))
            )
        return PatchInfo(Timestamp=_ms() // 1000, Type=PATCH_REGULAR_LOW, Mutations=mutations)
    if kind in ("pin", "unpin"):
        pin = sync.PinAction(pinned=kind == "pin")
        return PatchInfo(
            Timestamp=_ms() // 1000,
            Type=PATCH_REGULAR_LOW,
            Mutations=[_mutation(INDEX_PIN, jid, 5, pinAction=pin)],
        )
    if kind in ("mute", "unmute"):
        mute = sync.MuteAction(muted=kind == "mute")
        if kind == "mute":
            mute.muteEndTimestamp = int(float(action.params["until"]) * 1000)
        return PatchInfo(
            Timestamp=_ms() // 1000,
            Type=PATCH_REGULAR_HIGH,
            Mutations=[_mutation(INDEX_MUTE, jid, 2, muteAction=mute)],
        )
    if kind == "read":
        read = sync.MarkChatAsReadAction(read=True, messageRange=_range(last_message_at))
        return PatchInfo(
            Timestamp=_ms() // 1000,
            Type=PATCH_REGULAR_LOW,
            Mutations=[_mutation(INDEX_READ, jid, 3, markChatAsReadAction=read)],
        )
    raise ActionError(f"not a chat setting: {kind!r}", permanent=True)


def revoke_message(chat: str, wa_id: str) -> Any:
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message, ProtocolMessage

    key = MessageKey(remoteJID=chat, fromMe=True, ID=wa_id)
    return Message(protocolMessage=ProtocolMessage(type=ProtocolMessage.REVOKE, key=key))


def edit_message(chat: str, wa_id: str, text: str) -> Any:
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
        FutureProofMessage,
        Message,
        ProtocolMessage,
    )

    protocol = ProtocolMessage(
        key=MessageKey(remoteJID=chat, fromMe=True, ID=wa_id),
        type=ProtocolMessage.MESSAGE_EDIT,
        editedMessage=Message(conversation=text),
        timestampMS=_ms(),
    )
    return Message(editedMessage=FutureProofMessage(message=Message(protocolMessage=protocol)))


async def perform(engine: WebEngine, action: EngineAction) -> None:
    client = engine.client
    if client is None or not engine.connection.connected.is_set():
        raise ActionError("not connected", permanent=False)
    kind = action.type
    try:
        if kind == "presence":
            await _presence(client, action)
        elif kind in ("revoke", "edit"):
            await _protocol_message(engine, client, action)
        else:
            if kind == "read":
                ids = [str(i) for i in action.params.get("message_ids", [])]
                if ids:
                    await engine.mark_read(action.chat_jid, ids)
            last = action.params.get("last_message_at")
            patch = chat_patch(action, float(last) if last else None)
            async with GO_GATE.shared():
                await client.send_app_state(patch)
    except Exception as exc:
        raise _error(exc) from exc
    engine.connection.last_traffic = time.monotonic()


async def _presence(client: Any, action: EngineAction) -> None:
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia

    state = action.params.get("state", "composing")
    presence = (
        ChatPresence.CHAT_PRESENCE_PAUSED
        if state == "paused"
        else ChatPresence.CHAT_PRESENCE_COMPOSING
    )
    media = (
        ChatPresenceMedia.CHAT_PRESENCE_MEDIA_AUDIO
        if state == "recording"
        else ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
    )
    async with GO_GATE.shared():
        await client.send_chat_presence(to_jid(action.chat_jid), presence, media)


async def _protocol_message(engine: WebEngine, client: Any, action: EngineAction) -> None:
    send_id, target = action.send_id, action.message_id
    if send_id is None or target is None:
        raise ActionError("a revoke or edit needs its message and send id", permanent=True)
    ids = engine.id_map
    if await ids.wa_id(send_id) is not None:
        return  # WhatsApp accepted this protocol message before: not a second edit
    wa_target = await ids.wa_id(target)
    if wa_target is None:
        raise ActionError("WhatsApp never accepted the message: nothing to change", permanent=True)
    if action.type == "revoke":
        message = revoke_message(action.chat_jid, wa_target)
    else:
        message = edit_message(action.chat_jid, wa_target, str(action.params.get("text", "")))
    await ids.attempt(send_id, action.chat_jid)
    async with GO_GATE.shared():
        response = await client.send_message(to_jid(action.chat_jid), message)
    wa_id = str(getattr(response, "ID", "") or "")
    if not wa_id:
        raise ActionError("WhatsApp returned no message id", permanent=False)
    await ids.accepted(send_id, wa_id)


async def set_blocked(engine: WebEngine, jid: str, blocked: bool) -> None:
    """Block or unblock a contact at WhatsApp (neonize ``update_blocklist``); raises
    ActionError (an EngineError: the worker answers 409 with the reason)."""
    from neonize.utils.enum import BlocklistAction

    client = engine.client
    if client is None or not engine.connection.connected.is_set():
        raise ActionError("not connected", permanent=False)
    action = BlocklistAction.BLOCK if blocked else BlocklistAction.UNBLOCK
    try:
        async with GO_GATE.shared():
            await client.update_blocklist(to_jid(jid), action)
    except Exception as exc:
        raise _error(exc) from exc
    engine.connection.last_traffic = time.monotonic()
