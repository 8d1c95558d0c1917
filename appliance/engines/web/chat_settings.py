"""Archive, pin and mute made on the phone (issue 12, item 4), read back from whatsmeow.

WhatsApp tells linked devices about chat settings through app-state sync. whatsmeow
applies each ``archive`` / ``pin_v1`` / ``mute`` mutation to its chat-settings store
(``Store.ChatSettings.PutArchived/PutPinned/PutMutedUntil``, in ``dispatchAppState``),
whether or not it emits ``events.Archive`` / ``Pin`` / ``Mute``; neonize 0.5.2 passes
none of those events on to Python but reads the store with
``NewAClient.get_chat_settings(jid)`` (``LocalChatSettings``: ``Found``, ``Archived``,
``Pinned``, ``MutedUntil`` as Unix seconds). So the engine watches: every
``chat_settings_poll_s`` while connected it reads the settings of the account's
``chat_settings_chats`` most recent chats and reports those that changed since it last
looked (kept in the engine state; all of them the first time) to the host, which makes
our chats match (``chat.updated`` with ``by: "phone"``;
appliance/messaging/phone_chat_settings.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from appliance.engines.web.connection import GO_GATE
from appliance.engines.web.protobuf import describe, to_jid
from appliance.messaging.phone_chat_settings import PhoneChatSettings

if TYPE_CHECKING:
    from appliance.engines.web.engine import WebEngine

log = logging.getLogger(__name__)

# whatsmeow's store.MutedForever (9999-12-31 23:59:59 UTC); WhatsApp's "always" is -1.
MUTED_FOREVER = 253_402_300_799.0
MS_THRESHOLD = 100_000_000_000.0  # above: milliseconds (the year 5138 in seconds)


def muted_until_of(value: float) -> float | None:
    """whatsmeow's MutedUntil (Unix seconds of a Go time; the zero time when not muted)
    as our ``muted_until``: None when not muted, ``MUTED_FOREVER`` for "always"."""
    if value == -1 or value == MUTED_FOREVER:
        return MUTED_FOREVER
    if value <= 0:
        return None  # 0, or Go's zero time (year 1): not muted
    if value > MS_THRESHOLD:
        value = value / 1000.0  # a mute end kept in WhatsApp's milliseconds
    return min(float(value), MUTED_FOREVER)


def phone_settings(jid: str, local: Any) -> PhoneChatSettings | None:
    """neonize's ``LocalChatSettings`` of ``jid``; None when whatsmeow has none."""
    if not getattr(local, "Found", False):
        return None
    return PhoneChatSettings(
        jid=jid,
        archived=bool(local.Archived),
        pinned=bool(local.Pinned),
        muted_until=muted_until_of(float(local.MutedUntil)),
    )


class ChatSettingsWatch:
    """The settings last looked at per chat: a chat is reported again only when
    whatsmeow's store changed since. Kept in the engine state (``chat_settings``), so a
    restart neither misses what the phone changed meanwhile nor undoes what the team
    changed only here (an archive in the inbox that was not sent to WhatsApp). The very
    first look of an account reports every chat."""

    STATE_KEY = "chat_settings"

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.seen: dict[str, PhoneChatSettings] = {}
        for jid, value in (state or {}).items():
            archived, pinned, muted_until = value
            self.seen[jid] = PhoneChatSettings(jid, bool(archived), bool(pinned), muted_until)

    def changed(self, found: list[PhoneChatSettings]) -> list[PhoneChatSettings]:
        return [s for s in found if self.seen.get(s.jid) != s]

    def looked(self, reported: list[PhoneChatSettings], jids: list[str]) -> None:
        done = set(jids)
        for settings in reported:
            if settings.jid in done:
                self.seen[settings.jid] = settings

    def state(self, watched: list[str]) -> dict[str, list[Any]]:
        """What to keep: the watched chats' settings (the others are forgotten)."""
        return {
            jid: [s.archived, s.pinned, s.muted_until]
            for jid in watched
            if (s := self.seen.get(jid)) is not None
        }


async def read_settings(client: Any, jids: list[str]) -> list[PhoneChatSettings]:
    """whatsmeow's settings of ``jids`` (those it has)."""
    found: list[PhoneChatSettings] = []
    for jid in jids:
        async with GO_GATE.shared():
            local = await client.get_chat_settings(to_jid(jid))
        settings = phone_settings(jid, local)
        if settings is not None:
            found.append(settings)
    return found


async def check_once(engine: WebEngine, watch: ChatSettingsWatch) -> int:
    """One look at the watched chats; returns how many were reported."""
    client = engine.client
    host = engine.host
    watched = getattr(host, "watched_chats", None)
    report = getattr(host, "on_chat_settings", None)
    if client is None or watched is None or report is None:
        return 0
    jids = await watched(engine.config.chat_settings_chats)
    changed = watch.changed(await read_settings(client, jids))
    if not changed:
        return 0
    looked = await report(changed)
    watch.looked(changed, looked)
    if looked:
        kept = watch.state(jids)
        if engine.engine_state.get(watch.STATE_KEY) != kept:
            engine.engine_state = {**engine.engine_state, watch.STATE_KEY: kept}
            await host.save_engine_state(engine.engine_state)
    return len(changed)


async def watch_chat_settings(engine: WebEngine) -> None:
    """Until cancelled: a look every ``chat_settings_poll_s`` (0: never)."""
    watch = ChatSettingsWatch(engine.engine_state.get(ChatSettingsWatch.STATE_KEY))
    while True:
        interval = engine.config.chat_settings_poll_s
        if interval <= 0:
            return
        await asyncio.sleep(interval)
        started = time.monotonic()
        try:
            await check_once(engine, watch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a closed client, a locked database: next time
            log.warning(
                "reading chat settings failed",
                extra={"account_id": engine.account_id, "error": describe(exc)},
            )
        # Never more than half the time busy with it, however many chats there are.
        with contextlib.suppress(Exception):
            await asyncio.sleep(max(0.0, time.monotonic() - started))
