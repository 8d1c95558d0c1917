"""The automation steps every new inbound message runs through, in order (the durable
trigger, ``trigger.py``, runs them): auto-replies first; the scripts step joins the
list after them."""

from __future__ import annotations

from appliance.automations import auto_reply_step
from appliance.automations.trigger import Step


def automation_steps() -> list[Step]:
    return [auto_reply_step.STEP]
