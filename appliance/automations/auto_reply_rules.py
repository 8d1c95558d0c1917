"""Auto-reply rules: their conditions and actions (pydantic models, stored as JSON) and
the pure decision of which rules fire for a message.

A rule fires when it is active, its pattern matches the message's text
(``text_match``), every one of its conditions holds, and it is not cooling down in the
chat. Rules are tried in priority order (lowest first, then oldest); a rule with
``stop`` that matched ends the walk, also when it did not fire because it was cooling
down (it handled the message by staying quiet), so a catch-all rule further down does
not answer instead.

Conditions are a list of typed objects (all must hold), and actions too; both are
discriminated by ``type``. A new kind is one model in the union plus one entry in
``CONDITION_CHECKS`` (its check reads ``Facts``) or one branch where actions are
carried out (``auto_reply_step``). Conditions: ``chat_type``, ``first_message``,
``business_hours``, ``chat_tags`` (required / excluded tags of the chat) and
``status`` (the conversation's status once the message arrived). Actions: ``reply``
(text or media), ``quick_reply`` (a quick reply of the team inbox, with variables),
``tags`` (add / remove), ``assign`` (to a user, or nobody) and ``set_status``.

Conditions are evaluated on the state before any rule acts for the message: an
earlier rule's ``tags`` or ``set_status`` action does not change what a later rule's
conditions see for the same message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field, StringConstraints, TypeAdapter, model_validator

from appliance.automations import text_match
from appliance.errors import N_
from appliance.inbox.conversations import Status
from appliance.inbox.models import QuickReplyRef
from appliance.messaging.models import (
    BusinessHours,
    Context,
    Media,
    MessageContent,
    Text,
)
from appliance.schemas_base import Bool, Strict, number_only

# -- conditions ---------------------------------------------------------------------------


class ChatTypeCondition(Strict):
    """The chat is a private chat, or a group."""

    type: Literal["chat_type"]
    chat: Literal["private", "group"]


class FirstMessageCondition(Strict):
    """The message opens a conversation: the chat had no message before it (in either
    direction) or, with ``idle_s``, none in the ``idle_s`` seconds before it."""

    type: Literal["first_message"]
    idle_s: Annotated[int, Field(ge=60, le=31_536_000), BeforeValidator(number_only)] | None = (
        Field(
            default=None,
            description="A chat silent this long (seconds) opens a new conversation; "
            "null: only the very first message of a chat",
        )
    )


class BusinessHoursCondition(Strict):
    """The message arrived inside (or outside) the account's business hours, in the
    account's timezone (account settings `timezone`, `business_hours`). An account
    without business hours is always inside them."""

    type: Literal["business_hours"]
    when: Literal["inside", "outside"]


TagId = Annotated[int, Field(ge=1, le=2**53), BeforeValidator(number_only)]
TagIds = Annotated[list[TagId], Field(max_length=20)]


class ChatTagsCondition(Strict):
    """The chat carries every tag of `required` and none of `excluded` (tag ids of the
    account, `GET /api/accounts/{account}/tags`). A tag deleted since counts as absent
    from every chat."""

    type: Literal["chat_tags"]
    required: TagIds = Field(default_factory=list, description="Tags the chat must carry (all)")
    excluded: TagIds = Field(default_factory=list, description="Tags the chat must not carry (any)")

    @model_validator(mode="after")
    def _something(self) -> ChatTagsCondition:
        if not self.required and not self.excluded:
            raise ValueError(N_("give required and/or excluded tag ids"))
        both = sorted(set(self.required) & set(self.excluded))
        if both:
            raise ValueError(N_("tags both required and excluded: {tags}", tags=both))
        return self


class StatusCondition(Strict):
    """The conversation's status is one of `statuses`, as it is once the message
    arrived (a message reopens a resolved or snoozed chat: it is then `open`)."""

    type: Literal["status"]
    statuses: Annotated[list[Status], Field(min_length=1, max_length=4)]


Condition = Annotated[
    ChatTypeCondition
    | FirstMessageCondition
    | BusinessHoursCondition
    | ChatTagsCondition
    | StatusCondition,
    Field(discriminator="type"),
]

# -- actions ------------------------------------------------------------------------------


class ReplyMedia(Media):
    """A media reply: exactly one of `link` (http or https) and `id` (uploaded media)."""

    type: Literal["image", "document", "audio", "video"]


class ReplyAction(Strict):
    """Reply in the chat of the message, with text or with media (and a caption)."""

    type: Literal["reply"]
    text: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    media: ReplyMedia | None = None
    quote: Bool = Field(default=False, description="Quote the message replied to")

    @model_validator(mode="after")
    def _one_body(self) -> ReplyAction:
        if (self.text is None) == (self.media is None):
            raise ValueError(N_("a reply needs exactly one of text or media"))
        return self

    def content(self, trigger_message_id: str) -> MessageContent:
        """The message this action sends, as a send body without `to`."""
        context = Context(message_id=trigger_message_id) if self.quote else None
        if self.text is not None:
            return MessageContent(type="text", text=Text(body=self.text), context=context)
        assert self.media is not None
        media = Media.model_validate(self.media.model_dump(exclude={"type"}))
        return MessageContent.model_validate(
            {"type": self.media.type, self.media.type: media, "context": context}
        )


class QuickReplyAction(Strict):
    """Reply with a quick reply of the account (its text or media, `{{variables}}`
    rendered for the chat: `contact.name`, `chat.phone`, `agent.name` = the chat's
    assignee, and the custom `variables` given here)."""

    type: Literal["quick_reply"]
    quick_reply: QuickReplyRef
    quote: Bool = Field(default=False, description="Quote the message replied to")


class TagsAction(Strict):
    """Add and/or remove tags (ids of the account's tags) on the chat."""

    type: Literal["tags"]
    add: TagIds = Field(default_factory=list)
    remove: TagIds = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> TagsAction:
        if not self.add and not self.remove:
            raise ValueError(N_("give tag ids to add and/or remove"))
        both = sorted(set(self.add) & set(self.remove))
        if both:
            raise ValueError(N_("tags both added and removed: {tags}", tags=both))
        return self


class AssignAction(Strict):
    """Assign the chat to a user who works the account, or to nobody."""

    type: Literal["assign"]
    user_id: Annotated[int, Field(ge=1, le=2**53), BeforeValidator(number_only)] | None = Field(
        default=None, description="The user; absent or null takes the chat off its assignee"
    )


class SetStatusAction(Strict):
    """Set the conversation's status; `snoozed` needs `snooze_s` (how long, from the
    message's arrival)."""

    type: Literal["set_status"]
    status: Status
    snooze_s: Annotated[int, Field(ge=60, le=31_536_000), BeforeValidator(number_only)] | None = (
        Field(default=None, description="With `snoozed`: snooze this long (seconds)")
    )

    @model_validator(mode="after")
    def _snooze(self) -> SetStatusAction:
        if (self.status == "snoozed") != (self.snooze_s is not None):
            raise ValueError(N_("snooze_s goes with status snoozed, and only with it"))
        return self


Action = Annotated[
    ReplyAction | QuickReplyAction | TagsAction | AssignAction | SetStatusAction,
    Field(discriminator="type"),
]
AnyAction = ReplyAction | QuickReplyAction | TagsAction | AssignAction | SetStatusAction
SEND_ACTIONS = ("reply", "quick_reply")

CONDITIONS = TypeAdapter(list[Condition])
ACTIONS = TypeAdapter(list[Action])

MatchType = text_match.MatchType


# -- facts and decisions ------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What the conditions look at, for one message (gathered by the caller)."""

    text: str
    is_group: bool
    at: float  # when the message arrived (Unix time)
    timezone: str = "UTC"
    business_hours: BusinessHours | None = None
    # The chat's latest message before this one (Unix time), None if there is none.
    # Only needed (and gathered) when a rule has a first_message condition.
    previous_message_at: float | None = None
    # rule id -> when it last fired in this chat.
    last_fired: Mapping[str, float] = field(default_factory=dict)
    # The chat's tag ids (gathered when a rule has a chat_tags condition).
    chat_tags: frozenset[int] = frozenset()
    # The conversation's status once the message arrived (gathered when a rule has a
    # status condition; None: no such chat yet, which a new chat would start as open).
    status: Status | None = None


@dataclass(frozen=True)
class Rule:
    """A stored rule, ready to evaluate."""

    id: str
    name: str
    priority: int
    active: bool
    match_type: MatchType
    pattern: str
    conditions: Sequence[Any]
    actions: Sequence[AnyAction]
    cooldown_s: int
    stop: bool
    prepared: str = ""  # the folded pattern (text_match.prepare_pattern)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "prepared", text_match.prepare_pattern(self.match_type, self.pattern)
        )


Outcome = Literal["fired", "no_match", "inactive", "condition", "cooldown", "not_reached"]


class Verdict(NamedTuple):  # a tuple: made for every rule of every message
    rule: Rule
    outcome: Outcome
    detail: str | None = None  # the failing condition's type; the cooldown's end


@dataclass(frozen=True)
class Decision:
    verdicts: list[Verdict]

    @property
    def fired(self) -> list[Rule]:
        return [v.rule for v in self.verdicts if v.outcome == "fired"]

    @property
    def cooling(self) -> list[Rule]:
        return [v.rule for v in self.verdicts if v.outcome == "cooldown"]


# -- conditions' checks -------------------------------------------------------------------

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def in_business_hours(hours: BusinessHours | None, timezone: str, at: float) -> bool:
    """Whether Unix time ``at`` falls in an opening interval of its local weekday in
    ``timezone`` (ends excluded). No business hours set: always inside."""
    if hours is None:
        return True
    local = dt.datetime.fromtimestamp(at, ZoneInfo(timezone))
    clock = f"{local.hour:02d}:{local.minute:02d}"
    intervals = getattr(hours, _WEEKDAYS[local.weekday()])
    return any(i.start <= clock < i.end for i in intervals)


def _chat_type(cond: ChatTypeCondition, facts: Facts) -> bool:
    return facts.is_group == (cond.chat == "group")


def _first_message(cond: FirstMessageCondition, facts: Facts) -> bool:
    if facts.previous_message_at is None:
        return True
    return cond.idle_s is not None and facts.at - facts.previous_message_at >= cond.idle_s


def _business_hours(cond: BusinessHoursCondition, facts: Facts) -> bool:
    inside = in_business_hours(facts.business_hours, facts.timezone, facts.at)
    return inside == (cond.when == "inside")


def _chat_tags(cond: ChatTagsCondition, facts: Facts) -> bool:
    return all(t in facts.chat_tags for t in cond.required) and not any(
        t in facts.chat_tags for t in cond.excluded
    )


def _status(cond: StatusCondition, facts: Facts) -> bool:
    return (facts.status or "open") in cond.statuses


CONDITION_CHECKS: dict[str, Callable[[Any, Facts], bool]] = {
    "chat_type": _chat_type,
    "first_message": _first_message,
    "business_hours": _business_hours,
    "chat_tags": _chat_tags,
    "status": _status,
}


def condition_types(rules: Sequence[Rule]) -> frozenset[str]:
    """The condition types the active rules use (the caller gathers only their facts)."""
    return frozenset(c.type for r in rules if r.active for c in r.conditions)


def needs_previous_message(rules: Sequence[Rule]) -> bool:
    """Whether a rule looks at the chat's previous message (so the caller gathers it)."""
    return "first_message" in condition_types(rules)


def tag_ids(rule_conditions: Sequence[Any], actions: Sequence[Any]) -> list[int]:
    """Every tag id a rule's conditions and actions name, in order of first mention."""
    found: list[int] = []
    for item in [*rule_conditions, *actions]:
        for name in ("required", "excluded", "add", "remove"):
            for tag in getattr(item, name, None) or []:
                if tag not in found:
                    found.append(tag)
    return found


def decide(rules: Sequence[Rule], facts: Facts) -> Decision:
    """Which rules fire for a message, and why each other one does not.

    ``rules`` in the order they are tried (the store reads them so). Pure: the
    clock is ``facts.at``.
    """
    text = text_match.prepare_text(facts.text)
    verdicts: list[Verdict] = []
    stopped = False
    for rule in rules:
        if stopped:
            verdicts.append(Verdict(rule, "not_reached"))
            continue
        if not rule.active:
            verdicts.append(Verdict(rule, "inactive"))
            continue
        if not text_match.matches_prepared(rule.match_type, rule.prepared, text):
            verdicts.append(Verdict(rule, "no_match"))
            continue
        failing = next(
            (c.type for c in rule.conditions if not CONDITION_CHECKS[c.type](c, facts)), None
        )
        if failing is not None:
            verdicts.append(Verdict(rule, "condition", failing))
            continue
        stopped = rule.stop
        last = facts.last_fired.get(rule.id)
        if rule.cooldown_s and last is not None and facts.at - last < rule.cooldown_s:
            until = dt.datetime.fromtimestamp(last + rule.cooldown_s, dt.UTC)
            verdicts.append(Verdict(rule, "cooldown", until.isoformat()))
            continue
        verdicts.append(Verdict(rule, "fired"))
    return Decision(verdicts)
