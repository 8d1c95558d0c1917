# ruff: noqa: RUF001  (Turkish text: the dotless i is meant)
"""The panel's Reports screen in the in-process app: the default range shows today's
message in the SVG charts (no inline style or script), each report links its CSV,
the CSV link works with the session, bad dates are a 400 page with the reason, and
agents get the 403 page and no menu entry. In Turkish the durations, the dates of the
axes and the numbers are Turkish; the wide tables are stacked on phones."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

from babel.dates import format_skeleton
from quart import Quart

from appliance.db.database import Database
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import ALICE, A, _run, _sign_in


def test_reports_screen(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, _csrf = await _sign_in(admin, "admin1")
        assert status == 303
        response = await admin.get("/panel/reports")
        assert response.status_code == 200
        page = await response.get_data(as_text=True)
        assert 'href="/panel/reports" aria-current="page"' in page
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        main = page[page.index('<main id="main"') :]
        assert "<svg" in main and "<rect" in main and "<polyline" in main
        assert " style=" not in main and "<script" not in main
        # The setup's inbound message of today, in the charts' tooltips and the totals.
        assert "Received: <strong>1</strong>" in page
        assert "Shop" in page and 'name="tz" value="UTC"' in page
        links = re.findall(r'href="(/api/reports/accounts/acc_a/[a-z_]+\.csv\?[^"]+)"', page)
        assert len(links) == 8
        csv = await admin.get(links[0].replace("&amp;", "&"))
        assert csv.status_code == 200 and csv.mimetype == "text/csv"
        assert (await csv.get_data(as_text=True)).startswith("date,hour,received")
        # Another timezone and range; Turkish.
        turkish = await admin.get(
            f"/panel/reports?account={A}&start=2026-01-01&end=2026-12-31&tz=Asia/Kolkata",
            headers={"Accept-Language": "tr"},
        )
        assert turkish.status_code == 200
        text = await turkish.get_data(as_text=True)
        assert "Raporlar" in text and 'value="Asia/Kolkata"' in text
        # A conversation answered in 9 s and resolved a minute later, today: the
        # response times in the user's language, the table stacked on phones.
        now = time.time()
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO report_conversations (account_id, chat_jid, opened_at, "
                "first_wait_at, first_response_at, resolved_at, assignee_id) "
                "VALUES (?, ?, ?, NULL, ?, ?, NULL)",
                (A, ALICE, now - 100, now - 91, now - 31),
            )
        english = await (await admin.get(f"/panel/reports?account={A}")).get_data(as_text=True)
        times = english[english.index('id="response-times"') : english.index('id="report-busiest"')]
        assert "0 min 09 s" in times and "1 min 09 s" in times
        assert '<table class="list stacked" id="response-times">' in english
        assert 'data-label="First response, median"' in times
        # each column's header names its group (two "Median" columns said neither)
        header = times[times.index("<thead>") : times.index("</thead>")]
        assert ">First response, p90</th>" in header and ">Resolution, median</th>" in header
        today = dt.datetime.now(dt.UTC).date()
        assert format_skeleton("MMMd", today, locale="en") in english
        tr = await admin.get(f"/panel/reports?account={A}", headers={"Accept-Language": "tr"})
        tr_text = await tr.get_data(as_text=True)
        tr_times = tr_text[
            tr_text.index('id="response-times"') : tr_text.index('id="report-busiest"')
        ]
        assert "0 dk 09 sn" in tr_times and "1 dk 09 sn" in tr_times
        assert " min " not in tr_times and 'data-label="İlk yanıt, medyan"' in tr_times
        assert format_skeleton("MMMd", today, locale="tr") in tr_text
        for table in ("response-times", "top-chats", "report-tag-table"):
            assert f'<table class="list stacked" id="{table}">' in tr_text, table
        # The axes' labels are outside the stretched plot (their size stays put).
        plots = re.findall(r'<svg class="chart-plot".*?</svg>', tr_text, flags=re.S)
        assert len(plots) == 4 and not any("<text" in p for p in plots)
        # Bad input: the form again with the reason, status 400.
        bad = await admin.get(f"/panel/reports?account={A}&start=2026-02-01&end=2026-01-01")
        assert bad.status_code == 400
        assert 'id="report-errors"' in await bad.get_data(as_text=True)
        unknown = await admin.get(f"/panel/reports?account={A}&tz=Mars/Base")
        assert unknown.status_code == 400
        missing = await admin.get("/panel/reports?account=nope")
        assert missing.status_code == 404
        # Agents: no menu entry, the 403 page.
        agent = app.test_client()
        await _sign_in(agent, "agent1")
        inbox = await (await agent.get("/panel/inbox")).get_data(as_text=True)
        assert 'href="/panel/reports"' not in inbox
        assert (await agent.get("/panel/reports")).status_code == 403

    _run(open_db, db_path, tmp_path, test)
