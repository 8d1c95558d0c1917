"""The message pipeline: an ordered list of tasks run for each new inbound message.

Tasks run after the message is committed. Each is isolated: one failing is logged
and counted and the next still runs. They are best-effort (a crash between the
commit and the run loses them): what must run exactly once, auto-replies and scripts,
runs from the durable automation trigger instead (appliance/automations/trigger.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from appliance.messaging.models import MessageOut
from appliance.observability import tracing

log = logging.getLogger(__name__)

PIPELINE_OUTCOMES = Counter(
    "appliance_pipeline_task_total",
    "Pipeline task runs by task and outcome (ok, error).",
    ["task", "outcome"],
)
PIPELINE_DURATION = Histogram(
    "appliance_pipeline_task_duration_seconds",
    "Time each pipeline task took per message.",
    ["task"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)


@dataclass(frozen=True)
class PipelineContext:
    account_id: str
    account_settings: dict[str, Any]
    engine: Any  # the account's Engine


TaskFn = Callable[[PipelineContext, MessageOut], Awaitable[None]]


@dataclass(frozen=True)
class PipelineTask:
    name: str
    run: TaskFn


class Pipeline:
    def __init__(self, tasks: list[PipelineTask]) -> None:
        self.tasks = list(tasks)
        # Each task's metric children, looked up once (a run is per inbound message).
        self._metrics = {
            task.name: (
                PIPELINE_OUTCOMES.labels(task=task.name, outcome="ok"),
                PIPELINE_OUTCOMES.labels(task=task.name, outcome="error"),
                PIPELINE_DURATION.labels(task=task.name),
            )
            for task in self.tasks
        }

    async def run(self, ctx: PipelineContext, message: MessageOut) -> dict[str, str]:
        """Run every task in order; returns each task's outcome."""
        outcomes = {}
        for task in self.tasks:
            ok, error, duration = self._metrics[task.name]
            start = time.perf_counter()
            try:
                with tracing.span(f"pipeline {task.name}"):
                    await task.run(ctx, message)
                outcome, counter = "ok", ok
            except Exception:
                outcome, counter = "error", error
                log.exception(
                    "pipeline task failed",
                    extra={
                        "task": task.name,
                        "account_id": ctx.account_id,
                        "message_id": message.id,
                    },
                )
            counter.inc()
            duration.observe(time.perf_counter() - start)
            outcomes[task.name] = outcome
        return outcomes


async def mark_as_read(ctx: PipelineContext, message: MessageOut) -> None:
    """The account setting mark_as_read: tell WhatsApp each inbound message was read."""
    if ctx.account_settings.get("mark_as_read") and ctx.engine is not None:
        await ctx.engine.mark_read(message.chat_id, [message.id])


def default_pipeline() -> Pipeline:
    return Pipeline([PipelineTask("mark_as_read", mark_as_read)])
