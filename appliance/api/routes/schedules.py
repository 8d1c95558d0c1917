"""Scheduled messages: one-time (RFC 3339 with an offset) or recurring (cron + IANA
zone), to one chat or a list, with any send body. Managers and admins only.

The timing rules (daylight saving, missed runs) are in
appliance/automations/schedule_times.py; the worker's timer in
appliance/automations/scheduler.py; runbook/automations.md explains both.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from quart import Blueprint, Response
from quart_schema import document_response, tag

from appliance.api.access import principal, requires
from appliance.api.accounts_access import account_for
from appliance.api.audit import audit
from appliance.api.idempotency import idempotent
from appliance.api.openapi import responds
from appliance.api.routes.messages import check_media_link
from appliance.api.schemas import Bool, ErrorBody, Strict, number_only
from appliance.api.state import db as _db
from appliance.api.validation import json_body, query
from appliance.api.worker_rpc import poke
from appliance.auth.permissions import Permission
from appliance.automations import schedules_store as store
from appliance.automations.schedule_times import (
    RFC3339_PATTERN,
    ZONE_NAME_PATTERN,
    MissedPolicy,
    Once,
    Timing,
    TimingError,
    first_due,
    given_offset,
    local_text,
    occurrence_key,
    parse_cron,
    parse_instant,
    parse_zone,
    upcoming,
)
from appliance.errors import N_, Conflict, InvalidInput, NotFound, Unprocessable
from appliance.inbox import quick_replies_store
from appliance.inbox.models import QuickReplyRef
from appliance.messaging import store as messaging_store
from appliance.messaging.models import RECIPIENT_PATTERN, MessageContent, recipient_jid

bp = Blueprint("schedules", __name__)

MAX_RECIPIENTS = 256
DEFAULT_GRACE_S = 300

Recipient = Annotated[str, StringConstraints(max_length=64, pattern=RECIPIENT_PATTERN)]
AtText = Annotated[
    str,
    StringConstraints(max_length=40),
    Field(
        description="One-time: RFC 3339 with an offset, e.g. `2026-03-29T09:00:00+02:00` or "
        "`2026-03-29T07:00:00Z`; a time without an offset, or in the past, is refused (400)",
        examples=["2026-03-29T09:00:00+02:00"],
        # In the spec only: the validator says what is wrong in words (no zone offset).
        json_schema_extra={"pattern": RFC3339_PATTERN},
    ),
]
CronText = Annotated[
    str,
    StringConstraints(min_length=9, max_length=120),
    Field(
        description="Recurring: 5 cron fields (minute hour day-of-month month day-of-week) "
        "read on the local clock of `timezone`, e.g. `0 9 * * mon-fri`",
        examples=["0 9 * * *"],
    ),
]
ZoneText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    Field(
        description="IANA time zone of `cron`, e.g. `Europe/Berlin`",
        examples=["Europe/Berlin"],
        json_schema_extra={"pattern": ZONE_NAME_PATTERN},
    ),
]
Name = Annotated[str, StringConstraints(max_length=100)]
Grace = Annotated[int, Field(ge=1, le=86_400), BeforeValidator(number_only)]
GRACE_DESCRIPTION = (
    "Seconds an occurrence may be late (worker restart, downtime) and still be sent "
    "under `missed: skip`"
)
MISSED_DESCRIPTION = (
    "After downtime: `skip` sends nothing for occurrences more than `grace_s` late; "
    "`run_once` sends once, for the latest missed occurrence. Never more than one send"
)


def _recipients(value: str | list[str]) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not items:
        raise ValueError(N_("give at least one recipient"))
    seen: dict[str, str] = {}
    for item in items:
        chat = recipient_jid(item)
        if chat in seen:
            raise ValueError(
                N_("{item} names the same chat as {other}", item=repr(item), other=repr(seen[chat]))
            )
        seen[chat] = item
    return items


def _check_at(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_instant(value)
        except TimingError as exc:
            raise ValueError(exc.message) from None
    return value


QUICK_REPLY_DESCRIPTION = (
    "Instead of `message`: a quick reply of the account (`id`) with the values of its "
    "custom `variables`, rendered for each recipient at each run (`contact.name` of "
    "that chat, `agent.name` = the schedule's creator, `chat.phone`). Variables it does "
    "not use, or custom ones it needs without a default, are a 400 naming them"
)


class ScheduleIn(Strict):
    name: Name = ""
    to: Recipient | Annotated[list[Recipient], Field(min_length=1, max_length=MAX_RECIPIENTS)] = (
        Field(description="One recipient or a list: E.164 numbers or chat ids (groups too)")
    )
    message: MessageContent | None = Field(
        default=None,
        description="The message, as in `POST /api/accounts/{account}/messages` without "
        "`to`; or give `quick_reply`",
    )
    quick_reply: QuickReplyRef | None = Field(default=None, description=QUICK_REPLY_DESCRIPTION)
    at: AtText | None = None
    cron: CronText | None = None
    timezone: ZoneText | None = None
    missed: MissedPolicy = Field(default="skip", description=MISSED_DESCRIPTION)
    grace_s: Grace = Field(default=DEFAULT_GRACE_S, description=GRACE_DESCRIPTION)
    paused: Bool = Field(default=False, description="Create it paused")

    _to = field_validator("to")(classmethod(lambda cls, v: _recipients(v)))
    _at = field_validator("at")(classmethod(lambda cls, v: _check_at(v)))

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleIn:
        if (self.message is None) == (self.quick_reply is None):
            raise ValueError(N_("give either message or quick_reply"))
        if (self.at is None) == (self.cron is None):
            raise ValueError(N_("give either at (one-time) or cron with timezone (recurring)"))
        if self.cron is not None and self.timezone is None:
            raise ValueError(N_("cron needs timezone, an IANA name such as Europe/Berlin"))
        if self.at is not None and self.timezone is not None:
            raise ValueError(N_("timezone goes with cron; at carries its own offset"))
        return self


class SchedulePatch(Strict):
    name: Name | None = None
    to: (
        Recipient
        | Annotated[list[Recipient], Field(min_length=1, max_length=MAX_RECIPIENTS)]
        | None
    ) = None
    message: MessageContent | None = Field(
        default=None, description="A new body (replaces a quick reply)"
    )
    quick_reply: QuickReplyRef | None = Field(
        default=None, description="A quick reply as the new body (replaces `message`)"
    )
    at: AtText | None = Field(default=None, description="Makes it a one-time schedule")
    cron: CronText | None = Field(default=None, description="Makes it a recurring schedule")
    timezone: ZoneText | None = None
    missed: MissedPolicy | None = None
    grace_s: Grace | None = None

    _to = field_validator("to")(classmethod(lambda cls, v: None if v is None else _recipients(v)))
    _at = field_validator("at")(classmethod(lambda cls, v: _check_at(v)))

    @model_validator(mode="after")
    def _one_timing(self) -> SchedulePatch:
        if self.message is not None and self.quick_reply is not None:
            raise ValueError(N_("give either message or quick_reply, not both"))
        if self.at is not None and (self.cron is not None or self.timezone is not None):
            raise ValueError(N_("give either at, or cron and/or timezone, not both"))
        return self


class ScheduleOut(BaseModel):
    id: str
    account_id: str
    name: str
    kind: Literal["once", "cron"]
    to: list[str]
    message: dict[str, Any] | None = Field(description="null when the body is a quick reply")
    quick_reply: QuickReplyRef | None = Field(description="The body as a quick reply, or null")
    at: str | None
    cron: str | None
    timezone: str | None
    missed: MissedPolicy
    grace_s: float
    state: Literal["active", "paused", "completed"]
    state_reason: str | None
    next_run_at: str | None = Field(description="UTC, RFC 3339; null unless active")
    next_run_local: str | None = Field(
        description="The same instant on the schedule's clock (its zone, or at's offset)"
    )
    last_run_at: float | None
    runs: int
    created_by: str | None
    created_at: float
    updated_at: float


class ScheduleList(BaseModel):
    items: list[ScheduleOut]
    next: str | None


class OccurrenceOut(BaseModel):
    at: str = Field(description="UTC, RFC 3339")
    local: str = Field(description="On the schedule's clock, RFC 3339 with its offset")


class OccurrenceList(BaseModel):
    items: list[OccurrenceOut]
    next: str | None = Field(default=None, description="Always null: ask for a larger count")


class RunMessage(BaseModel):
    to: str
    chat_id: str
    message_id: str


class RunOut(BaseModel):
    id: int
    occurrence: str = Field(description="The occurrence this run is for (UTC, RFC 3339)")
    ran_at: float
    outcome: Literal["sent", "skipped", "failed"]
    late_s: float
    skipped: int = Field(description="Earlier missed occurrences folded into this run, not sent")
    first_skipped: str | None
    messages: list[RunMessage]
    error: str | None


class RunList(BaseModel):
    items: list[RunOut]
    next: str | None


class ListQuery(Strict):
    cursor: Annotated[str, StringConstraints(pattern=r"^sch_[0-9a-f]{16}$")] | None = Field(
        default=None, description="`next` of the previous page, unchanged"
    )
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class RunQuery(Strict):
    cursor: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")] | None = Field(
        default=None, description="`next` of the previous page, unchanged"
    )
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class OccurrenceQuery(Strict):
    count: Annotated[int, Field(ge=1, le=100)] = 10


# -- helpers -------------------------------------------------------------------------------


def _timing_error(exc: TimingError) -> InvalidInput:
    return InvalidInput(
        exc.message, issues=[{"path": exc.path, "message": exc.message, "code": "timing"}]
    )


def _clock(schedule: store.Schedule) -> tzinfo:
    """The schedule's own clock: its zone, or the offset its `at` was written with."""
    if schedule.kind == "cron" and schedule.timezone is not None:
        return parse_zone(schedule.timezone)
    return given_offset(schedule.at or "Z")


def schedule_out(schedule: store.Schedule) -> ScheduleOut:
    next_at = None if schedule.next_run_at is None else store.from_unix(schedule.next_run_at)
    return ScheduleOut(
        id=schedule.id,
        account_id=schedule.account_id,
        name=schedule.name,
        kind=schedule.kind,
        to=schedule.recipients,
        message=None if schedule.quick_reply is not None else schedule.content,
        quick_reply=(
            None
            if schedule.quick_reply is None
            else QuickReplyRef.model_validate(schedule.quick_reply)
        ),
        at=schedule.at,
        cron=schedule.cron,
        timezone=schedule.timezone,
        missed=schedule.missed,
        grace_s=schedule.grace_s,
        state=schedule.state,
        state_reason=schedule.state_reason,
        next_run_at=None if next_at is None else occurrence_key(next_at),
        next_run_local=None if next_at is None else local_text(next_at, _clock(schedule)),
        last_run_at=schedule.last_run_at,
        runs=schedule.runs,
        created_by=schedule.created_by,
        created_at=schedule.created_at,
        updated_at=schedule.updated_at,
    )


def _timing(at: str | None, cron: str | None, timezone: str | None) -> Timing:
    try:
        if at is not None:
            return Once(parse_instant(at))
        assert cron is not None and timezone is not None
        return parse_cron(cron, timezone)
    except TimingError as exc:
        raise _timing_error(exc) from None


def _first_run(timing: Timing, now: float) -> float:
    """When a schedule made or resumed now first runs; a one-time in the past is a 400."""
    at = first_due(timing, store.from_unix(now))
    if isinstance(timing, Once) and timing.at.timestamp() < now:
        message = N_("the time is in the past")
        raise InvalidInput(message, issues=[{"path": "at", "message": message, "code": "past"}])
    if at is None:
        message = N_("the expression has no occurrence left")
        raise InvalidInput(message, issues=[{"path": "cron", "message": message, "code": "never"}])
    return store.to_unix(at)


async def _check_content(account: str, message: MessageContent) -> None:
    """What a send would refuse, refused now: media links the SSRF guard refuses (400),
    reply targets, reacted messages and uploaded media that are not there (422)."""
    media = message.media
    if media is not None and media.link is not None:
        await check_media_link(f"message.{message.type}.link", media.link)
    db = _db()
    for path, ref in (
        ("message.context.message_id", message.context),
        ("message.reaction.message_id", message.reaction),
    ):
        if (
            ref is not None
            and await messaging_store.message_row(db, account, ref.message_id) is None
        ):
            text = N_("no message {id} in this account", id=repr(ref.message_id))
            raise Unprocessable(text, issues=[{"path": path, "message": text, "code": "unknown"}])
    if (
        media is not None
        and media.id is not None
        and not await messaging_store.media_exists(db, account, media.id)
    ):
        text = N_("no uploaded media {id} in this account", id=repr(media.id))
        path = f"message.{message.type}.id"
        raise Unprocessable(text, issues=[{"path": path, "message": text, "code": "unknown"}])


async def _check_quick_reply(account: str, ref: QuickReplyRef, first_to: str) -> None:
    """The quick reply is in the account (422) and renders with these variables (400
    naming each unknown or missing one, or saying why it is no message)."""
    db = _db()
    try:
        reply = await quick_replies_store.get_quick_reply(db, account, ref.id)
    except NotFound:
        text = N_("no quick reply {id} in this account", id=ref.id)
        raise Unprocessable(
            text, issues=[{"path": "quick_reply.id", "message": text, "code": "unknown"}]
        ) from None
    await quick_replies_store.compose(
        db, account, reply, to=first_to, agent="", variables=dict(ref.variables), extra={}
    )


def _content(message: MessageContent) -> dict[str, Any]:
    return message.model_dump(mode="json", exclude_none=True)


async def _event(conn: Any, type_: str, schedule: store.Schedule, **extra: Any) -> None:
    data = {
        "schedule_id": schedule.id,
        "name": schedule.name,
        "kind": schedule.kind,
        "state": schedule.state,
        "next_run_at": (
            None
            if schedule.next_run_at is None
            else occurrence_key(store.from_unix(schedule.next_run_at))
        ),
        **extra,
    }
    await messaging_store.append_event(conn, type_, schedule.account_id, data, time.time())


# -- routes --------------------------------------------------------------------------------


@bp.get("/api/accounts/<account>/schedules")
@requires(Permission.AUTOMATIONS_MANAGE)
@query(ListQuery)
@document_response(ScheduleList, 200)
@document_response(ErrorBody, 404)
@tag(["schedules"])
async def list_schedules(account: str, query_args: ListQuery) -> ScheduleList:
    """The account's scheduled messages, in id order."""
    await account_for(account)
    found = await store.list_schedules(
        _db(), account, after=query_args.cursor, limit=query_args.limit + 1
    )
    page = found[: query_args.limit]
    more = len(found) > query_args.limit
    return ScheduleList(items=[schedule_out(s) for s in page], next=page[-1].id if more else None)


@bp.post("/api/accounts/<account>/schedules")
@requires(Permission.AUTOMATIONS_MANAGE)
@idempotent
@json_body(ScheduleIn)
@document_response(ScheduleOut, 201)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 422)
@tag(["schedules"])
async def create_schedule(account: str, data: ScheduleIn) -> tuple[ScheduleOut, int]:
    """Schedule a message: once at an RFC 3339 time with an offset, or on a cron
    expression in an IANA zone. `GET .../occurrences` shows when it will run."""
    await account_for(account)
    timing = _timing(data.at, data.cron, data.timezone)
    now = time.time()
    first = _first_run(timing, now)
    recipients = data.to if isinstance(data.to, list) else [data.to]
    if data.message is not None:
        await _check_content(account, data.message)
    else:
        assert data.quick_reply is not None
        await _check_quick_reply(account, data.quick_reply, recipients[0])
    schedule_id = store.new_schedule_id()
    async with _db().write() as conn:
        schedule = await store.create_schedule(
            conn,
            schedule_id=schedule_id,
            account_id=account,
            name=data.name,
            timing=timing,
            at_text=data.at,
            recipients=recipients,
            content={} if data.message is None else _content(data.message),
            quick_reply=(
                None if data.quick_reply is None else data.quick_reply.model_dump(mode="json")
            ),
            missed=data.missed,
            grace_s=float(data.grace_s),
            state="paused" if data.paused else "active",
            next_run_at=None if data.paused else first,
            created_by=principal().key,
            now=now,
        )
        await audit(conn, "schedule.create", target=f"schedule:{schedule_id}", account=account)
        await _event(conn, "schedule.created", schedule)
    await poke("schedules")
    return schedule_out(schedule), 201


@bp.get("/api/accounts/<account>/schedules/<schedule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@document_response(ScheduleOut, 200)
@document_response(ErrorBody, 404)
@tag(["schedules"])
async def get_schedule(account: str, schedule_id: str) -> ScheduleOut:
    """One scheduled message, with its next run."""
    await account_for(account)
    return schedule_out(await store.get_schedule(_db(), account, schedule_id))


async def update_schedule_audited(
    account: str, schedule_id: str, data: SchedulePatch
) -> ScheduleOut:
    """Change a schedule (the fields ``data`` sets), with its ``schedule.update`` audit
    entry and ``schedule.updated`` event in the same transaction, then poke the worker:
    the PATCH route's body, shared with the panel's edit form so both leave the same
    trail (the caller checked the grant). InvalidInput for a refused time, expression,
    link or quick reply's variables; Unprocessable for unknown media, reply targets or
    quick reply; NotFound."""
    current = await store.get_schedule(_db(), account, schedule_id)
    fields: dict[str, Any] = {}
    if data.name is not None:
        fields["name"] = data.name
    if data.to is not None:
        fields["recipients"] = data.to if isinstance(data.to, list) else [data.to]
    if data.message is not None:
        await _check_content(account, data.message)
        fields["content"] = _content(data.message)
        fields["quick_reply"] = None
    if data.quick_reply is not None:
        recipients = fields.get("recipients") or current.recipients
        await _check_quick_reply(account, data.quick_reply, recipients[0])
        fields["content"] = {}
        fields["quick_reply"] = data.quick_reply.model_dump(mode="json")
    if data.missed is not None:
        fields["missed"] = data.missed
    if data.grace_s is not None:
        fields["grace_s"] = float(data.grace_s)
    now = time.time()
    if data.at is not None or data.cron is not None or data.timezone is not None:
        if data.at is not None:
            timing = _timing(data.at, None, None)
        else:
            cron = data.cron or current.cron
            zone = data.timezone or current.timezone
            if cron is None or zone is None:
                message = N_("a one-time schedule becomes recurring with both cron and timezone")
                raise InvalidInput(
                    message, issues=[{"path": "cron", "message": message, "code": "missing"}]
                )
            timing = _timing(None, cron, zone)
        fields.update(store.timing_columns(timing, data.at))
        first = _first_run(timing, now)
        if current.state != "paused":
            fields.update(state="active", state_reason=None, next_run_at=first)
    async with _db().write() as conn:
        await store.get_schedule(conn, account, schedule_id)  # deleted meanwhile: 404
        if fields:
            await store.update_schedule(conn, schedule_id, now, **fields)
        schedule = await store.get_schedule(conn, account, schedule_id)
        await audit(
            conn,
            "schedule.update",
            target=f"schedule:{schedule_id}",
            account=account,
            fields=sorted(fields),
        )
        await _event(conn, "schedule.updated", schedule, fields=sorted(fields))
    await poke("schedules")
    return schedule_out(schedule)


@bp.patch("/api/accounts/<account>/schedules/<schedule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@json_body(SchedulePatch)
@document_response(ScheduleOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 422)
@tag(["schedules"])
async def update_schedule(account: str, schedule_id: str, data: SchedulePatch) -> ScheduleOut:
    """Change a schedule. A new time or expression takes effect from now (the next run
    is computed again); a completed one-time schedule given a new time is active again.
    A paused schedule stays paused."""
    await account_for(account)
    return await update_schedule_audited(account, schedule_id, data)


@bp.delete("/api/accounts/<account>/schedules/<schedule_id>")
@requires(Permission.AUTOMATIONS_MANAGE)
@responds(204, "Deleted, with its run history; messages already queued still go out")
@document_response(ErrorBody, 404)
@tag(["schedules"])
async def delete_schedule(account: str, schedule_id: str) -> Response:
    """Delete a schedule and its run history. Messages it already queued are normal
    sends and still go out."""
    await account_for(account)
    async with _db().write() as conn:
        schedule = await store.get_schedule(conn, account, schedule_id)
        await store.delete_schedule(conn, account, schedule_id)
        await audit(conn, "schedule.delete", target=f"schedule:{schedule_id}", account=account)
        await _event(conn, "schedule.deleted", schedule)
    await poke("schedules")
    return Response(status=204)


@bp.post("/api/accounts/<account>/schedules/<schedule_id>/pause")
@requires(Permission.AUTOMATIONS_MANAGE)
@document_response(ScheduleOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@tag(["schedules"])
async def pause_schedule(account: str, schedule_id: str) -> ScheduleOut:
    """Pause: nothing is sent until it is resumed. Pausing a paused schedule is a no-op;
    a completed one cannot be paused (409)."""
    await account_for(account)
    now = time.time()
    async with _db().write() as conn:
        current = await store.get_schedule(conn, account, schedule_id)
        if current.state == "completed":
            raise Conflict(N_("the schedule has completed; there is nothing left to pause"))
        if current.state == "active":
            await store.update_schedule(
                conn,
                schedule_id,
                now,
                state="paused",
                state_reason="paused by a user",
                next_run_at=None,
            )
            schedule = await store.get_schedule(conn, account, schedule_id)
            await audit(conn, "schedule.pause", target=f"schedule:{schedule_id}", account=account)
            await _event(conn, "schedule.paused", schedule, reason="paused by a user")
        else:
            schedule = current
    await poke("schedules")
    return schedule_out(schedule)


@bp.post("/api/accounts/<account>/schedules/<schedule_id>/resume")
@requires(Permission.AUTOMATIONS_MANAGE)
@document_response(ScheduleOut, 200)
@document_response(ErrorBody, 404)
@document_response(ErrorBody, 409)
@tag(["schedules"])
async def resume_schedule(account: str, schedule_id: str) -> ScheduleOut:
    """Resume from now: occurrences that fell while paused are not sent. A one-time
    schedule whose time has passed cannot resume (409): give it a new `at`."""
    await account_for(account)
    now = time.time()
    async with _db().write() as conn:
        current = await store.get_schedule(conn, account, schedule_id)
        if current.state == "completed":
            raise Conflict(N_("the schedule has completed; give it a new time with PATCH"))
        if current.state == "paused":
            timing = current.timing
            if isinstance(timing, Once) and timing.at.timestamp() < now:
                raise Conflict(
                    N_("its time has passed while paused; give it a new `at` with PATCH")
                )
            first = first_due(timing, store.from_unix(now))
            if first is None:
                raise Conflict(N_("the expression has no occurrence left"))
            await store.update_schedule(
                conn,
                schedule_id,
                now,
                state="active",
                state_reason=None,
                next_run_at=store.to_unix(first),
            )
            schedule = await store.get_schedule(conn, account, schedule_id)
            await audit(conn, "schedule.resume", target=f"schedule:{schedule_id}", account=account)
            await _event(conn, "schedule.resumed", schedule)
        else:
            schedule = current
    await poke("schedules")
    return schedule_out(schedule)


@bp.get("/api/accounts/<account>/schedules/<schedule_id>/occurrences")
@requires(Permission.AUTOMATIONS_MANAGE)
@query(OccurrenceQuery)
@document_response(OccurrenceList, 200)
@document_response(ErrorBody, 404)
@tag(["schedules"])
async def list_occurrences(
    account: str, schedule_id: str, query_args: OccurrenceQuery
) -> OccurrenceList:
    """The next occurrences from now (also of a paused schedule: when it would run if
    resumed now), with daylight-saving rules applied. Empty once nothing is left."""
    await account_for(account)
    schedule = await store.get_schedule(_db(), account, schedule_id)
    if schedule.state == "completed":
        return OccurrenceList(items=[])
    now = datetime.now(UTC)
    if schedule.state == "active" and schedule.next_run_at is not None:
        # The pending run (due, perhaps just now) first, then what follows it.
        start = store.from_unix(schedule.next_run_at) - timedelta(microseconds=1)
        start = min(start, now)
    else:
        start = now
    clock = _clock(schedule)
    items = [
        OccurrenceOut(at=occurrence_key(at), local=local_text(at, clock))
        for at in upcoming(schedule.timing, start, query_args.count)
    ]
    return OccurrenceList(items=items)


@bp.get("/api/accounts/<account>/schedules/<schedule_id>/runs")
@requires(Permission.AUTOMATIONS_MANAGE)
@query(RunQuery)
@document_response(RunList, 200)
@document_response(ErrorBody, 404)
@tag(["schedules"])
async def list_runs(account: str, schedule_id: str, query_args: RunQuery) -> RunList:
    """The schedule's runs, newest first: each with its outcome (`sent`, `skipped`,
    `failed`) and the message id per recipient."""
    await account_for(account)
    await store.get_schedule(_db(), account, schedule_id)
    before = int(query_args.cursor) if query_args.cursor else None
    runs = await store.list_runs(
        _db(), account, schedule_id, before=before, limit=query_args.limit + 1
    )
    page = runs[: query_args.limit]
    more = len(runs) > query_args.limit
    items = [
        RunOut(
            id=r.id,
            occurrence=occurrence_key(store.from_unix(r.occurrence_at)),
            ran_at=r.ran_at,
            outcome=r.outcome,
            late_s=r.late_s,
            skipped=r.skipped,
            first_skipped=(
                None
                if r.first_skipped_at is None
                else occurrence_key(store.from_unix(r.first_skipped_at))
            ),
            messages=[RunMessage(**m) for m in r.messages],
            error=r.error,
        )
        for r in page
    ]
    return RunList(items=items, next=str(page[-1].id) if more else None)
