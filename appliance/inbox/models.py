"""Request and answer shapes of tags, private notes, notifications and quick replies.

The API's routes (``appliance.api.routes.inbox_organize``) and the send route
(``{"type": "quick_reply", ...}``) use them; the stores return the answer models.
Where a rule can be written in JSON Schema it is (patterns, lengths, one-of), so the
spec says what is accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from appliance.errors import N_
from appliance.inbox import quick_replies, tags
from appliance.inbox.actor import Actor as Actor  # the one actor type, re-exported
from appliance.messaging.models import (
    RECIPIENT_PATTERN,
    Context,
    MediaIdStr,
    one_media_source,
    recipient_jid,
)
from appliance.schemas_base import Bool, Strict

MAX_NOTE_BODY = 4000
MAX_QUICK_REPLY_BODY = 4096
MAX_BULK_TARGETS = 1000
MAX_BULK_TAGS = 50
MAX_ID = 2**62

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
TagName = Annotated[
    str,
    StringConstraints(max_length=tags.MAX_TAG_NAME, pattern=tags.TAG_NAME_PATTERN),
    Field(
        description="1 to 60 characters, no control characters; surrounding spaces are "
        "dropped; unique per account, ignoring case",
        examples=["VIP"],
    ),
]
Color = Annotated[
    str,
    StringConstraints(pattern=r"^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"),
    Field(description="#rgb or #rrggbb; stored as lower-case #rrggbb", examples=["#16a34a"]),
]
ChatIdStr = Annotated[
    str,
    StringConstraints(max_length=64, pattern=RECIPIENT_PATTERN),
    Field(description="A chat or contact id (jid), or +E.164 for a person"),
]
Recipient = Annotated[
    str,
    StringConstraints(max_length=64, pattern=RECIPIENT_PATTERN),
    Field(description="E.164 number (+905551112233) or chat id (...@s.whatsapp.net, ...@g.us)"),
]
# The pattern is checked by quick_replies.clean_shortcut (the models' validators), whose
# refusal says what a shortcut is (and is translated on the panel's pages); a pattern
# constraint here would refuse first with the bare regular expression.
Shortcut = Annotated[
    str,
    StringConstraints(max_length=64),
    Field(
        description="/ and 1 to 32 letters, digits, _ or - (a missing / is added; stored "
        "lower-case)",
        examples=["/price"],
        json_schema_extra={"pattern": r"^/?[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"},
    ),
]
QuickReplyName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"\S")]
QuickReplyBody = Annotated[
    str,
    StringConstraints(max_length=MAX_QUICK_REPLY_BODY, pattern=r"\S"),
    Field(
        description="Text with {{variables}}: contact.name, agent.name, chat.phone, or "
        "custom names given at send time; {{name|default}} gives a default. The caption "
        "when there is media (then at most 1024 characters once rendered)."
    ),
]
VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
VariableValue = Annotated[str, StringConstraints(max_length=quick_replies.MAX_VARIABLE_VALUE)]
Variables = Annotated[
    dict[VariableName, VariableValue],
    Field(
        max_length=quick_replies.MAX_VARIABLES,
        description="Values of the quick reply's custom variables (by name)",
    ),
]


def _no_nulls(model: BaseModel, names: tuple[str, ...]) -> None:
    """Fields the spec says are never null (absent means the default) refuse null."""
    for name in names:
        if name in model.model_fields_set and getattr(model, name) is None:
            raise ValueError(N_("leave {name} out instead of sending null", name=name))


def _is_recipient(value: str) -> str:
    recipient_jid(value)
    return value


def _check_template(value: str | None) -> str | None:
    if value is not None:
        quick_replies.check_template(value)
    return value


def _body_or_media(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [{"required": ["body"]}, {"required": ["media"]}]


# -- who did it --------------------------------------------------------------------------


class ActorRef(BaseModel):
    """Who made a change: a user (panel session) or an API key, by name as it was
    (``inbox.actor.Actor.as_ref()``)."""

    principal: str = Field(description="`user:ID` or `key:ID`")
    name: str


# -- tags --------------------------------------------------------------------------------


class TagRef(BaseModel):
    id: int
    name: str
    color: str


class TagOut(TagRef):
    account_id: str
    chat_count: int = Field(description="Chats carrying the tag")
    contact_count: int = Field(description="Contacts carrying the tag")
    created_at: float
    updated_at: float


class TagPage(BaseModel):
    items: list[TagOut]
    next: str | None


class TagCreateIn(Strict):
    name: TagName
    color: Color | SkipJsonSchema[None] = Field(
        default=None, description="Picked from a palette by the name if absent"
    )

    _clean = field_validator("name")(lambda v: tags.clean_tag_name(v))

    @model_validator(mode="after")
    def _not_null(self) -> TagCreateIn:
        _no_nulls(self, ("color",))
        return self


class TagUpdateIn(Strict):
    """Rename and/or recolour; every chat and contact with the tag shows the change."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    name: TagName | SkipJsonSchema[None] = None
    color: Color | SkipJsonSchema[None] = None

    @field_validator("name")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return None if value is None else tags.clean_tag_name(value)

    @model_validator(mode="after")
    def _something(self) -> TagUpdateIn:
        _no_nulls(self, ("name", "color"))
        if self.name is None and self.color is None:
            raise ValueError(N_("give name and/or color"))
        return self


class TagApplyIn(Strict):
    """Add and/or remove tags on many chats and contacts at once: all or nothing.

    Adding a tag a chat has, or removing one it lacks, changes nothing and is no error.
    """

    add: list[Id] = Field(default_factory=list, max_length=MAX_BULK_TAGS)
    remove: list[Id] = Field(default_factory=list, max_length=MAX_BULK_TAGS)
    chats: list[ChatIdStr] = Field(default_factory=list, max_length=MAX_BULK_TARGETS)
    contacts: list[ChatIdStr] = Field(default_factory=list, max_length=MAX_BULK_TARGETS)

    @field_validator("chats", "contacts")
    @classmethod
    def _jids(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(recipient_jid(v) for v in value))


class TagApplyOut(BaseModel):
    chats_changed: int = Field(description="Chats whose tags changed")
    contacts_changed: int = Field(description="Contacts whose tags changed")


class ContactTagsOut(BaseModel):
    contact_id: str
    tags: list[TagRef]


# -- notes and notifications -------------------------------------------------------------


class Mention(BaseModel):
    user_id: int
    username: str


class NoteOut(BaseModel):
    id: int
    account_id: str
    chat_id: str
    author: ActorRef
    body: str
    mentions: list[Mention] = Field(
        description="Users mentioned with @name who may see this chat (each notified once)"
    )
    created_at: float
    edited_at: float | None


class NotePage(BaseModel):
    items: list[NoteOut]
    next: str | None


class NoteIn(Strict):
    body: Annotated[str, StringConstraints(max_length=MAX_NOTE_BODY, pattern=r"\S")] = Field(
        description="The note (never sent to WhatsApp); `@name` mentions a user, who is "
        "notified when they may see this chat"
    )


class NotificationOut(BaseModel):
    id: int
    kind: Literal["mention"]
    account_id: str
    chat_id: str
    note_id: int
    excerpt: str = Field(description="The start of the note as it is now")
    by: ActorRef | None
    created_at: float
    read_at: float | None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next: str | None
    unread_count: int = Field(description="Your unread notifications in the accounts you see")


class NotificationsReadIn(Strict):
    """Mark some of your notifications (ids) or all of them read, or unread again."""

    ids: list[Id] | SkipJsonSchema[None] = Field(
        default=None, max_length=500, description="These; absent: all of yours"
    )
    read: Bool = Field(default=True, description="false marks them unread")

    @model_validator(mode="after")
    def _not_null(self) -> NotificationsReadIn:
        _no_nulls(self, ("ids",))
        return self


class NotificationsReadOut(BaseModel):
    changed: int
    unread_count: int


# -- quick replies -----------------------------------------------------------------------


class QuickReplyMedia(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=one_media_source)

    type: Literal["image", "document", "audio", "video"]
    link: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://")] | None = Field(
        default=None, description="An http(s) URL, checked like a send's media link"
    )
    id: MediaIdStr | None = Field(default=None, description="Media uploaded to this account")
    filename: Annotated[str, StringConstraints(max_length=255)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> QuickReplyMedia:
        if (self.link is None) == (self.id is None):
            raise ValueError(
                N_("give exactly one of link (an http(s) URL) or id (an uploaded media id)")
            )
        return self


class QuickReplyIn(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_body_or_media)

    name: QuickReplyName
    shortcut: Shortcut
    body: QuickReplyBody | SkipJsonSchema[None] = None
    media: QuickReplyMedia | SkipJsonSchema[None] = None

    _shortcut = field_validator("shortcut")(lambda v: quick_replies.clean_shortcut(v))
    _template = field_validator("body")(_check_template)

    @model_validator(mode="after")
    def _something(self) -> QuickReplyIn:
        _no_nulls(self, ("body", "media"))
        if self.body is None and self.media is None:
            raise ValueError(N_("give a body, media, or both"))
        return self


class QuickReplyUpdateIn(Strict):
    """The fields to change; `body` or `media` null removes it (one of them must stay)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    name: QuickReplyName | SkipJsonSchema[None] = None
    shortcut: Shortcut | SkipJsonSchema[None] = None
    body: QuickReplyBody | None = None
    media: QuickReplyMedia | None = None

    @field_validator("shortcut")
    @classmethod
    def _shortcut(cls, value: str | None) -> str | None:
        return None if value is None else quick_replies.clean_shortcut(value)

    _template = field_validator("body")(_check_template)

    @model_validator(mode="after")
    def _something(self) -> QuickReplyUpdateIn:
        if not self.model_fields_set:
            raise ValueError(N_("give at least one field to change"))
        _no_nulls(self, ("name", "shortcut"))
        return self


class QuickReplyOut(BaseModel):
    id: int
    account_id: str
    name: str
    shortcut: str
    body: str | None
    media: QuickReplyMedia | None
    variables: list[str] = Field(description="The custom variables a send must give")
    created_by: str | None
    created_at: float
    updated_at: float


class QuickReplyPage(BaseModel):
    items: list[QuickReplyOut]
    next: str | None


class QuickReplyRef(Strict):
    id: Id
    variables: Variables = Field(default_factory=dict)


class QuickReplySendIn(Strict):
    """Send a quick reply: rendered for this chat, then queued like any other send."""

    messaging_product: Literal["whatsapp"] | None = None
    to: Recipient
    type: Literal["quick_reply"]
    quick_reply: QuickReplyRef
    context: Context | None = None

    _to = field_validator("to")(_is_recipient)


class QuickReplyRenderIn(Strict):
    """Preview a quick reply for a chat without sending it."""

    to: Recipient
    variables: Variables = Field(default_factory=dict)

    _to = field_validator("to")(_is_recipient)


class QuickReplyRenderOut(BaseModel):
    type: str = Field(description="text, or the media type")
    content: dict[str, Any] = Field(description="The message content as it would be sent")
