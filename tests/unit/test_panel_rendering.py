"""What the panel's rendering keeps per page: the language, catalog, zone and today
looked up once (``i18n.rendering``) give what the lookups give one at a time; message
views read as attributes and as keys, and a missing field stays missing for Jinja."""

from __future__ import annotations

import time

import pytest
from jinja2 import Environment

from appliance.api.panel import i18n
from appliance.api.panel.inbox_views import View


def test_rendering_answers_as_the_lookups_do() -> None:
    now = time.time()
    stamps = [now, now - 86_400, now - 5 * 86_400, now - 400 * 86_400]
    outside = [(i18n.fmt_day(t), i18n.fmt_when(t), i18n.fmt_time(t)) for t in stamps]
    with i18n.rendering():
        inside = [(i18n.fmt_day(t), i18n.fmt_when(t), i18n.fmt_time(t)) for t in stamps]
        assert i18n.language() == i18n.DEFAULT_LANGUAGE
        assert i18n.gettext("Today") == "Today"
    assert inside == outside
    assert inside[0][0] == "Today" and inside[1][0] == "Yesterday"
    assert inside[2][1] != inside[2][2]  # an older day shows its date, not its time
    # A given ``now`` is honoured inside a rendering too (not the rendering's today).
    with i18n.rendering():
        assert i18n.fmt_day(now, now=now + 86_400) == "Yesterday"


def test_view_reads_as_attributes_and_keys() -> None:
    view = View({"text": "<b>hi</b>", "sender": None})
    view.time = "10:00"
    assert view["text"] == view.text == "<b>hi</b>" and "time" in view
    assert view.get("missing", 1) == 1
    with pytest.raises(AttributeError):
        _ = view.missing
    env = Environment(autoescape=True)
    page = env.from_string("{{ m.text }}|{{ m.time }}|{{ m.missing }}|{{ m.sender or '-' }}")
    assert page.render(m=view) == "&lt;b&gt;hi&lt;/b&gt;|10:00||-"
