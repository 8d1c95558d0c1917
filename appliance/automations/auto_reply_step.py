"""The auto-reply step of the automation trigger: decide which rules fire for an
inbound message and carry out their actions, exactly once.

Everything a message's auto-replies change commits in one transaction: the sends
(``accept_send`` with ``origin="automation"`` and the client key
``automation:rule:<rule id>:<message id>``), the cooldowns, the rules' counters, the
``automation.fired`` events and the step's journal row. A retry of the job after a
crash finds the row and does nothing; were the row missing, the client keys would
still return the first sends instead of queuing second ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiosqlite
from prometheus_client import Counter

from appliance.automations import auto_reply_store as rules_store
from appliance.automations.auto_reply_rules import (
    Decision,
    Facts,
    Rule,
    decide,
    needs_previous_message,
)
from appliance.automations.trigger import Step, StepContext, StepResult, record_step, step_done
from appliance.errors import ClientError
from appliance.messaging.models import MessageOut, content_dict
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
    "Replies of a firing rule that could not be queued (e.g. its uploaded media was "
    "deleted, or the chat id cannot be written to), per rule.",
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
) -> Facts:
    """The facts rules look at, read from ``source`` (the database, or the caller's
    transaction). ``message_id`` None: a sample message that would arrive now."""
    settings = await rules_store.account_settings(source, account_id)
    if use_previous:
        previous = previous_at
    elif needs_previous_message(rules):
        previous = await rules_store.previous_message_at(source, account_id, chat_jid, message_id)
    else:
        previous = None
    return Facts(
        text=text,
        is_group=chat_jid.endswith("@g.us"),
        at=at,
        timezone=settings.timezone if settings is not None else "UTC",
        business_hours=settings.business_hours if settings is not None else None,
        previous_message_at=previous,
        last_fired=await rules_store.last_fired(source, [r.id for r in rules], chat_jid),
    )


@dataclass(frozen=True)
class Firing:
    rule: Rule
    sent: list[str]
    errors: list[str]


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
        sent: list[str] = []
        errors: list[str] = []
        for index, action in enumerate(rule.actions):
            try:
                accepted = await accept_send(
                    conn,
                    account_id=account_id,
                    to=chat,
                    message=action.content(message.id),
                    client_key=client_key(rule.id, message.id, index),
                    now=now,
                    origin="automation",
                )
            except (ClientError, ValueError) as exc:
                errors.append(str(exc))
                continue
            sent.append(accepted.message_id)
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
            },
            now,
        )
        firings.append(Firing(rule, sent, errors))
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
                "auto-reply could not queue a reply",
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


STEP = Step(STEP_NAME, run)
