"""The auto-reply step of the automation trigger: decide which rules fire for an
inbound message and carry out their actions, exactly once.

Everything a message's auto-replies change commits in one transaction: the sends
(``accept_send`` with ``origin="automation"`` and the client key
``automation:rule:<rule id>:<message id>``), the inbox changes (tags, assignment,
status: through the team inbox's own stores, so they write the same ``chat.updated``
/ ``chat.assigned`` events as the API, with the rule as the actor), the cooldowns,
the rules' counters, the ``automation.fired`` events and the step's journal row. A
retry of the job after a crash finds the row and does nothing; were the row missing,
the client keys would still return the first sends instead of queuing second ones,
and the inbox actions set state (a tag already there, a status already set) rather
than count, so they change nothing the second time.

Each action runs in its own savepoint: one that is refused when the rule fires (a
quick reply deleted since, a user who lost the account) is undone alone, reported in
the event's ``errors`` and its ``actions`` entry, and the rule's other actions go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import aiosqlite
from prometheus_client import Counter

from appliance.automations import auto_reply_store as rules_store
from appliance.automations.auto_reply_rules import (
    AnyAction,
    AssignAction,
    Decision,
    Facts,
    QuickReplyAction,
    ReplyAction,
    Rule,
    SetStatusAction,
    TagsAction,
    condition_types,
    decide,
)
from appliance.automations.quick_reply_content import render_for_chat
from appliance.automations.trigger import Step, StepContext, StepResult, record_step, step_done
from appliance.db.database import ReadSource
from appliance.errors import ClientError, NotFound
from appliance.inbox import store as inbox_store
from appliance.inbox import tags_store
from appliance.inbox.actor import Actor
from appliance.inbox.conversations import Status
from appliance.messaging.models import MessageContent, MessageOut, content_dict
from appliance.messaging.sends import accept_send
from appliance.messaging.store import append_event

log = logging.getLogger(__name__)

STEP_NAME = "auto_replies"
# Inbound message types auto-replies answer (their text, or their caption).
TRIGGER_TYPES = frozenset({"text", "image", "document", "audio", "video"})

FIRED = Counter(
    "appliance_auto_reply_fired_total",
    "Auto-reply rules fired, per account and rule.",
    ["account", "rule"],
)
COOLDOWN = Counter(
    "appliance_auto_reply_cooldown_total",
    "Auto-reply rules that matched but stayed quiet in a chat's cooldown, per rule.",
    ["account", "rule"],
)
SEND_ERRORS = Counter(
    "appliance_auto_reply_send_errors_total",
    "Actions of a firing rule that could not be carried out (a reply that cannot be "
    "queued: its uploaded media or quick reply was deleted; a tag or user gone), per rule.",
    ["account", "rule"],
)


def client_key(rule_id: str, message_id: str, action_index: int) -> str:
    """The idempotency key of a rule's reply to a message (the first action's key is
    ``automation:rule:<rule>:<message>``; further ones add ``:<n>``)."""
    base = f"automation:rule:{rule_id}:{message_id}"
    return base if action_index == 0 else f"{base}:{action_index + 1}"


def message_text(message: MessageOut) -> str:
    """What rules match against: a text's body, a media message's caption."""
    part = content_dict(message.content).get(message.type)
    if not isinstance(part, dict):
        return ""
    value = part.get("body") if message.type == "text" else part.get("caption")
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class RuleActor(Actor):
    """A rule, as the actor of the inbox changes it makes (``by`` in their events)."""

    rule_id: str = ""
    rule_name: str = ""

    def as_data(self) -> dict[str, Any]:
        return {
            "type": "automation",
            "automation": "auto_reply",
            "rule_id": self.rule_id,
            "name": self.rule_name,
        }


def rule_actor(rule: Rule) -> RuleActor:
    """The rule acting; tag events name it ``automation:<rule id>``."""
    return RuleActor(
        "automation",
        principal=f"automation:{rule.id}",
        name=rule.name,
        rule_id=rule.id,
        rule_name=rule.name,
    )


async def chat_tag_ids(source: ReadSource, account_id: str, chat_jid: str) -> frozenset[int]:
    found = await tags_store.tags_of(source, account_id, [chat_jid])
    return frozenset(t.id for t in found.get(chat_jid, []))


async def gather_facts(
    source: Any,
    rules: list[Rule],
    *,
    account_id: str,
    chat_jid: str,
    text: str,
    at: float,
    message_id: str | None,
    previous_at: float | None = None,
    use_previous: bool = False,
    chat_tags: frozenset[int] | None = None,
    status: Status | None = None,
) -> Facts:
    """The facts rules look at, read from ``source`` (the database, or the caller's
    transaction). ``message_id`` None: a sample message that would arrive now.
    ``chat_tags`` / ``status`` given: used instead of the chat's own (a sample)."""
    settings = await rules_store.account_settings(source, account_id)
    needed = condition_types(rules)
    if use_previous:
        previous = previous_at
    elif "first_message" in needed:
        previous = await rules_store.previous_message_at(source, account_id, chat_jid, message_id)
    else:
        previous = None
    if chat_tags is None:
        chat_tags = (
            await chat_tag_ids(source, account_id, chat_jid)
            if "chat_tags" in needed
            else frozenset()
        )
    if status is None and "status" in needed:
        conv = await inbox_store.conversation(source, account_id, chat_jid)
        status = None if conv is None else conv.status
    return Facts(
        text=text,
        is_group=chat_jid.endswith("@g.us"),
        at=at,
        timezone=settings.timezone if settings is not None else "UTC",
        business_hours=settings.business_hours if settings is not None else None,
        previous_message_at=previous,
        last_fired=await rules_store.last_fired(source, [r.id for r in rules], chat_jid),
        chat_tags=chat_tags,
        status=status,
    )


@dataclass(frozen=True)
class Firing:
    rule: Rule
    sent: list[str]
    errors: list[str]
    actions: list[dict[str, Any]] = field(default_factory=list)


async def agent_name(source: ReadSource, account_id: str, chat_jid: str) -> str | None:
    """``{{agent.name}}`` of an automated quick reply: the chat's assignee, if any."""
    conv = await inbox_store.conversation(source, account_id, chat_jid)
    if conv is None or conv.assignee_id is None:
        return None
    return (await inbox_store.user_names(source, [conv.assignee_id])).get(conv.assignee_id)


async def quick_reply_content(
    source: ReadSource,
    account_id: str,
    chat_jid: str,
    action: QuickReplyAction,
    trigger_message_id: str,
) -> MessageContent:
    """The message a quick-reply action sends in a chat (``{{agent.name}}``: the
    chat's assignee); ClientError (the quick reply is gone, its variables no longer
    fit) or ValueError (it renders to no message)."""
    return await render_for_chat(
        source,
        account_id,
        chat_jid,
        action.quick_reply,
        agent=await agent_name(source, account_id, chat_jid),
        quote=trigger_message_id if action.quote else None,
    )


async def _act(
    conn: aiosqlite.Connection,
    rule: Rule,
    action: AnyAction,
    index: int,
    message: MessageOut,
    now: float,
) -> dict[str, Any]:
    """Carry out one action of a firing rule; what it did (for the event)."""
    account_id, chat = message.account_id, message.chat_id
    if isinstance(action, ReplyAction | QuickReplyAction):
        content = (
            action.content(message.id)
            if isinstance(action, ReplyAction)
            else await quick_reply_content(conn, account_id, chat, action, message.id)
        )
        accepted = await accept_send(
            conn,
            account_id=account_id,
            to=chat,
            message=content,
            client_key=client_key(rule.id, message.id, index),
            now=now,
            origin="automation",
        )
        return {"type": action.type, "outcome": "done", "message_id": accepted.message_id}
    if isinstance(action, TagsAction):
        changed, _ = await tags_store.apply_tags(
            conn,
            account_id,
            add=action.add,
            remove=action.remove,
            chats=[chat],
            contacts=[],
            by=rule_actor(rule),
            now=now,
        )
        return {"type": action.type, "outcome": "done" if changed else "unchanged"}
    before = await inbox_store.conversation(conn, account_id, chat)
    if before is None:
        raise NotFound("the chat is gone")
    if isinstance(action, AssignAction):
        await inbox_store.change_chat(
            conn,
            account_id,
            chat,
            by=rule_actor(rule),
            assigns_others=True,
            now=now,
            assignee_id=action.user_id,
        )
        changed = before.assignee_id != action.user_id
    else:
        assert isinstance(action, SetStatusAction)
        until = None
        if action.snooze_s is not None:
            # From the message's arrival, so a replay sets the same time (no second
            # event); from now if the message waited longer than the snooze itself.
            until = message.created_at + action.snooze_s
            if until <= now:
                until = now + action.snooze_s
        await inbox_store.change_chat(
            conn,
            account_id,
            chat,
            by=rule_actor(rule),
            assigns_others=True,
            now=now,
            status=action.status,
            snoozed_until=until,
        )
        changed = (before.status, before.snoozed_until) != (action.status, until)
    return {"type": action.type, "outcome": "done" if changed else "unchanged"}


async def _act_alone(
    conn: aiosqlite.Connection,
    rule: Rule,
    action: AnyAction,
    index: int,
    message: MessageOut,
    now: float,
) -> dict[str, Any]:
    """``_act`` in a savepoint: a refused action is undone alone and reported."""
    await conn.execute("SAVEPOINT auto_reply_action")
    try:
        done = await _act(conn, rule, action, index, message, now)
    except (ClientError, ValueError) as exc:
        await conn.execute("ROLLBACK TO auto_reply_action")
        await conn.execute("RELEASE auto_reply_action")
        return {"type": action.type, "outcome": "error", "error": error_text(exc)}
    await conn.execute("RELEASE auto_reply_action")
    return done


def error_text(exc: Exception) -> str:
    """An error for the event: the message, and the issues' messages when it has any."""
    issues = getattr(exc, "extra", {}).get("issues") or []
    details = [str(i.get("message")) for i in issues if isinstance(i, dict)]
    details = [d for d in details if d and d != str(exc)]
    return f"{exc}: {'; '.join(details)}" if details else str(exc)


@dataclass(frozen=True)
class Applied:
    decision: Decision | None  # None: the step had run before
    firings: list[Firing]


async def _apply(conn: aiosqlite.Connection, message: MessageOut, now: float) -> Applied:
    account_id, chat = message.account_id, message.chat_id
    if await step_done(conn, account_id, message.id, STEP_NAME):
        return Applied(None, [])
    rules = await rules_store.active_rules(conn, account_id)
    facts = await gather_facts(
        conn,
        rules,
        account_id=account_id,
        chat_jid=chat,
        text=message_text(message),
        at=message.created_at,
        message_id=message.id,
    )
    decision = decide(rules, facts)
    firings: list[Firing] = []
    for rule in decision.fired:
        done = [
            await _act_alone(conn, rule, action, index, message, now)
            for index, action in enumerate(rule.actions)
        ]
        sent = [d["message_id"] for d in done if "message_id" in d]
        errors = [d["error"] for d in done if "error" in d]
        await rules_store.record_firing(conn, rule.id, chat, message.id, at=facts.at, now=now)
        await append_event(
            conn,
            "automation.fired",
            account_id,
            {
                "automation": "auto_reply",
                "rule_id": rule.id,
                "rule_name": rule.name,
                "chat_id": chat,
                "trigger_message_id": message.id,
                "message_ids": sent,
                "errors": errors,
                "actions": done,
            },
            now,
        )
        firings.append(Firing(rule, sent, errors, done))
    if firings or decision.cooling:
        outcome = "fired" if firings else "cooldown"
        await record_step(conn, account_id, message.id, STEP_NAME, outcome, now)
    return Applied(decision, firings)


async def run(ctx: StepContext) -> StepResult:
    message = ctx.message
    if message.type not in TRIGGER_TYPES:
        return StepResult("skipped")
    if not await rules_store.has_active_rules(ctx.db, message.account_id):
        return StepResult("no_rules")

    async def work(conn: aiosqlite.Connection) -> Applied:
        return await _apply(conn, message, ctx.now)

    applied = await ctx.db.write_batched(work)
    if applied.decision is None:
        return StepResult("already_done")
    account = message.account_id
    for rule in applied.decision.cooling:
        COOLDOWN.labels(account=account, rule=rule.id).inc()
    sends = 0
    for firing in applied.firings:
        FIRED.labels(account=account, rule=firing.rule.id).inc()
        sends += len(firing.sent)
        if firing.errors:
            SEND_ERRORS.labels(account=account, rule=firing.rule.id).inc(len(firing.errors))
            log.warning(
                "auto-reply could not carry out an action",
                extra={
                    "account_id": account,
                    "rule_id": firing.rule.id,
                    "message_id": message.id,
                    "errors": firing.errors,
                },
            )
    if applied.firings:
        return StepResult("fired", sends=sends, events=True)
    return StepResult("cooldown" if applied.decision.cooling else "no_match")


STEP = Step(STEP_NAME, run, wanted=rules_store.has_active_rules)
