"""Names, groups and profile pictures from WhatsApp (neonize events and calls).

- Group subject, description and members: ``GroupInfoEvent`` (a change made on the
  phone or by another member: subject, topic, joins, leaves, promotions, demotions)
  and ``JoinedGroup`` (the account was added: the full group info) become
  ``ChatInfo`` for the host, which stores them and emits ``chat.updated``.
- Contact names: the push name of live messages (when it changed), the business's
  verified name, and the push names and saved (address book) names of history sync
  become ``ContactNames`` (``contact.updated``).
- Profile pictures: ``fetch_picture`` asks WhatsApp (``get_profile_picture``) and
  downloads the picture; "no picture" and "hidden by privacy" are answers too, which
  the caller remembers. A ``Picture`` event (someone changed theirs) marks the stored
  one stale.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Literal

from appliance.engines.web.protobuf import describe, jid_str
from appliance.messaging.history_store import ChatInfo, ContactNames, ParticipantRole

PICTURE_MAX_BYTES = 5 * 1024 * 1024
PICTURE_TIMEOUT_S = 20.0
PICTURE_HOST_SUFFIX = ".whatsapp.net"
HIDDEN_HINTS = ("hidden", "unauthorized", "not-authorized", "401")
NONE_HINTS = ("does not have a profile picture", "item-not-found", "404")
RECENT_NAMES = 5000


def _role(participant: Any) -> ParticipantRole:
    if participant.IsSuperAdmin:
        return "superadmin"
    return "admin" if participant.IsAdmin else "member"


def _participant_jid(participant: Any) -> str:
    return jid_str(participant.PhoneNumber) or jid_str(participant.JID) or jid_str(participant.LID)


def group_info(info: Any) -> ChatInfo:
    """neonize's ``GroupInfo`` (JoinedGroup, get_group_info) as ChatInfo."""
    chat = jid_str(info.JID)
    topic = info.GroupTopic
    return ChatInfo(
        jid=chat,
        name=info.GroupName.Name or None,
        description="" if topic.TopicDeleted else (topic.Topic or None),
        participants={_participant_jid(p): _role(p) for p in info.Participants},
    )


def group_change(event: Any) -> ChatInfo | None:
    """A ``GroupInfoEvent`` as the change it makes; None if it changes nothing we keep."""
    chat = jid_str(event.JID)
    if not chat:
        return None
    name = event.Name.Name if event.HasField("Name") else None
    description: str | None = None
    if event.HasField("Topic"):
        description = "" if event.Topic.TopicDeleted else event.Topic.Topic
    change = ChatInfo(
        jid=chat,
        name=name or None,
        description=description,
        joined={jid_str(j): "member" for j in event.Join if jid_str(j)},
        left=tuple(jid_str(j) for j in event.Leave if jid_str(j)),
        promoted=tuple(jid_str(j) for j in event.Promote if jid_str(j)),
        demoted=tuple(jid_str(j) for j in event.Demote if jid_str(j)),
    )
    empty = ChatInfo(jid=chat)
    return None if change == empty else change


class NameWatch:
    """Remembers the names last seen per sender, so a live message reports a contact's
    name only when it changed (not on every message)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()

    def changed(self, sender: str, push_name: str | None, business: str | None) -> bool:
        if not sender or not (push_name or business):
            return False
        now = (push_name or None, business or None)
        if self._seen.get(sender) == now:
            self._seen.move_to_end(sender)
            return False
        self._seen[sender] = now
        while len(self._seen) > RECENT_NAMES:
            self._seen.popitem(last=False)
        return True


def message_names(event: Any, sender: str) -> ContactNames | None:
    """The sender's push name and verified business name of a live message."""
    info = event.Info
    business = None
    if info.HasField("VerifiedName"):
        business = info.VerifiedName.Details.verifiedName or None
    if not (info.Pushname or business) or not sender or sender.endswith("@g.us"):
        return None
    return ContactNames(sender, push_name=info.Pushname or None, business_name=business)


@dataclasses.dataclass(frozen=True)
class Picture:
    state: Literal["ok", "none", "hidden"]
    data: bytes | None = None
    picture_id: str | None = None


async def fetch_picture(client: Any, jid: str, fetch_url: Any) -> Picture:
    """Ask WhatsApp for ``jid``'s profile picture and download it."""
    from appliance.engines.web.protobuf import to_jid

    try:
        info = await client.get_profile_picture(to_jid(jid))
    except Exception as exc:
        text = describe(exc).lower()
        if any(h in text for h in HIDDEN_HINTS):
            return Picture("hidden")
        if any(h in text for h in NONE_HINTS):
            return Picture("none")
        raise
    url = str(getattr(info, "URL", "") or "")
    if not url:
        return Picture("none")
    data = await fetch_url(url)
    return Picture("ok", data=data, picture_id=str(getattr(info, "ID", "") or "") or None)


async def https_fetch(url: str) -> bytes:
    """The picture from WhatsApp's picture servers (https, ``*.whatsapp.net`` only)."""
    from urllib.parse import urlsplit

    import httpx

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https" or not host.endswith(PICTURE_HOST_SUFFIX):
        raise ValueError(f"not a WhatsApp picture address: {host or url[:40]!r}")
    http = httpx.AsyncClient(timeout=PICTURE_TIMEOUT_S, follow_redirects=False)
    async with http, http.stream("GET", url) as response:
        response.raise_for_status()
        data = b""
        async for part in response.aiter_bytes():
            data += part
            if len(data) > PICTURE_MAX_BYTES:
                raise ValueError("the profile picture is larger than 5 MiB")
    return data


def url_fetcher(client: Any) -> Any:
    """How the picture at a URL is fetched: over https from WhatsApp's servers, or, for
    a client that brings its own (the test fake's), with that."""
    own = getattr(client, "fetch_profile_picture", None)
    return own if callable(own) else https_fetch
