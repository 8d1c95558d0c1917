"""WhatsApp's history sync (neonize ``HistorySync`` events) as batches for the host.

After linking, the phone pushes the account's history in chunks: an initial bootstrap,
recent messages, the full history, push names (``HistorySync.syncType``). Each chunk
becomes ``HistoryBatch`` es of at most ``BATCH_MESSAGES`` messages: chats (names,
archived, unread count, group members) and contacts (push names, the phone's saved
names) in the first, messages newest first per chat (so ``history_limit`` keeps the
newest), ``last`` on the final one. The host stores each batch in one transaction
(group commit) and records the chunk with its last batch.

Idempotent: a chunk's key is its type, order and a digest of its bytes; a chunk
already recorded is skipped, one cut short (a worker killed mid-chunk) is imported
again and its messages, keyed by WhatsApp's id, are stored once. The handler returns
only after the last batch's commit, and whatsmeow acknowledges the chunk (so the
phone stops re-sending it) only after the handler returned
(``connection.install_ack_after_commit``).

Media in history messages is described (type, mimetype, caption, size) but not
downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from appliance.engines.web.phone import phone_message
from appliance.engines.web.protobuf import jid_str, map_inbound
from appliance.messaging.history_store import (
    ChatInfo,
    ContactNames,
    HistoryBatch,
    HistoryStatus,
    ParticipantRole,
    PhoneMessage,
)

BATCH_MESSAGES = 500
SYNC_TYPES = {
    0: "initial_bootstrap",
    1: "initial_status_v3",
    2: "full",
    3: "recent",
    4: "push_name",
    5: "non_blocking_data",
    6: "on_demand",
}
# WebMessageInfo.Status of our own messages -> our status.
OWN_STATUS: dict[int, HistoryStatus] = {0: "failed", 1: "sent", 2: "sent", 3: "delivered"}
# GroupParticipant.Rank (waHistorySync): REGULAR 0, ADMIN 1, SUPERADMIN 2.
RANKS: dict[int, ParticipantRole] = {0: "member", 1: "admin", 2: "superadmin"}


def chunk_key(data: Any) -> str:
    digest = hashlib.sha256(data.SerializeToString(deterministic=True)).hexdigest()[:24]
    kind = SYNC_TYPES.get(int(data.syncType), str(data.syncType))
    return f"{kind}:{data.chunkOrder}:{digest}"


def _chat_jid(conversation: Any) -> str:
    jid = str(conversation.ID)
    if jid.endswith("@lid") and conversation.pnJID:
        return str(conversation.pnJID)
    return jid


def history_message(info: Any, chat: str, own_jid: str) -> PhoneMessage | None:
    """One ``WebMessageInfo`` of a conversation as a PhoneMessage (None: not a user
    message, e.g. a group notification or a revoke)."""
    from neonize.proto import Neonize_pb2 as ev

    from appliance.engines.web.protobuf import to_jid

    key = info.key
    if not key.ID or not info.HasField("message"):
        return None
    from_me = bool(key.fromMe)
    sender = key.participant or info.participant or (own_jid if from_me else chat)
    event = ev.Message(
        Info=ev.MessageInfo(
            MessageSource=ev.MessageSource(
                Chat=to_jid(chat),
                Sender=to_jid(sender),
                IsFromMe=from_me,
                IsGroup=chat.endswith("@g.us"),
            ),
            ID=key.ID,
            Pushname=info.pushName,
            Timestamp=int(info.messageTimestamp or 0),
        ),
        Message=info.message,
    )
    mapped = map_inbound(event, own=True)
    if mapped is None:
        return None
    inbound, _media = mapped
    if inbound.type == "revoke":
        return None
    status: HistoryStatus | None = None
    if from_me:
        status = OWN_STATUS.get(int(info.status), "read")
    return phone_message(inbound, from_me=from_me, status=status)


def chat_info(conversation: Any, chat: str) -> ChatInfo:
    name = conversation.name or conversation.displayName or None
    participants: dict[str, ParticipantRole] | None = None
    if chat.endswith("@g.us") and len(conversation.participant):
        participants = {
            str(p.userJID): RANKS.get(int(p.rank), "member") for p in conversation.participant
        }
    return ChatInfo(
        jid=chat,
        name=name,
        description=conversation.description or None if chat.endswith("@g.us") else None,
        archived=bool(conversation.archived),
        unread_count=int(conversation.unreadCount),
        participants=participants,
    )


def batches(data: Any, own_jid: str) -> list[HistoryBatch]:
    """A ``HistorySync`` chunk as the batches the host imports, in order."""
    key = chunk_key(data)
    kind = SYNC_TYPES.get(int(data.syncType), str(data.syncType))
    chats: list[ChatInfo] = []
    contacts: list[ContactNames] = []
    messages: list[PhoneMessage] = []
    for pushname in data.pushnames:
        if pushname.ID and pushname.pushname and not pushname.ID.endswith("@lid"):
            contacts.append(ContactNames(str(pushname.ID), push_name=str(pushname.pushname)))
    for conversation in data.conversations:
        chat = _chat_jid(conversation)
        if not chat or chat.endswith("@broadcast") or chat.endswith("@newsletter"):
            continue
        chats.append(chat_info(conversation, chat))
        if conversation.name and chat.endswith("@s.whatsapp.net"):
            contacts.append(ContactNames(chat, saved_name=str(conversation.name)))
        mapped = [
            m
            for m in (history_message(h.message, chat, own_jid) for h in conversation.messages)
            if m is not None
        ]
        messages.extend(sorted(mapped, key=lambda m: m.timestamp, reverse=True))
    progress = int(data.progress) if data.HasField("progress") else None
    parts = [messages[i : i + BATCH_MESSAGES] for i in range(0, len(messages), BATCH_MESSAGES)]
    parts = parts or [[]]
    out = []
    for n, part in enumerate(parts):
        first, last = n == 0, n == len(parts) - 1
        out.append(
            HistoryBatch(
                chunk_key=key,
                sync_type=kind,
                chats=chats if first else [],
                messages=part,
                contacts=contacts if first else [],
                last=last,
                progress=progress if last else None,
            )
        )
    return out


def own_jid_of(client: Any) -> str:
    me = getattr(client, "me", None)
    return jid_str(getattr(me, "JID", None))


# -- the mapping's thread --------------------------------------------------------------------

_EXECUTORS: dict[int, ThreadPoolExecutor] = {}


def map_executor(nice: int) -> ThreadPoolExecutor:
    """The one thread (per nice value) that turns history chunks into batches, its CPU
    priority lowered by ``nice`` (HISTORY_MAP_NICE): the mapping is background work, and
    the API processes (in the same scheduling group as the worker: supervisord's
    session) should get the CPU first while a large history imports. Linux applies a
    thread's nice value to that thread only."""
    executor = _EXECUTORS.get(nice)
    if executor is None:
        executor = _EXECUTORS[nice] = ThreadPoolExecutor(
            1, thread_name_prefix="history-map", initializer=_lower_priority, initargs=(nice,)
        )
    return executor


def _lower_priority(nice: int) -> None:
    if nice <= 0:
        return
    with contextlib.suppress(OSError, AttributeError):  # not Linux: as is
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
