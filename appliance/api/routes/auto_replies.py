"""Auto-reply rules of an account: list, create, read, change, delete, and a test that
answers which rule would fire for a sample message, without sending anything.

Managing them needs ``automations.manage`` (managers and admins); agents get 403.
Regexes are compiled with RE2 when a rule is saved: an invalid or unsupported pattern
is a 400 naming it (``issues[].path`` = ``pattern``).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from quart import Blueprint, Response
from quart_schema import document_response, tag

from appliance.api.access import requires
from appliance.api.accounts_access import account_for
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import responds
from appliance.api.routes.messages import check_media_link
from appliance.api.schemas import Bool, ErrorBody, Strict, number_only
from appliance.api.state import db as _db
from appliance.api.validation import issues_from, json_body
from appliance.auth.permissions import Permission
from appliance.automations import auto_reply_store as store
from appliance.automations import text_match
from appliance.automations.auto_reply_rules import (
    Condition,
    ReplyAction,
    Rule,
    decide,
    in_business_hours,
)
from appliance.automations.auto_reply_step import gather_facts
from appliance.errors import Conflict, InvalidInput, NotFound, Unprocessable
from appliance.messaging import store as messaging_store
from appliance.messaging.models import RECIPIENT_PATTERN, recipient_jid

bp = Blueprint("auto_replies", __name__)

Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Pattern = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Priority = Annotated[int, Field(ge=0, le=1_000_000), BeforeValidator(number_only)]
Cooldown = Annotated[int, Field(ge=0, le=2_592_000), BeforeValidator(number_only)]
MatchType = Literal["contains", "exact", "starts", "ends", "regex"]
_PATTERN_DOC = (
    "What the message's text (or media caption) is matched against; case and "
    "diacritics are ignored (İSTANBUL = istanbul = Istanbul). `regex`: RE2 syntax "
    "(no backreferences or look-around), matched against the folded text: write "
    "letters in lower case without diacritics."
)


def _checked_pattern(value: str, info: ValidationInfo) -> str:
    match_type = info.data.get("match_type")
    if match_type is not None:
        try:
            text_match.check_pattern(match_type, value)
        except text_match.InvalidPattern as exc:
            raise ValueError(str(exc)) from None
    return value


class RuleIn(Strict):
    name: Name
    priority: Priority = Field(default=100, description="Lower runs first; ties: oldest first")
    active: Bool = True
    match_type: MatchType
    pattern: Pattern = Field(description=_PATTERN_DOC)
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=10,
        description="All must hold: `chat_type` (private | group), `first_message` "
        "(optionally after `idle_s` of silence), `business_hours` (inside | outside, in "
        "the account's timezone)",
    )
    actions: list[ReplyAction] = Field(
        min_length=1, max_length=3, description="Replies sent in the message's chat, in order"
    )
    cooldown_s: Cooldown = Field(
        default=0, description="After firing in a chat, stay quiet there this long (seconds)"
    )
    stop: Bool = Field(default=True, description="Once this rule matched, try no further rules")

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str, info: ValidationInfo) -> str:
        return _checked_pattern(value, info)


class RulePatch(Strict):
    """Fields to change; those left out keep their value."""

    name: Name | None = None
    priority: Annotated[int, Field(ge=0, le=1_000_000), BeforeValidator(number_only)] | None = None
    active: Bool | None = None
    match_type: MatchType | None = None
    pattern: Pattern | None = Field(default=None, description=_PATTERN_DOC)
    conditions: list[Condition] | None = Field(default=None, max_length=10)
    actions: list[ReplyAction] | None = Field(default=None, min_length=1, max_length=3)
    cooldown_s: Annotated[int, Field(ge=0, le=2_592_000), BeforeValidator(number_only)] | None = (
        None
    )
    stop: Bool | None = None


class RuleOut(BaseModel):
    id: str
    account_id: str
    name: str
    priority: int
    active: bool
    match_type: MatchType
    pattern: str
    conditions: list[Condition]
    actions: list[ReplyAction]
    cooldown_s: int
    stop: bool
    fired_count: int
    last_fired_at: float | None
    created_at: float
    updated_at: float


class RuleList(BaseModel):
    items: list[RuleOut] = Field(description="In the order they are tried")
    next: str | None = None


class AutoReplyTestIn(Strict):
    text: Annotated[str, StringConstraints(max_length=65_536)] = Field(
        default="", description="The sample message's text (or media caption)"
    )
    chat: Annotated[str, StringConstraints(max_length=64, pattern=RECIPIENT_PATTERN)] | None = (
        Field(
            default=None,
            description="A chat (E.164 or chat id): its cooldowns and previous message "
            "count, and a ...@g.us id is a group; absent: a new private chat",
        )
    )
    chat_type: Literal["private", "group"] | None = Field(
        default=None, description="Without `chat`: the sample chat's type (default private)"
    )
    first_message: Bool | None = Field(
        default=None,
        description="Whether the sample opens a conversation; absent: from `chat`'s "
        "history, or true without `chat`",
    )
    at: Annotated[float, Field(ge=0, le=32_503_680_000), BeforeValidator(number_only)] | None = (
        Field(default=None, description="When it arrives (Unix time; default now)")
    )

    @field_validator("chat")
    @classmethod
    def _valid_chat(cls, value: str | None) -> str | None:
        if value is not None:
            recipient_jid(value)
        return value


class Verdict(BaseModel):
    rule_id: str
    name: str
    outcome: Literal["fired", "no_match", "inactive", "condition", "cooldown", "not_reached"]
    detail: str | None = Field(
        default=None,
        description="`condition`: the type of the condition that failed; `cooldown`: "
        "when it ends (RFC 3339, UTC)",
    )


class WouldFire(BaseModel):
    rule_id: str
    name: str
    replies: list[dict[str, Any]] = Field(description="The send bodies it would queue")


class AutoReplyTestOut(BaseModel):
    fired: list[WouldFire] = Field(description="The rules that would fire, in order")
    trace: list[Verdict] = Field(description="Every rule, in order, and what it would do")
    at: float
    inside_business_hours: bool


# -- helpers ------------------------------------------------------------------------------


def rule_out(record: store.RuleRecord) -> RuleOut:
    rule = record.rule
    return RuleOut(
        id=rule.id,
        account_id=record.account_id,
        name=rule.name,
        priority=rule.priority,
        active=rule.active,
        match_type=rule.match_type,
        pattern=rule.pattern,
        conditions=list(rule.conditions),
        actions=list(rule.actions),
        cooldown_s=rule.cooldown_s,
        stop=rule.stop,
        fired_count=record.fired_count,
        last_fired_at=record.last_fired_at,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def _rule(rule_id: str, data: RuleIn) -> Rule:
    return Rule(
        id=rule_id,
        name=data.name,
        priority=data.priority,
        active=data.active,
        match_type=data.match_type,
        pattern=data.pattern,
        conditions=data.conditions,
        actions=data.actions,
        cooldown_s=data.cooldown_s,
        stop=data.stop,
    )


async def _check_media(account: str, actions: list[ReplyAction]) -> None:
    """Media links pass the SSRF guard (400); uploaded media ids exist (422)."""
    for n, action in enumerate(actions):
        media = action.media
        if media is None:
            continue
        if media.link is not None:
            await check_media_link(f"actions.{n}.media.link", media.link)
        elif media.id is not None and not await messaging_store.media_exists(
            _db(), account, media.id
        ):
            message = f"no uploaded media {media.id!r} in this account"
            path = f"actions.{n}.media.id"
            raise Unprocessable(
                message, issues=[{"path": path, "message": message, "code": "unknown"}]
            )


async def _record(account: str, rule_id: str) -> store.RuleRecord:
    record = await store.get_rule(_db(), account, rule_id)
    if record is None:
        raise NotFound("no such auto-reply rule")
    return record


def _changed_event(action: str, rule: RuleOut | dict[str, Any]) -> dict[str, Any]:
    body = rule.model_dump(mode="json") if isinstance(rule, RuleOut) else rule
    return {"action": action, "rule": body}


# -- routes -------------------------------------------------------------------------------


@bp.get("/api/accounts/<account>/auto-replies")
@requires(Permission.AUTOMATIONS_MANAGE)
@document_response(RuleList, 200)
@document_response(ErrorBody, 404)
@tag(["auto-replies"])
async def list_auto_replies(account: str) -> RuleList:
    """The account's auto-reply rules, in the order they are tried."""
    await account_for(account)
    return RuleList(items=[rule_out(r) for r in await store.list_rules(_db(), account)])


@bp.post("/api/accounts/<account>/auto-replies")
@requires(Permission.AUTOMATIONS_MANAGE)
@idempotent
@json_body(RuleIn)
@document_response(RuleOut, 201)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@document_response(ErrorBody, 422)
@tag(["auto-replies"])
async def create_auto_reply(account: str, data: RuleIn) -> tuple[RuleOut, int]:
    """Add a rule. It applies to messages received from now on.

    An invalid or unsupported regex is a 400 naming it; more than 200 rules on one
    account is a 409.
    """
    await account_for(account)
    await _check_media(account, data.actions)
    rule = _rule(store.new_rule_id(), data)
    now = time.time()
    async with _db().write() as conn:
        if await store.count_rules(conn, account) >= store.MAX_RULES_PER_ACCOUNT:
            raise Conflict(f"an account has at most {store.MAX_RULES_PER_ACCOUNT} auto-reply rules")
        await store.insert_rule(conn, rule, account_id=account, now=now)
        record = await store.get_rule(conn, account, rule.id)
        assert record is not None
        out = rule_out(record)
        await messaging_store.append_event(
            conn, "auto_reply.changed", account, _changed_event("created", out), now
        )
        await audit(conn, "auto_reply.create", target=f"auto_reply:{rule.id}", account=account)
    return out, 201


@bp.get("/api/accounts/<account>/auto-replies/<rule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@document_response(RuleOut, 200)
@document_response(ErrorBody, 404)
@tag(["auto-replies"])
async def get_auto_reply(account: str, rule_id: str) -> RuleOut:
    """One rule, with how often it fired."""
    await account_for(account)
    return rule_out(await _record(account, rule_id))


@bp.patch("/api/accounts/<account>/auto-replies/<rule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@json_body(RulePatch)
@document_response(RuleOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 422)
@tag(["auto-replies"])
async def update_auto_reply(account: str, rule_id: str, data: RulePatch) -> RuleOut:
    """Change some fields (e.g. `{"active": false}` to pause it); the others are kept.
    The changed rule is checked whole: a new `match_type` re-checks the stored pattern."""
    await account_for(account)
    current = rule_out(await _record(account, rule_id))
    merged = {
        k: v
        for k, v in current.model_dump(mode="json", exclude_none=True).items()
        if k in RuleIn.model_fields
    }
    merged.update(data.model_dump(mode="json", exclude_none=True, exclude_unset=True))
    try:
        checked = RuleIn.model_validate(merged)
    except ValidationError as exc:
        raise InvalidInput("invalid rule; see issues", issues=issues_from(exc)) from None
    if data.actions is not None:
        await _check_media(account, checked.actions)
    now = time.time()
    async with _db().write() as conn:
        if not await store.replace_rule(conn, _rule(rule_id, checked), account_id=account, now=now):
            raise NotFound("no such auto-reply rule")
        record = await store.get_rule(conn, account, rule_id)
        assert record is not None
        out = rule_out(record)
        await messaging_store.append_event(
            conn, "auto_reply.changed", account, _changed_event("updated", out), now
        )
        await audit(
            conn,
            "auto_reply.update",
            target=f"auto_reply:{rule_id}",
            account=account,
            fields=sorted(data.model_fields_set),
        )
    return out


@bp.delete("/api/accounts/<account>/auto-replies/<rule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@responds(204, "Deleted, with its cooldowns")
@document_response(ErrorBody, 404)
@tag(["auto-replies"])
async def delete_auto_reply(account: str, rule_id: str) -> Response:
    """Delete a rule. Replies it already queued are still sent."""
    await account_for(account)
    now = time.time()
    async with _db().write() as conn:
        if not await store.delete_rule(conn, account, rule_id):
            raise NotFound("no such auto-reply rule")
        await messaging_store.append_event(
            conn, "auto_reply.changed", account, _changed_event("deleted", {"id": rule_id}), now
        )
        await audit(conn, "auto_reply.delete", target=f"auto_reply:{rule_id}", account=account)
    return Response(status=204)


# Beside the rules, not under them: .../auto-replies/test would also match
# .../auto-replies/<rule_id>, whose methods its Allow header would then advertise.
@bp.post("/api/accounts/<account>/auto-reply-test")
@requires(Permission.AUTOMATIONS_MANAGE)
@json_body(AutoReplyTestIn)
@document_response(AutoReplyTestOut, 200)
@document_response(ErrorBody, 404)
@tag(["auto-replies"])
async def test_auto_replies(account: str, data: AutoReplyTestIn) -> AutoReplyTestOut:
    """Which rule would fire for a sample message, and why each other one would not.
    Nothing is sent and no cooldown starts.

    With `chat`, that chat's cooldowns and history count, as for a message arriving
    there at `at`; without it, a new private chat (or a group, with `chat_type`).
    """
    await account_for(account)
    db = _db()
    at = data.at if data.at is not None else time.time()
    rules = [r.rule for r in await store.list_rules(db, account)]
    if data.chat is not None:
        chat = recipient_jid(data.chat)
    else:
        # A chat id no real chat has: no cooldowns, no history.
        chat = "0000000000@g.us" if data.chat_type == "group" else "0000000000@s.whatsapp.net"
    previous: float | None = None
    use_previous = data.first_message is not None or data.chat is None
    if data.first_message is False:
        previous = at  # a message just before: not the first, not after any idle time
    facts = await gather_facts(
        db,
        rules,
        account_id=account,
        chat_jid=chat,
        text=data.text,
        at=at,
        message_id=None,
        previous_at=previous,
        use_previous=use_previous,
    )
    decision = decide(rules, facts)
    sample_id = "SAMPLE"
    return AutoReplyTestOut(
        fired=[
            WouldFire(
                rule_id=rule.id,
                name=rule.name,
                replies=[
                    {
                        "to": data.chat or "(sample chat)",
                        **a.content(sample_id).model_dump(mode="json", exclude_none=True),
                    }
                    for a in rule.actions
                ],
            )
            for rule in decision.fired
        ],
        trace=[
            Verdict(rule_id=v.rule.id, name=v.rule.name, outcome=v.outcome, detail=v.detail)
            for v in decision.verdicts
        ],
        at=at,
        inside_business_hours=in_business_hours(facts.business_hours, facts.timezone, at),
    )
