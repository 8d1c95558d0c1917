"""A refused htmx action says so: the panel's error answers (4xx, an error fragment
retargeted at the page's message area) are shown, not dropped as htmx does by default.

In Debian's chromium against the session's real installation: a conversation is open,
another administrator deletes its account meanwhile, then "Resolve" is clicked. The
server answers 404 with the "not found" fragment; it must appear in ``#flash``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_panel import WAIT_MS, _axe, _inject, _shot, _sign_in, _wait
from tests.integration.conftest import Appliance, admin_password, login

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_an_htmx_action_refused_shows_its_error(
    appliance: Appliance, page: Any, artefacts: Path
) -> None:
    account = f"he{uuid.uuid4().hex[:6]}"
    phone, jid = "+905557770042", "905557770042@s.whatsapp.net"
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post("/api/accounts", json={"id": account, "name": "Silinecek"})
        assert made.status_code == 201, made.text
        _inject(api, account, phone, "Merhaba, siparişim?", "Ece Demir")

        def stored() -> bool:
            got = api.get(f"/api/accounts/{account}/chats/{jid}/messages")
            return got.status_code == 200 and len(got.json()["items"]) == 1

        _wait(stored, "the message to be stored", timeout_s=120)
    _sign_in(page, appliance, "admin", admin_password(appliance))
    page.goto(f"{appliance.base_url}/panel/inbox?account={account}&chat={jid}")
    page.locator("#messages .msg.in", has_text="siparişim").wait_for(timeout=WAIT_MS)
    assert page.locator("#flash .flash-error").count() == 0
    with login(appliance, "admin", admin_password(appliance)) as api:  # someone else
        gone = api.delete(f"/api/accounts/{account}", params={"confirm": account})
        assert gone.status_code == 204, gone.text
    page.click("#resolve-button")
    error = page.locator("#flash .flash-error")
    error.wait_for(timeout=WAIT_MS)
    assert error.get_attribute("role") == "alert"
    assert "not found" in error.inner_text().lower() or "bulunamad" in error.inner_text()
    # The browser logs the 404 itself; nothing else went wrong (no CSP refusal).
    page.problems[:] = [p for p in page.problems if "status of 404" not in p]
    assert page.problems == [], page.problems
    _axe(page, "an htmx action refused")
    _shot(page, artefacts, "htmx-error-en-light")
