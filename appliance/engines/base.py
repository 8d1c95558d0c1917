"""The one interface every WhatsApp engine implements (sandbox, web, cloud).

The worker owns one engine per account. It calls ``connect``, ``run_until_closed``,
``send`` and ``logout``; the engine reports back through ``EngineHost``:
connection states, inbound messages (acknowledged to WhatsApp only after the host
has committed them), receipts and failures reported after a send. An engine changes
the appliance's state (accounts, messages, events) only through ``EngineHost``; its own
tables, if any, it keeps through its own store module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from appliance.errors import EngineError
from appliance.messaging.history_store import ChatInfo, ContactNames, HistoryBatch, PhoneMessage
from appliance.messaging.models import CONTENT, Content
from appliance.messaging.phone_chat_settings import PhoneChatSettings


@dataclass(frozen=True)
class OutboundMessage:
    account_id: str
    id: str  # pre-assigned WhatsApp id: a retry re-sends the same id
    to_jid: str
    type: str
    # One class per type (appliance/messaging/models.py); a dict in the Cloud API shape
    # is validated into it (tests and tools build messages that way).
    content: Content
    reply_to: str | None = None
    media_path: str | None = None
    media_type: str | None = None

    def __post_init__(self) -> None:
        content: object = self.content
        if isinstance(content, dict):
            object.__setattr__(self, "content", CONTENT.validate_python(content))


@dataclass(frozen=True)
class InboundMessage:
    id: str
    chat_jid: str
    sender_jid: str
    type: str
    content: dict[str, Any]
    body: str | None = None
    sender_name: str | None = None
    reply_to: str | None = None
    timestamp: float = 0.0
    media: tuple[str, bytes] | None = None  # (content type, bytes) to store
    received_at: float = field(default=0.0, compare=False)  # monotonic, for latency


class SendError(EngineError):
    """A send failed. ``permanent`` failures are not retried."""

    def __init__(self, reason: str, *, permanent: bool, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class EngineAction:
    """One action to take at WhatsApp (appliance/messaging/actions.py): ``type`` is one
    of ``ACTION_TYPES``. ``message_id`` (revoke, edit) is our id of the message acted
    on; ``send_id`` the id the protocol message goes out under, the same on every retry
    (an engine that handed it to WhatsApp before does not send it again)."""

    id: str
    account_id: str
    type: str
    chat_jid: str
    params: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    send_id: str | None = None


class ActionError(EngineError):
    """An action failed. ``permanent`` failures are not retried."""

    def __init__(self, reason: str, *, permanent: bool, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after_s = retry_after_s


class LoggedOut(EngineError):
    """WhatsApp ended the session: linking again is needed."""


class EngineHost(Protocol):
    # The account's own settings (``download_media``, ...), read by the engine.
    settings: dict[str, Any]

    async def on_state(
        self,
        state: Literal["connecting", "pairing", "connected"],
        *,
        reason: str | None = None,
        phone: str | None = None,
    ) -> None: ...

    async def on_inbound(self, messages: list[InboundMessage]) -> list[bool]:
        """Commit the messages; returns which were new. Returns only after the commit."""
        ...

    async def on_receipt(
        self, message_id: str, status: Literal["sent", "delivered", "read"]
    ) -> None: ...

    async def save_engine_state(self, state: dict[str, Any]) -> None: ...

    async def on_chat_read(self, chat_jid: str) -> None:
        """The account read the chat elsewhere (the phone, another linked device): its
        unread count becomes 0, with ``chat.updated`` (``by: phone``)."""
        ...

    async def on_delivery_failed(self, message_id: str, reason: str) -> None:
        """WhatsApp reported, after it accepted the send, that the message failed: the
        message becomes ``failed`` (error ``WhatsApp reported: <reason>``) unless it is
        already failed or read, with a ``message.failed`` event."""
        ...

    # What an engine learns from the phone (web engine; appliance/worker/phone_sync.py).
    async def on_phone_message(self, message: PhoneMessage) -> None:
        """A message the account sent from the phone or another linked device: stored
        once as outbound with origin ``phone`` (``message.sent``)."""
        ...

    async def on_history(self, batch: HistoryBatch) -> None:
        """Import one batch of a history sync chunk (no message events)."""
        ...

    async def on_chat_info(self, info: ChatInfo) -> None:
        """A chat's name, description or members changed (``chat.updated``)."""
        ...

    async def on_contact_names(self, names: list[ContactNames]) -> None:
        """Contacts' names WhatsApp told us (``contact.updated`` when changed)."""
        ...

    async def on_picture_changed(self, jid: str) -> None:
        """WhatsApp said ``jid``'s profile picture changed: ask again next time."""
        ...

    async def on_chat_settings(self, settings: list[PhoneChatSettings]) -> list[str]:
        """Archive, pin and mute as WhatsApp has them (changed on the phone:
        ``chat.updated``, ``by: phone``); returns the jids looked at, the others (an
        action of ours still settling) are to be reported again later."""
        ...

    async def watched_chats(self, limit: int) -> list[str]:
        """The account's most recently active chats, at most ``limit``."""
        ...


class Engine(ABC):
    """One WhatsApp account's connection."""

    # True: media reaches send() as a stored file (OutboundMessage.media_path), links
    # fetched by the worker; False: the engine handles ids and links itself.
    needs_media_files = False

    def __init__(
        self,
        account_id: str,
        settings: dict[str, Any],
        engine_state: dict[str, Any],
        host: EngineHost,
    ) -> None:
        self.account_id = account_id
        self.settings = settings
        self.engine_state = engine_state
        self.host = host

    @abstractmethod
    async def connect(self) -> str | None:
        """Connect (pairing first if needed); returns the account's phone number."""

    @abstractmethod
    async def run_until_closed(self) -> str:
        """Serve the connection until it drops; returns why."""

    @abstractmethod
    async def send(self, message: OutboundMessage) -> None:
        """Hand one message to WhatsApp under its pre-assigned id; raises SendError."""

    async def mark_read(self, chat_jid: str, message_ids: list[str]) -> None:  # noqa: B027
        """Tell WhatsApp the messages were read (optional)."""

    async def perform(self, action: EngineAction) -> None:
        """Take one action at WhatsApp; returns once WhatsApp accepted it, raises
        ActionError. Only actions in the engine's ``Capabilities.actions`` reach it."""
        raise ActionError(f"this engine cannot {action.type}", permanent=True)

    @abstractmethod
    async def logout(self) -> None:
        """End the session at WhatsApp and forget local credentials."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect without logging out (shutdown, settings change)."""

    def update_settings(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def download_media_enabled(self, override: bool | None = None) -> bool:
        """Whether inbound media is fetched: the engine's override, else the account's
        ``download_media`` setting (default on)."""
        if override is not None:
            return override
        return bool(self.host.settings.get("download_media", True))
