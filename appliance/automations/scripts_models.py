"""Scripts: the request and response models the API and the worker share."""

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

from appliance.automations.schedule_times import parse_cron
from appliance.errors import N_
from appliance.ipc.scripts_protocol import MAX_CODE_CHARS, LogLine
from appliance.messaging.models import EVENT_TYPES, RECIPIENT_PATTERN, recipient_jid
from appliance.schemas_base import Bool, Strict

MAX_FILTER_CHATS = 200
MAX_ALLOW_HOSTS = 20
HOST_PATTERN = (
    r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$"
)
Chat = Annotated[str, StringConstraints(max_length=64, pattern=RECIPIENT_PATTERN)]
Host = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=HOST_PATTERN)]

TriggerType = Literal["message", "outbound", "schedule", "event", "manual"]
RunTrigger = Literal["message", "outbound", "schedule", "event", "manual", "dry_run"]
# Event types a script may be triggered by: every type of the event log except
# ``script.run`` (two scripts triggered by each other's runs would never stop).
TRIGGER_EVENT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t != "script.run")
MAX_EVENT_TYPES = 20


def compile_filter_regex(pattern: str) -> Any:
    """The filter's regex on RE2 (linear time); ValueError names what is wrong."""
    import re2

    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = 1 << 20
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        raise ValueError(
            N_(
                "regex {pattern} is not valid or not supported (RE2): {reason}",
                pattern=repr(pattern),
                reason=exc,
            )
        ) from None


class TriggerFilter(Strict):
    """Which messages run a `message` (inbound) or `outbound` script; empty means every
    one. For outbound messages `senders` never matches (the account sends them)."""

    chats: list[Chat] = Field(
        default=[],
        max_length=MAX_FILTER_CHATS,
        description="Only these chats (E.164 numbers or chat ids); empty for every chat",
    )
    senders: list[Chat] = Field(
        default=[],
        max_length=MAX_FILTER_CHATS,
        description="Only messages from these senders (in groups: the participant); "
        "empty for every sender",
    )
    chat_type: Literal["any", "private", "group"] = "any"
    contains: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = Field(
        default=None, description="Only messages whose text contains this (any case)"
    )
    regex: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = Field(
        default=None, description="Only messages whose text matches (RE2 syntax, any case)"
    )

    @field_validator("chats", "senders")
    @classmethod
    def _jids(cls, value: list[str]) -> list[str]:
        return sorted({recipient_jid(v) for v in value})

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_filter_regex(value)
        return value


class ScriptSchedule(Strict):
    """When a `schedule` script runs: a cron expression in an IANA time zone."""

    cron: Annotated[str, StringConstraints(min_length=1, max_length=120)] = Field(
        description="5 fields: minute hour day-of-month month day-of-week, e.g. `0 9 * * mon-fri`"
    )
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="IANA time zone the cron fields are read in, e.g. `Europe/Berlin`"
    )

    @model_validator(mode="after")
    def _valid(self) -> ScriptSchedule:
        parse_cron(self.cron, self.timezone)  # TimingError is a ValueError: a 400
        return self


class ScriptIn(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=80, strip_whitespace=True)]
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    code: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CODE_CHARS)] = Field(
        description="JavaScript: the body of an async function (top-level `await` works)"
    )
    trigger: TriggerType = Field(
        default="message",
        description="`message`: each inbound message matching `filter`; `outbound`: each "
        "message the account sent (`message.sent`) matching `filter`, except sends of "
        "scripts; `schedule`: on `schedule`; `event`: each event of `event_types`; "
        "`manual`: only run by hand",
    )
    filter: TriggerFilter = TriggerFilter()
    schedule: ScriptSchedule | None = Field(
        default=None, description="Required for (and only for) the `schedule` trigger"
    )
    event_types: list[str] = Field(
        default=[],
        max_length=MAX_EVENT_TYPES,
        description="The `event` trigger's event types (required for it, empty otherwise); "
        "any type of the event log but `script.run`",
    )
    http_allow_hosts: list[Host] = Field(
        default=[],
        max_length=MAX_ALLOW_HOSTS,
        description="Host names `http.fetch` may reach (exact names); empty: none",
    )
    active: Bool = True

    @field_validator("http_allow_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return sorted({host.lower() for host in value})

    @field_validator("event_types")
    @classmethod
    def _event_types(cls, value: list[str]) -> list[str]:
        for i, name in enumerate(value):
            if name not in TRIGGER_EVENT_TYPES:
                raise ValueError(
                    N_(
                        "event_types.{index}: {name} is not an event type scripts can be "
                        "triggered by ({known})",
                        index=i,
                        name=repr(name[:60]),
                        known=", ".join(TRIGGER_EVENT_TYPES),
                    )
                )
        return sorted(set(value))

    @model_validator(mode="after")
    def _trigger_fields(self) -> ScriptIn:
        if (self.trigger == "schedule") != (self.schedule is not None):
            raise ValueError(N_("schedule is required for the schedule trigger and only for it"))
        if (self.trigger == "event") != bool(self.event_types):
            raise ValueError(N_("event_types is required for the event trigger and only for it"))
        return self


class ScriptOut(BaseModel):
    id: str
    account_id: str
    name: str
    description: str
    code: str
    trigger: TriggerType
    filter: TriggerFilter
    schedule: ScriptSchedule | None
    event_types: list[str]
    next_run_at: float | None = Field(description="`schedule`: the next run (epoch seconds)")
    http_allow_hosts: list[str]
    active: bool
    paused_reason: str | None = Field(
        description="Why failures paused it (active is then false); null otherwise"
    )
    consecutive_failures: int
    created_at: float
    updated_at: float


class ScriptList(BaseModel):
    items: list[ScriptOut]


class SampleMessage(Strict):
    """The trigger message of a dry run or a manual run (all optional)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Chat = Field(default="+905550000000", alias="from")
    chat_id: Chat | None = Field(default=None, description="Defaults to the sender's chat")
    body: Annotated[str, StringConstraints(max_length=10_000)] = "Test message"
    id: Annotated[str, StringConstraints(max_length=128)] = "sample"


class RunIn(Strict):
    message: SampleMessage | None = Field(
        default=None, description="The script's `message`; none for a plain manual run"
    )


class Effect(BaseModel):
    """Something a run did (or, in a dry run, would have done)."""

    type: Literal[
        "send",
        "storage.set",
        "storage.delete",
        "http.fetch",
        "tags.add",
        "tags.remove",
        "chat.setStatus",
        "chat.assign",
    ]
    detail: dict[str, Any]


class ScriptRunOut(BaseModel):
    id: str | None = Field(description="null for a dry run (nothing is stored)")
    script_id: str
    trigger: RunTrigger
    trigger_message_id: str | None = Field(
        description="What triggered it: the message id (message, outbound), the event id "
        "(event) or the occurrence (schedule); null for manual and dry runs"
    )
    state: Literal["running", "ok", "error"]
    attempts: int
    error: str | None
    limit: str | None = Field(
        description="The limit that ended the run: wall, cpu, heap, host_calls, "
        "host_call_size, crash; null otherwise"
    )
    logs: list[LogLine]
    effects: list[Effect]
    host_calls: int
    wall_ms: float | None
    cpu_ms: float | None
    started_at: float
    finished_at: float | None


class ScriptRunList(BaseModel):
    items: list[ScriptRunOut]
    next: str | None
