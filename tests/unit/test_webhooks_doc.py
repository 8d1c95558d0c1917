"""runbook/webhooks.md lists every event type a webhook can subscribe to: an integrator
reads that list, so a new event type must reach it."""

from __future__ import annotations

from pathlib import Path

from appliance.messaging.models import EVENT_TYPES

DOC = Path(__file__).resolve().parents[2] / "runbook" / "webhooks.md"


def test_every_event_type_is_listed() -> None:
    text = DOC.read_text()
    missing = [event for event in EVENT_TYPES if f"`{event}`" not in text]
    assert not missing, f"runbook/webhooks.md does not list {missing}"
