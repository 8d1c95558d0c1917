# ruff: noqa: RUF001  (Turkish text: the dotless i is meant)
"""The web panel in Debian's chromium against the session's real installation.

Two lean flows share the one installation:

- an admin signs in, starts the simulator (first run), watches its sample chats
  arrive live, sees an inbound message injected through the API appear with an
  unread badge without a reload, replies with a quick reply (its receipt tick updates
  live), adds a tag and a note, resolves the chat; light and dark;
- an agent at phone width, in Turkish, gets the 403 page for an admin URL and works
  the inbox with the keyboard only (j, r, Enter, e, ?, Escape, /).

Each screen is scanned with axe-core (no serious or critical violations) and saved as
a screenshot under the artefacts directory ($BROWSER_ARTEFACTS in CI).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Appliance, admin_password, login

pytestmark = [pytest.mark.integration, pytest.mark.browser]

WAIT_MS = 60_000  # a loaded 2-core machine is slow; every wait is on a condition


def _wait(predicate: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _axe(page: Any, name: str) -> None:
    """No serious or critical accessibility violations on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], f"{name}: {bad}"


def _clean(page: Any) -> None:
    """Nothing left loopback; no console errors (CSP violations would be there)."""
    assert page.off_loopback == [], page.off_loopback
    problems = [p for p in page.problems if "401" not in p]  # the sign-in redirect probe
    assert problems == [], problems


def _shot(page: Any, artefacts: Path, name: str) -> None:
    page.screenshot(path=str(artefacts / f"panel-{name}.png"), full_page=False)


def _sign_in(page: Any, app: Appliance, username: str, password: str) -> None:
    page.goto(f"{app.base_url}/panel/")
    page.wait_for_url("**/panel/login**")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(lambda url: "/panel/login" not in url)


def _inject(c: httpx.Client, account: str, sender: str, text: str, name: str) -> None:
    body = {"from": sender, "type": "text", "text": {"body": text}, "name": name}
    response = c.post(f"/api/accounts/{account}/sandbox/inbound", json=body)
    assert response.status_code == 202, response.text


def test_admin_first_run_live_inbox_and_actions(
    appliance: Appliance, page: Any, artefacts: Path
) -> None:
    _sign_in(page, appliance, "admin", admin_password(appliance))
    # First run: the two ways to begin (an empty installation lands here by itself).
    page.goto(f"{appliance.base_url}/panel/setup")
    assert page.locator("#link-phone").is_visible()
    _axe(page, "setup")
    _shot(page, artefacts, "setup-en-light")
    page.click("#try-simulator")
    page.wait_for_url("**/panel/inbox?account=*")
    account = page.url.split("account=")[1].split("&")[0]
    # The sample conversations arrive live once the worker has connected the account.
    page.evaluate("window.__noReload = 1")
    page.locator("#chat-list .chat").nth(2).wait_for(timeout=WAIT_MS)
    assert page.locator("#chat-list .badge").count() >= 3
    _axe(page, "inbox")
    _shot(page, artefacts, "inbox-en-light")

    # An inbound message injected through the API: on top, with an unread badge of 1.
    with login(appliance, "admin", admin_password(appliance)) as api:
        _inject(api, account, "+905559990001", "Kargom nerede? / Where is my parcel?", "Zeynep")
    newest = page.locator('#chat-list .chat[data-chat="905559990001@s.whatsapp.net"]')
    newest.wait_for(timeout=WAIT_MS)
    assert newest.locator(".badge").get_attribute("data-unread") == "1"
    assert "Where is my parcel?" in newest.inner_text()
    assert page.evaluate("window.__noReload") == 1  # no reload happened

    # Open it: the conversation shows, the badge is gone.
    newest.locator("a").click()
    page.locator("#conv-title").get_by_text("Zeynep").wait_for()
    page.locator("#messages .msg.in").get_by_text("Where is my parcel?").wait_for()
    _wait(lambda: newest.locator(".badge").count() == 0, "the badge to go")

    # Quick reply by shortcut: /tha lists /thanks, Enter picks it, Enter sends it.
    box = page.locator("#composer-text")
    box.click()
    box.type("/tha")
    page.locator("#qr-suggestions li", has_text="/thanks").wait_for()
    box.press("Enter")
    assert page.locator("#quick-reply-id").input_value() != ""
    box.press("Enter")
    sent = page.locator("#messages .msg.out", has_text="Zeynep")
    sent.wait_for(timeout=WAIT_MS)
    # Its receipt moves on live (the sandbox sends and delivers it).
    _wait(
        lambda: (
            sent.locator("[data-receipt]").first.get_attribute("data-receipt")
            in ("sent", "delivered", "read")
        ),
        "the receipt tick to update",
    )

    # Tag (admins may create one by name), note, resolve.
    page.fill("#tag-add", "vip")
    page.click("#tag-form button[type=submit]")
    page.locator("#chat-tags .tag", has_text="vip").wait_for()
    page.fill("#note-body", "Parcel left the depot today")
    page.click("#note-form button[type=submit]")
    page.locator("#notes li", has_text="Parcel left the depot today").wait_for()
    page.click("#resolve-button")
    page.locator("#reopen-button").wait_for()
    assert "Resolved" in page.locator("#conv-status").inner_text()
    _axe(page, "conversation")
    _shot(page, artefacts, "conversation-en-light")

    # Dark: the toggle switches at once and is kept as a preference.
    page.click("#theme-toggle")
    _wait(lambda: page.evaluate("document.documentElement.dataset.theme") == "dark", "dark")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(246, 247, 249)", background
    _shot(page, artefacts, "conversation-en-dark")
    _axe(page, "conversation (dark)")
    page.goto(f"{appliance.base_url}/panel/preferences")
    assert page.locator('input[name="theme"][value="dark"]').is_checked()
    _axe(page, "preferences")
    _clean(page)


def test_agent_turkish_phone_width_keyboard_only(
    appliance: Appliance, page: Any, artefacts: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    account, agent, password = f"tr{suffix}", f"ajan{suffix}", "ajan-parola-123"
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post("/api/accounts", json={"id": account, "name": "Dükkan"})
        assert made.status_code == 201, made.text
        user = {"username": agent, "password": password, "role": "agent", "accounts": [account]}
        assert api.post("/api/users", json=user).status_code == 201
        _inject(api, account, "+905551230001", "İyi günler, fiyat nedir?", "Ali")
        _inject(api, account, "+905551230002", "Teşekkürler!", "Ayşe")
    page.context.set_extra_http_headers({"Accept-Language": "tr-TR,tr;q=0.9"})
    page.set_viewport_size({"width": 375, "height": 812})
    page.emulate_media(color_scheme="dark")
    _sign_in(page, appliance, agent, password)

    # An admin screen by its URL: the 403 page, in Turkish.
    refused = page.goto(f"{appliance.base_url}/panel/users")
    assert refused is not None and refused.status == 403
    page.get_by_role("heading", name="İzin yok").wait_for()
    assert page.locator('nav a[href="/panel/users"]').count() == 0  # not in the menu
    _shot(page, artefacts, "403-tr-dark-phone")
    page.problems.clear()  # the browser logs the 403 itself

    page.goto(f"{appliance.base_url}/panel/inbox?account={account}")
    page.locator("#chat-list .chat").nth(1).wait_for(timeout=WAIT_MS)
    assert page.locator("html").get_attribute("lang") == "tr"
    assert page.get_by_role("heading", name="Gelen kutusu").count() == 1
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page is wider than the phone: {width}px"
    _axe(page, "inbox (tr, phone)")
    _shot(page, artefacts, "inbox-tr-dark-phone")

    # Keyboard only: j opens the first chat, r goes to the message box, Enter sends.
    page.keyboard.press("j")
    page.locator("#composer-text").wait_for(state="visible")
    page.keyboard.press("r")
    _wait(lambda: page.evaluate("document.activeElement.id") == "composer-text", "r focuses")
    page.keyboard.type("Merhaba, hemen bakıyorum.")
    page.keyboard.press("Enter")
    page.locator("#messages .msg.out", has_text="hemen bakıyorum").wait_for(timeout=WAIT_MS)
    # Escape leaves the message box; e resolves the open chat; ? opens the help,
    # Escape closes it; / goes to search.
    page.keyboard.press("Escape")
    _wait(lambda: page.evaluate("document.activeElement.id") != "composer-text", "Esc leaves")
    page.keyboard.press("e")
    page.locator("#reopen-button").wait_for()
    assert "Çözüldü" in page.locator("#conv-status").inner_text()
    page.keyboard.press("?")
    help_dialog = page.locator("#shortcuts")
    help_dialog.wait_for(state="visible")
    assert "Klavye kısayolları" in help_dialog.inner_text()
    page.keyboard.press("Escape")
    help_dialog.wait_for(state="hidden")
    _axe(page, "conversation (tr, phone)")
    _shot(page, artefacts, "conversation-tr-dark-phone")
    page.keyboard.press("/")
    _wait(lambda: page.evaluate("document.activeElement.id") == "search", "/ focuses search")
    page.keyboard.type("fiyat")
    page.locator("#chat-list .chat", has_text="fiyat nedir").wait_for(timeout=WAIT_MS)
    page.goto(f"{appliance.base_url}/panel/preferences")
    _axe(page, "preferences (tr)")
    _shot(page, artefacts, "preferences-tr-dark-phone")
    _clean(page)
