"""The panel's Reports screen in Debian's chromium against the session's installation:
a sandbox account with two inbound messages, one answered; the screen draws its SVG
charts under the strict CSP (no console errors), passes axe in light and dark, changes
range and timezone through its form, downloads a report's CSV with the session, and fits
375 px: the charts' labels are 13 px at every width (the date axis thinned to six on a
phone), the wide tables stacked; in Turkish the dates, numbers and durations are
Turkish."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from babel.dates import format_skeleton

from tests.browser.test_panel import WAIT_MS, _axe, _clean, _inject, _shot, _sign_in, _wait
from tests.integration.conftest import Appliance, admin_password, bearer, new_api_key

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# The labels shown (not hidden on phones) under a selector: text, CSS font size, and
# the height drawn on the screen (a label scaled with its chart is smaller or larger).
LABELS = """(selector) => Array.from(document.querySelectorAll(selector))
  .filter((el) => getComputedStyle(el).display !== 'none')
  .map((el) => [
    el.textContent, getComputedStyle(el).fontSize, el.getBoundingClientRect().height,
  ])"""
DAY_AXIS = "#report-messages figure.chart:first-of-type .chart-x text"
Y_AXIS = "#report-messages figure.chart:first-of-type .chart-y span"


def _labels_fixed(page: Any, selector: str) -> list[str]:
    """The shown labels' texts, after checking each is drawn at 13 CSS px."""
    found = page.evaluate(LABELS, selector)
    assert found, selector
    for text, size, height in found:
        assert size == "13px", (selector, text, size)
        assert 10 <= height <= 20, (selector, text, height)
    return [text for text, _size, _height in found]


def _fits(page: Any, table: str) -> None:
    """The table scrolls neither itself nor its wrapper sideways."""
    widths = page.evaluate(
        "(id) => { const t = document.getElementById(id);"
        " return [t.parentElement.scrollWidth, t.parentElement.clientWidth]; }",
        table,
    )
    assert widths[0] <= widths[1] + 1, (table, widths)


def _both_themes(page: Any, artefacts: Path, name: str) -> None:
    page.emulate_media(color_scheme="light")
    _axe(page, name)
    _shot(page, artefacts, f"{name}-en-light")
    page.emulate_media(color_scheme="dark")
    _axe(page, f"{name} (dark)")
    _shot(page, artefacts, f"{name}-en-dark")
    page.emulate_media(color_scheme="light")


def test_reports_screen(appliance: Appliance, page: Any, artefacts: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    account = f"brep_{suffix}"
    digits = f"{int(suffix, 16) % 1000:03d}"
    with bearer(appliance, new_api_key(appliance, f"brep-{suffix}", "admin")) as admin:
        body = {
            "id": account,
            "name": f"Reports {suffix}",
            "engine": "sandbox",
            "engine_settings": {"pairing_delay_ms": 50},
        }
        assert admin.post("/api/accounts", json=body).status_code == 201
        _wait(
            lambda: admin.get(f"/api/accounts/{account}/status").json()["state"] == "connected",
            "the sandbox account connected",
        )
        for n, phone in enumerate((f"+905550003{digits}", f"+905550004{digits}")):
            _inject(admin, account, phone, f"hello {n}", f"Customer {n}")
        _wait(
            lambda: len(admin.get(f"/api/accounts/{account}/chats").json()["items"]) == 2,
            "both chats stored",
        )
        # An answer to the first: a first response in the response times.
        reply = admin.post(
            f"/api/accounts/{account}/messages",
            json={"to": f"+905550003{digits}", "type": "text", "text": {"body": "Merhaba"}},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert reply.status_code == 202, reply.text

    _sign_in(page, appliance, "admin", admin_password(appliance))
    page.goto(f"{appliance.base_url}/panel/reports?account={account}")
    page.wait_for_selector("#report-messages svg rect", timeout=WAIT_MS)
    assert page.locator('nav a[aria-current="page"]').inner_text() == "Reports"
    assert "Received: 2" in page.locator("#report-messages p").first.inner_text()
    assert page.locator("#report-busiest svg rect").count() == 168
    assert page.locator("#report-conversations svg polyline").count() == 2
    # Wide: 13 px labels, the 30 days' axis labelled every few days (at most 12).
    days = _labels_fixed(page, DAY_AXIS)
    assert 6 < len(days) <= 12, days
    today = dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=29)
    assert days[0] == format_skeleton("MMMd", first, locale="en"), days
    assert _labels_fixed(page, Y_AXIS)[0] == "0"
    assert len(_labels_fixed(page, "#report-busiest .chart-rows span")) == 7
    assert re.fullmatch(
        r"\d+ min \d\d s", page.locator("#response-times tbody td").nth(1).inner_text()
    )
    _both_themes(page, artefacts, "reports")

    # Another range and timezone through the form.
    today = dt.datetime.now(dt.UTC).date()
    page.fill("#r-start", (today - dt.timedelta(days=6)).isoformat())
    page.fill("#r-end", today.isoformat())
    page.fill("#r-tz", "America/New_York")
    page.click("#report-form button[type=submit]")
    page.wait_for_url("**tz=America%2FNew_York**")
    assert page.locator("#r-tz").input_value() == "America/New_York"
    page.wait_for_selector("#report-messages svg rect", timeout=WAIT_MS)

    # The CSV of a report, downloaded with the session.
    with page.expect_download(timeout=WAIT_MS) as info:
        page.click("#report-top a:has-text('CSV')")
    path = info.value.path()
    text = Path(path).read_text(encoding="utf-8")
    assert text.startswith("chat_id,name,received,sent,total")
    assert "Customer" in text or "@s.whatsapp.net" in text

    # A phone's width: the charts scale, the page does not scroll sideways.
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(f"{appliance.base_url}/panel/reports?account={account}")
    page.wait_for_selector("#report-messages svg rect", timeout=WAIT_MS)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 380, width
    # The labels keep their size; the date axis shows six at most; tables stacked.
    phone_days = _labels_fixed(page, DAY_AXIS)
    assert 3 <= len(phone_days) <= 6 and set(phone_days) <= set(days), phone_days
    _labels_fixed(page, Y_AXIS)
    for table in ("response-times", "top-chats"):
        _fits(page, table)
    # The header row is for screen readers only; each cell says its column.
    assert page.locator("#response-times thead").bounding_box()["height"] <= 1
    assert (
        page.evaluate(
            "getComputedStyle(document.querySelector('#response-times td'), '::before').content"
        )
        == '"First responses"'
    )
    _shot(page, artefacts, "reports-en-light-phone")

    # Turkish, dark, at the phone's width: month names, digits and durations in Turkish.
    page.context.set_extra_http_headers({"Accept-Language": "tr-TR,tr;q=0.9"})
    page.emulate_media(color_scheme="dark")
    page.goto(f"{appliance.base_url}/panel/reports?account={account}")
    page.wait_for_selector("#report-messages svg rect", timeout=WAIT_MS)
    assert page.evaluate("document.documentElement.lang") == "tr"
    tr_days = _labels_fixed(page, DAY_AXIS)
    assert tr_days[0] == format_skeleton("MMMd", first, locale="tr"), tr_days
    median = page.locator("#response-times tbody td").nth(1).inner_text()
    assert re.fullmatch(r"\d+ dk \d\d sn", median), median
    assert page.evaluate("document.documentElement.scrollWidth") <= 380
    for table in ("response-times", "top-chats"):
        _fits(page, table)
    _axe(page, "reports (Turkish, dark, phone)")
    _shot(page, artefacts, "reports-tr-dark-phone")
    page.screenshot(path=str(artefacts / "panel-reports-tr-dark-phone-full.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.emulate_media(color_scheme="light")
    page.reload()
    page.wait_for_selector("#report-messages svg rect", timeout=WAIT_MS)
    _labels_fixed(page, DAY_AXIS)
    _shot(page, artefacts, "reports-tr-light")
    page.screenshot(path=str(artefacts / "panel-reports-tr-light-full.png"), full_page=True)
    page.context.set_extra_http_headers({})
    _clean(page)
