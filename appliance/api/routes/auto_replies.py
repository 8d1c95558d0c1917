"""Auto-reply rules of an account: list, create, read, change, delete, and a test that
answers which rule would fire for a sample message, without sending anything.

Managing them needs ``automations.manage`` (managers and admins); agents get 403.
Regexes are compiled with RE2 when a rule is saved: an invalid or unsupported pattern
is a 400 naming it (``issues[].path`` = ``pattern``). What the rule refers to is
checked too: tags, the user to assign and quick replies must be in the account (422
naming each), and a quick reply's variables must fit it (400 naming the unknown and
missing ones).
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
    SEND_ACTIONS,
    Action,
    AnyAction,
    AssignAction,
    Condition,
    QuickReplyAction,
    ReplyAction,
    Rule,
    SetStatusAction,
    TagsAction,
    decide,
    in_business_hours,
    tag_ids,
)
from appliance.automations.auto_reply_step import error_text, gather_facts, quick_reply_content
from appliance.db.database import Database
from appliance.errors import N_, ClientError, Conflict, InvalidInput, NotFound, Unprocessable
from appliance.inbox import quick_replies, quick_replies_store, tags_store
from appliance.inbox import store as inbox_store
from appliance.inbox.conversations import Status
from appliance.inbox.models import TagRef
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


MAX_ACTIONS = 10
MAX_SENDS = 3
_ACTIONS_DOC = (
    "Carried out in order, in the message's chat: `reply` (text or media), "
    "`quick_reply` (a quick reply with `variables`), `tags` (`add` / `remove` tag ids), "
    "`assign` (`user_id`, or none to unassign), `set_status` (`status`; `snoozed` with "
    "`snooze_s`). At most 10 actions, at most 3 of them sending a message"
)
_CONDITIONS_DOC = (
    "All must hold: `chat_type` (private | group), `first_message` (optionally after "
    "`idle_s` of silence), `business_hours` (inside | outside, in the account's "
    "timezone), `chat_tags` (`required` all / `excluded` any, tag ids), `status` (the "
    "conversation's status once the message arrived is one of `statuses`)"
)


def _few_sends(actions: list[AnyAction] | None) -> list[AnyAction] | None:
    if actions is not None and sum(a.type in SEND_ACTIONS for a in actions) > MAX_SENDS:
        raise ValueError(
            N_("a rule sends at most {limit} messages (reply, quick_reply)", limit=MAX_SENDS)
        )
    return actions


class RuleIn(Strict):
    name: Name
    priority: Priority = Field(default=100, description="Lower runs first; ties: oldest first")
    active: Bool = True
    match_type: MatchType
    pattern: Pattern = Field(description=_PATTERN_DOC)
    conditions: list[Condition] = Field(
        default_factory=list, max_length=10, description=_CONDITIONS_DOC
    )
    actions: list[Action] = Field(min_length=1, max_length=MAX_ACTIONS, description=_ACTIONS_DOC)
    cooldown_s: Cooldown = Field(
        default=0, description="After firing in a chat, stay quiet there this long (seconds)"
    )
    stop: Bool = Field(default=True, description="Once this rule matched, try no further rules")

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str, info: ValidationInfo) -> str:
        return _checked_pattern(value, info)

    _sends = field_validator("actions")(classmethod(lambda cls, v: _few_sends(v)))


class RulePatch(Strict):
    """Fields to change; those left out keep their value."""

    name: Name | None = None
    priority: Annotated[int, Field(ge=0, le=1_000_000), BeforeValidator(number_only)] | None = None
    active: Bool | None = None
    match_type: MatchType | None = None
    pattern: Pattern | None = Field(default=None, description=_PATTERN_DOC)
    conditions: list[Condition] | None = Field(
        default=None, max_length=10, description=_CONDITIONS_DOC
    )
    actions: list[Action] | None = Field(
        default=None, min_length=1, max_length=MAX_ACTIONS, description=_ACTIONS_DOC
    )
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
    actions: list[Action]
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
    chat_tags: (
        Annotated[
            list[Annotated[int, Field(ge=1, le=2**53), BeforeValidator(number_only)]],
            Field(max_length=100),
        ]
        | None
    ) = Field(
        default=None,
        description="The sample chat's tag ids; absent: `chat`'s own tags (none without `chat`)",
    )
    status: Status | None = Field(
        default=None,
        description="The conversation's status once the sample arrived; absent: `chat`'s "
        "own (a resolved or snoozed chat reopens: open), open without `chat`",
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


class AutoReplyAssignee(BaseModel):
    id: int
    username: str | None = Field(description="null: no such user any more")


class AutoReplyActionPreview(BaseModel):
    """What one action of a firing rule would do; nothing is done."""

    type: Literal["reply", "quick_reply", "tags", "assign", "set_status"]
    message: dict[str, Any] | None = Field(
        default=None, description="`reply`, `quick_reply`: the send body it would queue"
    )
    tags_added: list[TagRef] | None = Field(default=None, description="`tags`")
    tags_removed: list[TagRef] | None = Field(default=None, description="`tags`")
    assignee: AutoReplyAssignee | None = Field(
        default=None, description="`assign`: the user (null: unassigned)"
    )
    status: Status | None = Field(default=None, description="`set_status`")
    snoozed_until: float | None = Field(default=None, description="`set_status` snoozed")
    error: str | None = Field(
        default=None, description="Why it would be refused now (e.g. a quick reply's variables)"
    )


class WouldFire(BaseModel):
    rule_id: str
    name: str
    replies: list[dict[str, Any]] = Field(description="The send bodies it would queue")
    actions: list[AutoReplyActionPreview] = Field(
        description="Every action, in order, and what it would do"
    )


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


def _unknown(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message, "code": "unknown"}


async def _check_references(account: str, conditions: list[Any], actions: list[AnyAction]) -> None:
    """Tags, users and quick replies a rule names are in the account (422 naming each
    that is not); a quick reply's variables fit it (400 naming each that does not)."""
    db = _db()
    issues: list[dict[str, str]] = []
    known_tags: set[int] = set()
    for tag_id in tag_ids(conditions, actions):
        try:
            await tags_store.get_tag(db, account, tag_id)
            known_tags.add(tag_id)
        except NotFound:
            pass
    for where, items in (("conditions", conditions), ("actions", actions)):
        for n, item in enumerate(items):
            for name in ("required", "excluded", "add", "remove"):
                for i, tag_id in enumerate(getattr(item, name, None) or []):
                    if tag_id not in known_tags:
                        issues.append(
                            _unknown(f"{where}.{n}.{name}.{i}", f"no tag {tag_id} in this account")
                        )
    variable_issues: list[dict[str, str]] = []
    for n, action in enumerate(actions):
        if (
            isinstance(action, AssignAction)
            and action.user_id is not None
            and not await inbox_store.can_work_account(db, account, action.user_id)
        ):
            issues.append(
                _unknown(
                    f"actions.{n}.user_id",
                    f"user {action.user_id} does not exist, is inactive or lacks this account",
                )
            )
        if isinstance(action, QuickReplyAction):
            variable_issues += await _check_quick_reply(db, account, n, action, issues)
    if issues:
        raise Unprocessable(
            N_("the rule names things not in this account; see issues"), issues=issues
        )
    if variable_issues:
        raise InvalidInput(
            N_("a quick reply's variables do not fit it; see issues"), issues=variable_issues
        )


async def _check_quick_reply(
    db: Database, account: str, n: int, action: QuickReplyAction, issues: list[dict[str, str]]
) -> list[dict[str, str]]:
    """Adds to ``issues`` when the quick reply is not in the account; returns the
    variable issues (unknown and missing variables, by name)."""
    try:
        reply = await quick_replies_store.get_quick_reply(db, account, action.quick_reply.id)
    except NotFound:
        issues.append(
            _unknown(
                f"actions.{n}.quick_reply.id",
                f"no quick reply {action.quick_reply.id} in this account",
            )
        )
        return []
    try:
        quick_replies.render(
            reply.body or "",
            dict.fromkeys(quick_replies.BUILTINS, ""),
            dict(action.quick_reply.variables),
        )
    except quick_replies.VariableError as exc:
        found: Any = quick_replies_store.variable_error(exc).extra.get("issues") or []
        return [{**i, "path": f"actions.{n}.{i['path']}"} for i in found]
    return []


async def _check_media(account: str, actions: list[AnyAction]) -> None:
    """Media links pass the SSRF guard (400); uploaded media ids exist (422)."""
    for n, action in enumerate(actions):
        media = action.media if isinstance(action, ReplyAction) else None
        if media is None:
            continue
        if media.link is not None:
            await check_media_link(f"actions.{n}.media.link", media.link)
        elif media.id is not None and not await messaging_store.media_exists(
            _db(), account, media.id
        ):
            message = N_("no uploaded media {id} in this account", id=repr(media.id))
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


async def _preview(
    db: Database,
    account: str,
    chat: str,
    to: str,
    action: AnyAction,
    trigger_id: str,
    at: float,
) -> AutoReplyActionPreview:
    """What an action would do in ``chat`` (reads only)."""
    preview = AutoReplyActionPreview(type=action.type)
    try:
        if isinstance(action, ReplyAction):
            content = action.content(trigger_id)
        elif isinstance(action, QuickReplyAction):
            content = await quick_reply_content(db, account, chat, action, trigger_id)
        else:
            content = None
        if content is not None:
            preview.message = {"to": to, **content.model_dump(mode="json", exclude_none=True)}
        elif isinstance(action, TagsAction):
            preview.tags_added = [await _tag_ref(db, account, t) for t in action.add]
            preview.tags_removed = [await _tag_ref(db, account, t) for t in action.remove]
        elif isinstance(action, AssignAction):
            if action.user_id is not None:
                names = await inbox_store.user_names(db, [action.user_id])
                preview.assignee = AutoReplyAssignee(
                    id=action.user_id, username=names.get(action.user_id)
                )
                if not await inbox_store.can_work_account(db, account, action.user_id):
                    preview.error = f"user {action.user_id} cannot work this account"
        elif isinstance(action, SetStatusAction):
            preview.status = action.status
            if action.snooze_s is not None:
                preview.snoozed_until = at + action.snooze_s
    except (ClientError, ValueError) as exc:
        preview.error = error_text(exc)
    return preview


async def _tag_ref(db: Database, account: str, tag_id: int) -> TagRef:
    tag = await tags_store.get_tag(db, account, tag_id)  # NotFound: a tag deleted since
    return TagRef(id=tag.id, name=tag.name, color=tag.color)


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
    account is a 409. Tags, users or quick replies not in the account are a 422
    naming each; a quick reply's unknown or missing variables a 400 naming each.
    """
    await account_for(account)
    await _check_media(account, data.actions)
    await _check_references(account, data.conditions, data.actions)
    rule = _rule(store.new_rule_id(), data)
    now = time.time()
    async with _db().write() as conn:
        if await store.count_rules(conn, account) >= store.MAX_RULES_PER_ACCOUNT:
            raise Conflict(
                N_(
                    "an account has at most {limit} auto-reply rules",
                    limit=store.MAX_RULES_PER_ACCOUNT,
                )
            )
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
        raise InvalidInput(N_("invalid rule; see issues"), issues=issues_from(exc)) from None
    if data.actions is not None:
        await _check_media(account, checked.actions)
    if data.actions is not None or data.conditions is not None:
        await _check_references(account, checked.conditions, checked.actions)
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
    """Which rule would fire for a sample message, why each other one would not, and
    what each action of a firing rule would do (the message it would send, the tags,
    assignee or status it would set). Nothing is sent or changed and no cooldown starts.

    With `chat`, that chat's cooldowns, history, tags and status count, as for a
    message arriving there at `at`; without it, a new private chat (or a group, with
    `chat_type`). `chat_tags` and `status` stand in for the chat's own.
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
    status: Status | None = data.status
    if status is None and data.chat is not None:
        # As the message would leave it: a new message reopens a resolved or snoozed chat.
        conv = await inbox_store.conversation(db, account, chat)
        if conv is not None:
            status = "open" if conv.status in ("resolved", "snoozed") else conv.status
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
        chat_tags=(
            frozenset(data.chat_tags)
            if data.chat_tags is not None
            else (None if data.chat is not None else frozenset())
        ),
        status=status or "open",
    )
    decision = decide(rules, facts)
    sample_id = "SAMPLE"
    to = data.chat or "(sample chat)"
    fired: list[WouldFire] = []
    for rule in decision.fired:
        previews = [
            await _preview(db, account, chat, to, action, sample_id, at) for action in rule.actions
        ]
        replies = [p.message for p in previews if p.message is not None]
        fired.append(WouldFire(rule_id=rule.id, name=rule.name, replies=replies, actions=previews))
    return AutoReplyTestOut(
        fired=fired,
        trace=[
            Verdict(rule_id=v.rule.id, name=v.rule.name, outcome=v.outcome, detail=v.detail)
            for v in decision.verdicts
        ],
        at=at,
        inside_business_hours=in_business_hours(facts.business_hours, facts.timezone, at),
    )
