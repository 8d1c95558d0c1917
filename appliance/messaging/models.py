"""Typed shapes of the messaging core: accounts, message content, events.

Message content follows the WhatsApp Cloud API, which integrators already know::

    {"to": "+905551112233", "type": "text", "text": {"body": "hi"}}
    {"to": ..., "type": "image", "image": {"link": URL | "id": MEDIA_ID, "caption": ...}}
    {"to": ..., "type": "reaction", "reaction": {"message_id": ID, "emoji": "👍"}}
    a reply adds "context": {"message_id": ID}
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)

from appliance.engines import registry as engines
from appliance.errors import N_
from appliance.schemas_base import Bool, Int, Strict, number_only

if TYPE_CHECKING:
    EngineName = str
else:
    # The engines of this version (the `engine` enum of the spec), from the registry.
    EngineName = Literal[engines.engine_names()]

AccountIdStr = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# WhatsApp ids: Web ids are hex, Cloud API wamids are base64 (with + / =).
MessageIdStr = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:+/=-]{1,256}$")]
MediaIdStr = Annotated[str, StringConstraints(pattern=r"^med_[A-Za-z0-9_-]{8,64}$")]

ACCOUNT_STATES = ("disconnected", "connecting", "pairing", "connected", "logged_out", "failed")
MESSAGE_STATES = ("queued", "sending", "sent", "delivered", "read", "failed", "received")
MEDIA_TYPES = ("image", "document", "audio", "video", "sticker")
EVENT_TYPES = (
    "message.received",
    "message.sent",
    "message.delivered",
    "message.read",
    "message.failed",
    "message.deleted",
    "account.status",
    "webhook.endpoint_disabled",
    "webhook.test",
    "script.run",
    "script.paused",
    "contact.updated",
    "contacts.imported",
    # scheduled messages (appliance/automations/scheduler.py, api/routes/schedules.py)
    "schedule.created",
    "schedule.updated",
    "schedule.paused",
    "schedule.resumed",
    "schedule.deleted",
    "schedule.run",
    "chat.updated",
    # history sync progress, running totals (appliance/messaging/history_store.py)
    "account.sync",
    "chat.assigned",
    # the team inbox (appliance.inbox), each with who did it (`by`)
    "note.created",
    "note.updated",
    "note.deleted",
    "tag.created",
    "tag.updated",
    "tag.deleted",
    "user.availability",
    "quick_reply.created",
    "quick_reply.updated",
    "quick_reply.deleted",
    "automation.fired",
    "auto_reply.changed",
    # built-in alerts raised and resolved by the worker (appliance/worker/monitor.py) and
    # by scheduled backups (appliance/ops/scheduled.py)
    "system.alert",
    # actions that reach WhatsApp (appliance/messaging/actions.py), and what they change
    "action.completed",
    "action.failed",
    "message.edited",
)

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_JID = re.compile(r"^([0-9]{6,20}(-[0-9]{1,20})?)@(s\.whatsapp\.net|g\.us)$")
# Either of the two, as the spec's pattern for `to` and `from`.
RECIPIENT_PATTERN = r"^(\+[1-9][0-9]{6,14}|[0-9]{6,20}(-[0-9]{1,20})?@(s\.whatsapp\.net|g\.us))$"
ContentPart = Literal[
    "text",
    "image",
    "document",
    "audio",
    "video",
    "reaction",
    "template",
    "location",
    "contacts",
    "interactive",
    "sticker",
]
CONTENT_PARTS: tuple[ContentPart, ...] = get_args(ContentPart)


def recipient_jid(value: str) -> str:
    """An E.164 number (+905551112233) or a chat id (...@s.whatsapp.net, ...@g.us) as a jid.

    Raises ValueError with a message meant for the caller.
    """
    value = value.strip()
    if _E164.match(value):
        return f"{value[1:]}@s.whatsapp.net"
    if _JID.match(value):
        return value
    raise ValueError(
        N_(
            "must be an E.164 phone number such as +905551112233, or a chat id such as "
            "905551112233@s.whatsapp.net or 120363025246125244@g.us"
        )
    )


def jid_phone(jid: str) -> str | None:
    user, _, server = jid.partition("@")
    return f"+{user}" if server == "s.whatsapp.net" and user.isdigit() else None


# -- accounts ----------------------------------------------------------------------------


_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
_HHMM_END = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"


class OpeningHours(Strict):
    """One opening interval of a day, local time of the account's timezone."""

    start: Annotated[str, StringConstraints(pattern=_HHMM)] = Field(description="HH:MM")
    end: Annotated[str, StringConstraints(pattern=_HHMM_END)] = Field(
        description="HH:MM (24:00 for midnight at the end of the day), after `start`"
    )

    @model_validator(mode="after")
    def _ordered(self) -> OpeningHours:
        if self.end <= self.start:
            raise ValueError(N_("end must be after start (split an interval that spans midnight)"))
        return self


_DAY: Any = Field(default_factory=list, max_length=8)


class BusinessHours(Strict):
    """Opening intervals per weekday in the account's `timezone`; a day not given, or
    given as [], is closed."""

    mon: list[OpeningHours] = _DAY
    tue: list[OpeningHours] = _DAY
    wed: list[OpeningHours] = _DAY
    thu: list[OpeningHours] = _DAY
    fri: list[OpeningHours] = _DAY
    sat: list[OpeningHours] = _DAY
    sun: list[OpeningHours] = _DAY


def check_timezone(value: str) -> str:
    """An IANA timezone name that this machine knows (Europe/Istanbul, UTC)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: e.g. a directory
        raise ValueError(
            N_("unknown IANA timezone {name}, e.g. Europe/Istanbul or UTC", name=repr(value))
        ) from None
    return value


class AccountSettings(Strict):
    """Per-account behaviour, kept from the original panel's settings."""

    mark_as_read: Bool = Field(default=False, description="Mark inbound messages read")
    download_media: Bool = Field(default=True, description="Store inbound media")
    history_limit: Int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="History sync imports at most this many messages per chat, the newest (0: all)",
    )
    history_days: Int = Field(
        default=0,
        ge=0,
        le=36_500,
        description="History sync imports only messages of the last this many days (0: all)",
    )
    # Team inbox (runbook/inbox.md).
    auto_assign: Bool = Field(
        default=False,
        description="Assign new and reopened chats round-robin among the available users",
    )
    auto_assign_limit: Int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Auto-assignment skips users holding this many open or pending chats "
        "of the account (0: no limit)",
    )
    mark_read_by_users: Bool = Field(
        default=False,
        description="When a user reads a chat (POST .../read), mark its messages read on "
        "WhatsApp too",
    )
    archive_on_whatsapp: Bool = Field(
        default=False,
        description="When a user archives or unarchives a chat (PATCH .../chats/{chat}), "
        "do it on WhatsApp too, where the engine can (a queued action)",
    )
    timezone: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$", max_length=64)
    ] = Field(
        default="UTC",
        description="The account's IANA timezone (Europe/Istanbul): business hours are "
        "its local time",
    )
    business_hours: BusinessHours | None = Field(
        default=None,
        description="Opening hours for automations' business-hours condition; null: "
        "not set (always inside business hours)",
    )

    _timezone = field_validator("timezone")(classmethod(lambda cls, v: check_timezone(v)))


class SandboxSettings(Strict):
    """The sandbox engine's simulation knobs (tests and try-outs)."""

    pairing_delay_ms: int = Field(default=300, ge=0, le=60_000)
    delivered_after_ms: int = Field(default=200, ge=0, le=3_600_000)
    read_after_ms: int = Field(default=800, ge=0, le=3_600_000)
    fail_transient_attempts: int = Field(
        default=0, ge=0, le=100, description="Each send fails transiently this many times first"
    )
    fail_transient_probability: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Each send attempt also fails transiently with this probability",
    )
    fail_permanent_recipients: list[str] = Field(
        default_factory=list, max_length=1000, description="Sends to these always fail"
    )
    phone: str = Field(default="+10000000000", pattern=r"^\+[1-9][0-9]{6,14}$")


class AccountCreateIn(Strict):
    id: AccountIdStr | None = Field(default=None, description="Chosen id; generated if absent")
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    engine: EngineName = engines.DEFAULT_ENGINE
    engine_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="The engine's own settings (see runbook/messaging.md): sandbox "
        "simulation knobs, web pairing and watchdog times, cloud phone_number_id, "
        "access_token, app_secret, verify_token, ...; unknown keys are refused",
    )
    settings: AccountSettings = Field(default_factory=AccountSettings)


class AccountUpdateIn(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    engine_settings: dict[str, Any] | None = None
    settings: AccountSettings | None = None


class AccountOut(BaseModel):
    id: str
    name: str
    engine: str
    engine_settings: dict[str, Any]
    settings: AccountSettings
    state: str
    state_reason: str | None
    phone: str | None
    created_at: float
    updated_at: float


class SyncStatus(BaseModel):
    """History sync of the account (web engine): running totals that only grow."""

    state: Literal["running", "done"]
    progress: int = Field(description="WhatsApp's own percentage, 0-100")
    chunks: int = Field(description="History chunks imported")
    messages: int = Field(description="Messages stored")
    chats: int = Field(description="Chats seen")
    contacts: int = Field(description="Contact names stored")
    skipped: int = Field(description="Messages left out by history_limit / history_days")
    started_at: float
    updated_at: float


class AccountStatus(BaseModel):
    id: str
    state: Literal["disconnected", "connecting", "pairing", "connected", "logged_out", "failed"]
    reason: str | None
    phone: str | None
    desired: str
    updated_at: float
    sync: SyncStatus | None = Field(
        default=None, description="History sync progress; null before the first chunk"
    )


# -- message content ---------------------------------------------------------------------


class Text(Strict):
    body: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    preview_url: Bool = False


def one_media_source(schema: dict[str, Any]) -> None:
    """In the spec: exactly one of `link` (http or https) and `id`, as _one_source checks
    (also quick replies' media, inbox/models.py)."""
    link = {"type": "string", "maxLength": 2048, "pattern": "^https?://"}
    media_id = schema["properties"]["id"]["anyOf"][0]
    schema["oneOf"] = [
        {"required": ["link"], "properties": {"link": link, "id": {"type": "null"}}},
        {"required": ["id"], "properties": {"id": media_id, "link": {"type": "null"}}},
    ]


def _content_matches_type(schema: dict[str, Any]) -> None:
    """In the spec: `type` names the one content field given (as _matches_type checks)."""
    variants = []
    for part in CONTENT_PARTS:
        properties: dict[str, Any] = {"type": {"const": part}}
        for other in CONTENT_PARTS:
            options = schema["properties"][other]["anyOf"]
            properties[other] = options[0] if other == part else {"type": "null"}
        variants.append({"required": ["type", part], "properties": properties})
    schema["oneOf"] = variants


class Media(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=one_media_source)

    link: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        default=None,
        description="An http(s) URL of the file. Refused with 400 when the send is made if "
        "it reaches a non-public address outside OUTBOUND_ALLOW_NETWORKS (loopback, private, "
        "link-local, cloud metadata), carries user:password@, or is not http(s).",
    )
    id: MediaIdStr | None = None
    caption: Annotated[str, StringConstraints(max_length=1024)] | None = None
    filename: Annotated[str, StringConstraints(max_length=255)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Media:
        if (self.link is None) == (self.id is None):
            raise ValueError(
                N_("give exactly one of link (an http(s) URL) or id (an uploaded media id)")
            )
        if self.link is not None and not self.link.startswith(("http://", "https://")):
            raise ValueError(N_("link must be an http:// or https:// URL"))
        return self


class Reaction(Strict):
    message_id: MessageIdStr
    emoji: Annotated[str, StringConstraints(max_length=16)] = Field(
        description="One emoji; empty removes the reaction"
    )


class Location(Strict):
    """A place (the Cloud API's `location`)."""

    # int | float: a stored location comes back byte for byte (2 stays 2, not 2.0).
    latitude: Annotated[int | float, Field(ge=-90, le=90), BeforeValidator(number_only)]
    longitude: Annotated[int | float, Field(ge=-180, le=180), BeforeValidator(number_only)]
    name: Annotated[str, StringConstraints(max_length=1000)] | None = None
    address: Annotated[str, StringConstraints(max_length=1000)] | None = None


class ContactName(Strict):
    formatted_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    first_name: Annotated[str, StringConstraints(max_length=256)] | None = None
    last_name: Annotated[str, StringConstraints(max_length=256)] | None = None


class ContactPhone(Strict):
    phone: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    type: Annotated[str, StringConstraints(max_length=32)] | None = Field(
        default=None, description="CELL, MAIN, IPHONE, HOME, WORK"
    )
    wa_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{6,20}$")] | None = Field(
        default=None, description="The WhatsApp id (digits) of the number"
    )


class ContactCard(Strict):
    """One contact card (the Cloud API's `contacts[]`, names and phones)."""

    name: ContactName
    phones: Annotated[list[ContactPhone], Field(max_length=20)] = Field(default_factory=list)


# Interactive messages' text limits (the Cloud API's).
Short20 = Annotated[str, StringConstraints(min_length=1, max_length=20)]
Short24 = Annotated[str, StringConstraints(min_length=1, max_length=24)]
Short60 = Annotated[str, StringConstraints(min_length=1, max_length=60)]
Short72 = Annotated[str, StringConstraints(min_length=1, max_length=72)]
Short200 = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Short256 = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Short1024 = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class InteractiveText(Strict):
    text: Short1024


class InteractiveHeader(Strict):
    type: Literal["text"]
    text: Short60


class ReplyButtonReply(Strict):
    id: Short256
    title: Short20


class ReplyButton(Strict):
    type: Literal["reply"]
    reply: ReplyButtonReply


class ListRow(Strict):
    id: Short200
    title: Short24
    description: Short72 | None = None


class ListSection(Strict):
    title: Short24 | None = None
    rows: Annotated[list[ListRow], Field(min_length=1, max_length=10)]


class InteractiveFooter(Strict):
    text: Short60


class ButtonsAction(Strict):
    buttons: Annotated[list[ReplyButton], Field(min_length=1, max_length=3)] = Field(
        description="1 to 3 reply buttons"
    )


class ListAction(Strict):
    button: Short20 = Field(description="The label of the button that opens the list")
    sections: Annotated[list[ListSection], Field(min_length=1, max_length=10)] = Field(
        description="Up to 10 sections, 10 rows in all"
    )


class _InteractiveBase(Strict):
    header: InteractiveHeader | None = None
    body: InteractiveText
    footer: InteractiveFooter | None = None


class InteractiveButtons(_InteractiveBase):
    """Reply buttons (the Cloud API's `interactive` of type button)."""

    type: Literal["button"]
    action: ButtonsAction


class InteractiveList(_InteractiveBase):
    """A list to pick from (the Cloud API's `interactive` of type list)."""

    type: Literal["list"]
    action: ListAction

    @property
    def rows(self) -> int:
        """Rows in all sections: at most MAX_LIST_ROWS in a send (``messaging.sends``
        refuses more with a 422; a rule between fields, which the schema cannot say)."""
        return sum(len(s.rows) for s in self.action.sections)


MAX_LIST_ROWS = 10  # the Cloud API's limit for a list, over all its sections


# Reply buttons or a list; the type says which, and the schema says what each needs.
Interactive = Annotated[InteractiveButtons | InteractiveList, Field(discriminator="type")]


class TemplateLanguage(Strict):
    code: Annotated[str, StringConstraints(min_length=2, max_length=16)]


class Template(Strict):
    """A pre-approved template (Cloud API), required outside the 24-hour window."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=512)]
    language: TemplateLanguage
    components: list[dict[str, Any]] = Field(default_factory=list, max_length=20)


class Context(Strict):
    message_id: MessageIdStr


# One class per content type, told apart by ``type`` (a pydantic discriminated union):
# the flat body above is what the API validates (its spec and error messages), and
# ``MessageContent.typed()`` turns it into one of these, which is what travels inside:
# a send's stored content, what the send loop hands an engine
# (``OutboundMessage.content``) and ``MessageOut.content``. A new send type is one more
# class here, added to ``Content``.


class _TypedContent(Strict):
    """What every content class answers; ``type`` names the field holding its part."""

    type: str  # each class narrows it to its one Literal

    @property
    def media(self) -> Media | None:
        return None

    @property
    def body(self) -> str | None:
        return None

    @property
    def reply_to(self) -> str | None:
        """The message this one answers: the quoted one, or the reacted-to one."""
        context: Context | None = getattr(self, "context", None)
        return context.message_id if context is not None else None


class TextContent(_TypedContent):
    type: Literal["text"]
    text: Text
    context: Context | None = None

    @property
    def body(self) -> str | None:
        return self.text.body


class _MediaContent(_TypedContent):
    @property
    def media(self) -> Media | None:
        media: Media = getattr(self, self.type)
        return media

    @property
    def body(self) -> str | None:
        return self.media.caption if self.media is not None else None


class ImageContent(_MediaContent):
    type: Literal["image"]
    image: Media
    context: Context | None = None


class DocumentContent(_MediaContent):
    type: Literal["document"]
    document: Media
    context: Context | None = None


class AudioContent(_MediaContent):
    type: Literal["audio"]
    audio: Media
    context: Context | None = None


class VideoContent(_MediaContent):
    type: Literal["video"]
    video: Media
    context: Context | None = None


class StickerContent(_MediaContent):
    """A sticker (WebP; the web engine converts a PNG or JPEG upload, the Cloud API
    takes WebP only). No caption, no filename."""

    type: Literal["sticker"]
    sticker: Media
    context: Context | None = None


class ReactionContent(_TypedContent):
    type: Literal["reaction"]
    reaction: Reaction
    context: Context | None = None

    @property
    def reply_to(self) -> str | None:
        return self.reaction.message_id


class TemplateContent(_TypedContent):
    type: Literal["template"]
    template: Template
    context: Context | None = None


class LocationContent(_TypedContent):
    type: Literal["location"]
    location: Location
    context: Context | None = None

    @property
    def body(self) -> str | None:
        parts = [p for p in (self.location.name, self.location.address) if p]
        return " ".join(parts) or None


class ContactsContent(_TypedContent):
    type: Literal["contacts"]
    contacts: Annotated[list[ContactCard], Field(min_length=1, max_length=20)]
    context: Context | None = None

    @property
    def body(self) -> str | None:
        return ", ".join(c.name.formatted_name for c in self.contacts)


class InteractiveContent(_TypedContent):
    type: Literal["interactive"]
    interactive: Interactive
    context: Context | None = None

    @property
    def body(self) -> str | None:
        return self.interactive.body.text


Content = Annotated[
    TextContent
    | ImageContent
    | DocumentContent
    | AudioContent
    | VideoContent
    | ReactionContent
    | TemplateContent
    | LocationContent
    | ContactsContent
    | InteractiveContent
    | StickerContent,
    Field(discriminator="type"),
]
CONTENT: TypeAdapter[Content] = TypeAdapter(Content)


class ReceivedContent(BaseModel):
    """Content an engine recorded that is not one of the send types as sent: inbound
    locations, stickers, unsupported kinds, media with download details, ... Kept as
    given (``type`` first, then the rest in stored order)."""

    model_config = ConfigDict(extra="allow")

    type: str

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, **(self.model_extra or {})}


# A stored message's content: a send type when it is one exactly, else as received.
StoredContent = Annotated[Content | ReceivedContent, Field(union_mode="left_to_right")]
STORED_CONTENT: TypeAdapter[StoredContent] = TypeAdapter(StoredContent)


def content_dict(content: Content | ReceivedContent) -> dict[str, Any]:
    """The JSON object of a content, exactly as it was given (unset defaults left out)."""
    if isinstance(content, ReceivedContent):
        return content.as_dict()
    return content.model_dump(mode="json", exclude_unset=True)


class MessageContent(Strict):
    """The content shared by sends and sandbox inbound."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_content_matches_type)

    type: ContentPart
    text: Text | None = None
    image: Media | None = None
    document: Media | None = None
    audio: Media | None = None
    video: Media | None = None
    reaction: Reaction | None = None
    template: Template | None = None
    location: Location | None = None
    contacts: Annotated[list[ContactCard], Field(min_length=1, max_length=20)] | None = None
    interactive: Interactive | None = None
    sticker: Media | None = Field(
        default=None, description="A sticker: WebP (the web engine converts PNG and JPEG)"
    )
    context: Context | None = None

    @model_validator(mode="after")
    def _matches_type(self) -> MessageContent:
        parts = CONTENT_PARTS
        given = [p for p in parts if getattr(self, p) is not None]
        if given != [self.type]:
            raise ValueError(N_("type {type} needs exactly the field {type}", type=repr(self.type)))
        if self.sticker is not None and (self.sticker.caption or self.sticker.filename):
            raise ValueError(N_("a sticker has no caption or filename"))
        return self

    @property
    def media(self) -> Media | None:
        return getattr(self, self.type) if self.type in MEDIA_TYPES else None

    @property
    def body(self) -> str | None:
        if self.text is not None:
            return self.text.body
        if self.location is not None or self.contacts is not None or self.interactive is not None:
            return self.typed().body
        media = self.media
        return media.caption if media is not None else None

    def typed(self) -> Content:
        """This content as its class in ``Content`` (the one part its ``type`` names)."""
        fields: dict[str, Any] = {"type": self.type, self.type: getattr(self, self.type)}
        if self.context is not None:
            fields["context"] = self.context
        return CONTENT.validate_python(fields)


class SendMessageIn(MessageContent):
    messaging_product: Literal["whatsapp"] | None = None  # accepted for Cloud API clients
    to: Annotated[str, StringConstraints(max_length=64, pattern=RECIPIENT_PATTERN)] = Field(
        description="E.164 number (+905551112233) or chat id (...@s.whatsapp.net, ...@g.us)"
    )

    @field_validator("to")
    @classmethod
    def _valid_recipient(cls, value: str) -> str:
        recipient_jid(value)
        return value


class InboundIn(MessageContent):
    """Sandbox inbound: the same shape with ``from`` instead of ``to``."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, json_schema_extra=_content_matches_type
    )

    from_: Annotated[str, StringConstraints(max_length=64, pattern=RECIPIENT_PATTERN)] = Field(
        alias="from"
    )
    id: MessageIdStr | None = Field(default=None, description="WhatsApp id; generated if absent")
    name: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        default=None, description="Sender's profile name"
    )

    @field_validator("from_")
    @classmethod
    def _valid_sender(cls, value: str) -> str:
        recipient_jid(value)
        return value


class MessageOut(BaseModel):
    id: str
    account_id: str
    chat_id: str
    direction: Literal["in", "out"]
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    type: str
    content: Annotated[
        StoredContent,
        # The spec keeps its open object: received content can be any kind.
        WithJsonSchema({"additionalProperties": True, "type": "object", "title": "Content"}),
    ]
    status: str
    error: str | None = None
    reply_to: str | None = None
    timestamp: float | None = None
    created_at: float
    updated_at: float
    deleted_at: float | None = Field(
        default=None, description="When the sender deleted it for everyone; content is kept"
    )
    origin: Literal["api", "phone", "automation"] | None = Field(
        default=None,
        description="Who made an outbound message: the HTTP API, the phone (or another "
        "linked device), or an automation; null for inbound",
    )
    sender_name: str | None = Field(
        default=None,
        description="Inbound: the sender's WhatsApp name as the message carried it (in "
        "groups, who wrote it)",
    )

    model_config = ConfigDict(populate_by_name=True)

    @field_serializer("content")
    def _content_as_stored(self, content: Content | ReceivedContent) -> dict[str, Any]:
        return content_dict(content)


class SendAccepted(BaseModel):
    id: str
    status: Literal["queued"] = "queued"
    account_id: str
    to: str


class EventOut(BaseModel):
    id: int
    type: str
    account_id: str | None
    created_at: float
    data: dict[str, Any]
