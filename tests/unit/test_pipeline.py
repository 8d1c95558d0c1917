"""The in-memory pipeline (appliance/worker/pipeline.py): every task runs, in order,
a failing one does not stop the next, and each run is counted and timed per task."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from appliance.messaging.models import MessageOut
from appliance.worker.pipeline import Pipeline, PipelineContext, PipelineTask


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _message() -> MessageOut:
    return MessageOut.model_validate(
        {
            "id": "M1",
            "account_id": "acc",
            "chat_id": "1@s.whatsapp.net",
            "direction": "in",
            "from": "1@s.whatsapp.net",
            "to": None,
            "type": "text",
            "content": {"type": "text", "text": {"body": "hi"}},
            "status": "received",
            "error": None,
            "reply_to": None,
            "timestamp": 1.0,
            "created_at": 1.0,
            "updated_at": 1.0,
            "deleted_at": None,
            "origin": None,
            "sender_name": None,
        }
    )


def test_each_task_runs_counted_by_outcome_and_timed() -> None:
    ran: list[str] = []

    async def fails(_: PipelineContext, message: MessageOut) -> None:
        ran.append(f"fails {message.id}")
        raise RuntimeError("no")

    async def works(_: PipelineContext, message: MessageOut) -> None:
        ran.append(f"works {message.id}")

    pipeline = Pipeline([PipelineTask("t_fails", fails), PipelineTask("t_works", works)])
    total = "appliance_pipeline_task_total"
    seconds = "appliance_pipeline_task_duration_seconds_count"
    before = {
        (task, outcome): _sample(total, {"task": task, "outcome": outcome})
        for task in ("t_fails", "t_works")
        for outcome in ("ok", "error")
    }
    timed = {task: _sample(seconds, {"task": task}) for task in ("t_fails", "t_works")}
    ctx = PipelineContext("acc", {}, None)
    for _ in range(2):
        outcomes = asyncio.run(pipeline.run(ctx, _message()))
        assert outcomes == {"t_fails": "error", "t_works": "ok"}
    assert ran == ["fails M1", "works M1"] * 2
    after = {
        key: _sample(total, {"task": key[0], "outcome": key[1]}) - value
        for key, value in before.items()
    }
    assert after == {
        ("t_fails", "ok"): 0,
        ("t_fails", "error"): 2,
        ("t_works", "ok"): 2,
        ("t_works", "error"): 0,
    }
    for task in ("t_fails", "t_works"):
        assert _sample(seconds, {"task": task}) - timed[task] == 2
