"""The panel's Reports screen in Debian's chromium against the session's installation:
a sandbox account with two inbound messages; the screen draws its SVG charts under the
strict CSP (no console errors), passes axe in light and dark, changes range and
timezone through its form, downloads a report's CSV with the session, and fits 375 px."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_panel import WAIT_MS, _axe, _clean, _inject, _shot, _sign_in, _wait
from tests.integration.conftest import Appliance, admin_password, bearer, new_api_key

pytestmark = [pytest.mark.integration, pytest.mark.browser]


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

    _sign_in(page, appliance, "admin", admin_password(appliance))
    page.goto(f"{appliance.base_url}/panel/reports?account={account}")
    page.wait_for_selector("#report-messages svg rect", timeout=WAIT_MS)
    assert page.locator('nav a[aria-current="page"]').inner_text() == "Reports"
    assert "Received: 2" in page.locator("#report-messages p").first.inner_text()
    assert page.locator("#report-busiest svg rect").count() == 168
    assert page.locator("#report-conversations svg polyline").count() == 2
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
    _shot(page, artefacts, "reports-en-light-phone")
    _clean(page)
