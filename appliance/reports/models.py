"""The reports' request and answer models (the API's and the panel's)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from appliance.errors import Unprocessable
from appliance.messaging.models import check_timezone
from appliance.schemas_base import Strict

MAX_DAYS = 400
# Dates a report may name: Unix time and the timezone database cover them all.
FIRST_DATE = dt.date(1970, 1, 2)
LAST_DATE = dt.date(2999, 12, 30)
_TZ = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$", max_length=64)
]


class ReportQuery(Strict):
    """The range and timezone of a report."""

    start: dt.date = Field(description="First day (YYYY-MM-DD, local to `tz`), included")
    end: dt.date = Field(description="Last day (YYYY-MM-DD, local to `tz`), included")
    tz: _TZ | None = Field(
        default=None,
        description="IANA timezone the days and hours are counted in (Europe/Istanbul); "
        "default: the account's timezone setting",
    )
    agent: Annotated[str, StringConstraints(pattern=r"^(me|[1-9][0-9]{0,17})$")] | None = Field(
        default=None,
        description="Only this agent's conversations (a user id, or `me`): conversations "
        "and response times. Agents may ask only for `me`",
    )
    limit: Annotated[int, Field(ge=1, le=100)] = Field(
        default=10, description="Top chats: how many (1 to 100)"
    )


def query_problems(q: ReportQuery) -> list[dict[str, str]]:
    """What the schema cannot say about a query: the timezone database and the rules
    between the dates (the API answers them 422; the panel shows them on its form)."""
    issues: list[dict[str, str]] = []
    if q.tz is not None:
        try:
            check_timezone(q.tz)
        except ValueError as exc:
            issues.append({"path": "tz", "message": str(exc), "code": "value_error"})
    if q.end < q.start:
        issues.append(
            {"path": "end", "message": "end must not be before start", "code": "value_error"}
        )
    elif q.start < FIRST_DATE or q.end > LAST_DATE:
        message = f"dates must be from {FIRST_DATE} to {LAST_DATE}"
        issues.append({"path": "start", "message": message, "code": "value_error"})
    elif (q.end - q.start).days + 1 > MAX_DAYS:
        message = f"a report covers at most {MAX_DAYS} days"
        issues.append({"path": "end", "message": message, "code": "value_error"})
    return issues


def check_query(q: ReportQuery) -> None:
    """Unprocessable (422) naming each of ``query_problems``."""
    issues = query_problems(q)
    if issues:
        raise Unprocessable("the request is invalid; see issues", issues=issues)


class ReportScope(BaseModel):
    account_id: str
    timezone: str = Field(description="The IANA timezone days and hours are counted in")
    start: dt.date
    end: dt.date
    agent_id: int | None = Field(description="The agent the figures are limited to, if any")


class MessageCounts(BaseModel):
    received: int = Field(description="Inbound messages")
    sent_api: int = Field(description="Outbound, sent through the HTTP API (and the panel)")
    sent_phone: int = Field(description="Outbound, sent from the phone or another device")
    sent_automation: int = Field(description="Outbound, sent by automations")


class MessagesDay(MessageCounts):
    date: dt.date


class MessagesHour(MessageCounts):
    hour: int = Field(ge=0, le=23, description="Local hour of day, summed over the range")


class MessagesReport(BaseModel):
    """Messages in and out per day and per hour of day, by origin."""

    scope: ReportScope
    totals: MessageCounts
    days: list[MessagesDay]
    hours: list[MessagesHour]


class ConversationsDay(BaseModel):
    date: dt.date
    new: int
    resolved: int


class ConversationsReport(BaseModel):
    """Conversations begun and resolved in the range; those waiting now."""

    scope: ReportScope
    new: int = Field(description="Conversations begun (new chats, reopened ones)")
    resolved: int
    waiting_now: int = Field(description="Open or pending chats with an unanswered message")
    longest_wait_s: float | None = Field(description="How long the oldest of those has waited")
    days: list[ConversationsDay]


class Timing(BaseModel):
    count: int
    median_s: float | None
    p90_s: float | None


class AgentTimings(BaseModel):
    agent_id: int | None = Field(description="The assignee; null: nobody")
    username: str | None
    first_response: Timing
    resolution: Timing


class ResponseTimesReport(BaseModel):
    """First response time (first wait to first reply by a person) and resolution time
    (conversation begun to resolved), median and p90, overall and per assignee."""

    scope: ReportScope
    business_hours: bool = Field(
        description="True when the account has business hours: only their seconds count"
    )
    first_response: Timing
    resolution: Timing
    agents: list[AgentTimings]


class HourCell(BaseModel):
    weekday: int = Field(ge=0, le=6, description="0 Monday .. 6 Sunday")
    hour: int = Field(ge=0, le=23)
    received: int
    sent: int


class BusiestHoursReport(BaseModel):
    """Messages per local weekday and hour (168 cells), busiest first in `busiest`."""

    scope: ReportScope
    cells: list[HourCell]
    busiest: list[HourCell]


class TopChat(BaseModel):
    chat_id: str
    name: str | None
    received: int
    sent: int
    total: int


class TopChatsReport(BaseModel):
    """The chats with the most messages in the range."""

    scope: ReportScope
    chats: list[TopChat]


class TagFigures(BaseModel):
    tag_id: int
    name: str
    color: str
    chats: int = Field(description="Chats carrying the tag now")
    tagged_in_range: int = Field(description="Chats given the tag in the range")
    conversations: int = Field(description="Conversations begun in the range on tagged chats")


class TagsReport(BaseModel):
    scope: ReportScope
    tags: list[TagFigures]


class AutomationsDay(BaseModel):
    date: dt.date
    auto_replies_fired: int
    script_runs_ok: int
    script_runs_failed: int


class AutomationsReport(BaseModel):
    """Auto-replies fired and script runs (finished ok or failed)."""

    scope: ReportScope
    auto_replies_fired: int
    script_runs_ok: int
    script_runs_failed: int
    days: list[AutomationsDay]


class WebhooksDay(BaseModel):
    date: dt.date
    delivered: int
    dead: int
    attempts_ok: int
    attempts_failed: int


class WebhooksReport(BaseModel):
    """Webhook deliveries of the account's events that ended in the range."""

    scope: ReportScope
    delivered: int
    dead: int = Field(description="Deliveries given up (dead letters) in the range")
    success_rate: float | None = Field(description="delivered / (delivered + dead)")
    attempts_ok: int
    attempts_failed: int
    attempt_success_rate: float | None
    dead_letters_now: int = Field(description="Dead deliveries kept now (replayable)")
    days: list[WebhooksDay]
