"""The reports' charts and durations as the panel formats them: whole y ticks in the
language's digits, at most twelve x labels (six on phones, a subset of them), month and
day as the language writes them, the stretched plot holding no text, and durations in
the user's language ("0 dk 09 sn" in Turkish)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from quart import Quart, g

from appliance.api.panel import charts, durations
from appliance.api.panel.i18n import fmt_month_day


def _in(language: str, work: Callable[[], Any]) -> Any:
    """``work()`` inside a request whose panel language is ``language``."""
    app = Quart(__name__)

    async def run() -> Any:
        async with app.test_request_context("/"):
            g.panel_language = language
            return work()

    return asyncio.run(run())


def test_y_ticks_are_whole_numbers_in_the_languages_digits() -> None:
    assert charts.nice_max(0) == 1 and charts.nice_max(1) == 1 and charts.nice_max(2) == 2
    assert charts.nice_max(3) == 5 and charts.nice_max(7) == 10 and charts.nice_max(11) == 20
    assert charts.nice_max(4200) == 5000 and charts.nice_max(10_000) == 10_000
    # A scale of 1 or 5 has no whole half: only 0 and the top.
    one = _in("en", lambda: charts.bars(["a"], [("x", [1])]))
    assert [t.label for t in one.y_ticks] == ["0", "1"]
    five = _in("en", lambda: charts.bars(["a"], [("x", [3])]))
    assert [t.label for t in five.y_ticks] == ["0", "5"]
    two = _in("en", lambda: charts.bars(["a"], [("x", [2])]))
    assert [t.label for t in two.y_ticks] == ["0", "1", "2"]
    # From the bottom of the plot (its y: the grid lines) to the top.
    assert [t.at for t in two.y_ticks] == [charts.PLOT_H, charts.PLOT_H / 2, 0]
    big_en = _in("en", lambda: charts.lines(["a", "b"], [("x", [12_000, 5])]))
    assert [t.label for t in big_en.y_ticks] == ["0", "10,000", "20,000"]
    big_tr = _in("tr", lambda: charts.lines(["a", "b"], [("x", [12_000, 5])]))
    assert [t.label for t in big_tr.y_ticks] == ["0", "10.000", "20.000"]
    bars_tr = _in("tr", lambda: charts.bars(["4 Kas"], [("Gelen", [1234])]))
    assert bars_tr.bars[0].title == "4 Kas · Gelen: 1.234"


def test_x_labels_are_thinned_to_twelve_and_to_six_on_phones() -> None:
    for n in (1, 7, 24, 30, 31, 90, 366):
        ticks = charts.x_ticks([str(i) for i in range(n)])
        phone = [t for t in ticks if not t.thin]
        assert 1 <= len(ticks) <= charts.WIDE_LABELS, (n, len(ticks))
        assert 1 <= len(phone) <= charts.PHONE_LABELS, (n, len(phone))
        assert phone[0].label == "0"  # the first day always labelled
        assert len(phone) >= min(n, charts.PHONE_LABELS) - 2, (n, len(phone))
        # Centred on their bar, in percent of the axis.
        assert all(0 < t.at < 100 for t in ticks)
        assert ticks[0].at == round(50 / n, 3)
    hours = charts.x_ticks([f"{h:02d}" for h in range(24)])
    assert [t.label for t in hours] == [f"{h:02d}" for h in range(0, 24, 2)]
    assert [t.label for t in hours if not t.thin] == ["00", "04", "08", "12", "16", "20"]


def test_the_plot_holds_no_text_and_the_heatmap_its_168_cells() -> None:
    labels = [str(i) for i in range(30)]
    chart = _in("en", lambda: charts.bars(labels, [("a", [i for i in range(30)]), ("b", [1] * 30)]))
    assert (chart.width, chart.height) == (charts.PLOT_W, charts.PLOT_H)
    assert len(chart.bars) == 29 + 30  # no bar for a zero
    assert all(b.x >= 0 and b.x + b.width <= charts.PLOT_W + 0.01 for b in chart.bars)
    assert all(b.y >= 0 and b.y + b.height <= charts.PLOT_H + 0.01 for b in chart.bars)
    grid = [[0] * 24 for _ in range(7)]
    grid[2][13] = 4
    heat = _in(
        "tr", lambda: charts.heatmap(grid, ["Pzt", "Sal", "Çar", "Per", "Cum", "Cmt", "Paz"])
    )
    assert len(heat.cells) == 168 and heat.rows[0] == "Pzt"
    busiest = max(heat.cells, key=lambda c: c.opacity)
    assert busiest.title == "Çar 13:00 · 4" and busiest.opacity == 1.0
    assert all(c.x + c.width <= heat.width and c.y + c.height <= heat.height for c in heat.cells)
    assert [t.label for t in heat.x_ticks] == ["00", "03", "06", "09", "12", "15", "18", "21"]


def test_month_and_day_as_the_language_writes_them() -> None:
    day = dt.date(2026, 11, 4)
    assert _in("en", lambda: fmt_month_day(day)) == "Nov 4"
    assert _in("tr", lambda: fmt_month_day(day)) == "4 Kas"


def test_durations_in_the_users_language() -> None:
    cases = [(9, "0 min 09 s", "0 dk 09 sn"), (754.4, "12 min 34 s", "12 dk 34 sn")]
    cases += [(3600 + 5 * 60 + 29, "1 h 05 min", "1 sa 05 dk")]
    cases += [(3 * 86400 + 4 * 3600, "3 d 04 h", "3 g 04 sa")]
    cases += [(1500 * 86400, "1,500 d 00 h", "1.500 g 00 sa")]
    for seconds, english, turkish in cases:
        assert _in("en", lambda s=seconds: durations.show(s)) == english
        assert _in("tr", lambda s=seconds: durations.show(s)) == turkish
    assert _in("tr", lambda: durations.show(None)) == "-"
    assert _in("en", lambda: durations.show(-0.4)) == "0 min 00 s"
