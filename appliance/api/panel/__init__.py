"""The web panel: server-rendered pages (Jinja2 + htmx) served by the API processes.

``bp`` (in ``web``) is the blueprint, registered in ``appliance.api.app``; importing
this package registers every screen's routes on it. Screens call the same stores and
services as the JSON API (never the API over HTTP) and are checked by the same access
hook (``appliance.api.access``). Conventions and "how to add a screen":
``runbook/panel.md``.
"""

from __future__ import annotations

from appliance.api.panel import (
    accounts_views,
    admin_views,
    attributes_views,
    autoreply_views,
    contacts_views,
    conversation,
    edit_views,
    inbox_views,
    organize_views,
    reports_views,
    schedule_edit_views,
    schedules_views,
    scripts_views,
    session_views,
    settings_views,
    setup_views,
    webhooks_views,
)
from appliance.api.panel.web import bp

__all__ = [
    "accounts_views",
    "admin_views",
    "attributes_views",
    "autoreply_views",
    "bp",
    "contacts_views",
    "conversation",
    "edit_views",
    "inbox_views",
    "organize_views",
    "reports_views",
    "schedule_edit_views",
    "schedules_views",
    "scripts_views",
    "session_views",
    "settings_views",
    "setup_views",
    "webhooks_views",
]
