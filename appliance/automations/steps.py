"""The automation steps every new inbound message runs through, in order (the durable
trigger, ``trigger.py``, runs them): auto-replies first; the worker appends the
scripts step after them (``script_triggers.scripts_step``: it needs the worker's
ScriptRunner)."""

from __future__ import annotations

from appliance.automations import auto_reply_step
from appliance.automations.trigger import Step


def automation_steps() -> list[Step]:
    return [auto_reply_step.STEP]
