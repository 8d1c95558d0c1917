"""The panel's automation screens and its grouped navigation in Debian's chromium
against the session's real installation: one flow, scanned with axe-core (no serious
or critical violations) and saved as screenshots, light and dark, 1280 and 375 px.

- Navigation: one line at 1280 px; the Automations menu opens with the keyboard and
  closes with Escape (focus back on it); at 375 px nothing scrolls sideways and the
  Admin menu stays inside the screen.
- Auto-replies: a rule made in the panel, the tester says it would fire and what it
  would send, then a simulated inbound message (the sandbox engine) gets that reply,
  seen live in the conversation. A second rule with a condition (private chats) and a
  tags action, made in the panel (a condition row added by a plain post, the model's
  error next to the action row): an inbound message gets the tag on its chat; its
  edit page at 375 px.
- Durations: a rule made through the API (cooldown 5400 s, idle time 90 s, snooze
  2 days) shows them as 90 minutes, 90 seconds and 2 days; the cooldown changed to
  2 hours in the panel is 7200 s in the API and the rest unchanged; 375 px, Turkish.
- Scheduled messages: a recurring one shows its next three occurrences; its detail
  page (five), its edit form (a new text, once at a new time: the detail page shows
  the new next occurrence), both at 375 px (the form in Turkish).
- Media and quick replies (``test_automations_with_media_and_quick_replies``): a rule
  replying with an image made in the panel fires on an inbound message (the message
  sent is the image with its caption); a quick reply's variable filled in the rule's
  form (the API's 400 next to it, the tester's rendered text, the reply sent); a
  schedule with an image due within the minute is sent as an image, and a scheduled
  quick reply with its variable as its rendered text.
- Scripts: a new script, its code saved from the editor (line numbers), a dry run
  with its log.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_panel import WAIT_MS, _axe, _clean, _inject, _shot, _sign_in, _wait
from tests.browser.test_panel_admin import _both_themes
from tests.integration.conftest import Appliance, admin_password, login

pytestmark = [pytest.mark.integration, pytest.mark.browser]

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}


def _menu_inside(page: Any, width: int) -> None:
    box = page.locator("details[data-nav-menu][open] ul.nav-sub").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, box


def test_automations_screens(appliance: Appliance, page: Any, artefacts: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    account = f"auto{suffix}"
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post(
            "/api/accounts",
            json={"id": account, "name": f"Auto {suffix}", "engine_settings": FAST_SANDBOX},
        )
        assert made.status_code == 201, made.text
        _wait(
            lambda: api.get(f"/api/accounts/{account}/status").json()["state"] == "connected",
            "the sandbox account to connect",
        )
    _sign_in(page, appliance, "admin", admin_password(appliance))
    base = appliance.base_url

    # Navigation at 1280 px: every item on one line; the menus by keyboard.
    page.goto(f"{base}/panel/auto-replies?account={account}")
    tops = page.eval_on_selector_all(
        "nav.nav > ul > li", "items => items.map(i => Math.round(i.getBoundingClientRect().top))"
    )
    assert len(tops) >= 4 and len(set(tops)) == 1, tops
    summary = page.locator("details[data-nav-menu] > summary", has_text="Automations")
    summary.focus()
    page.keyboard.press("Enter")
    page.locator('details[data-nav-menu][open] a[href="/panel/schedules"]').wait_for()
    _menu_inside(page, 1280)
    _shot(page, artefacts, "nav-menu-en-light")
    page.keyboard.press("Tab")  # into the menu
    assert page.evaluate("document.activeElement.getAttribute('href')") == "/panel/auto-replies"
    page.keyboard.press("Escape")
    assert page.locator("details[data-nav-menu][open]").count() == 0
    assert page.evaluate("document.activeElement.tagName") == "SUMMARY"

    # Auto-replies: a rule, the tester, and the rule firing on a simulated inbound.
    page.fill("#f-ar-name", "Prices")
    page.select_option("#f-ar-match", "contains")
    page.fill("#f-ar-pattern", "fiyat")
    page.fill("#f-ar-reply", "Fiyat listemiz: example.org/fiyat")
    page.click("#create-rule")
    page.locator("#auto-replies li.rule", has_text="Prices").wait_for()
    page.fill("#f-test-text", "FİYAT nedir?")
    page.click("#run-test")
    page.locator("#test-result .fired-name", has_text="Prices").wait_for()
    assert "Fiyat listemiz" in page.locator("#test-result q.would-send").inner_text()
    _both_themes(page, artefacts, "auto-replies")
    with login(appliance, "admin", admin_password(appliance)) as api:
        _inject(api, account, "+905551237001", "Fiyat nedir acaba?", "Deniz")
    page.goto(f"{base}/panel/inbox/{account}/905551237001@s.whatsapp.net")
    page.get_by_text("Fiyat listemiz: example.org/fiyat").first.wait_for(timeout=WAIT_MS)
    page.goto(f"{base}/panel/auto-replies?account={account}")
    assert "fired 1 time" in page.locator("#auto-replies li.rule", has_text="Prices").inner_text()

    # A rule with a condition and a non-text action, made in the panel: private chats
    # asking about shipping get the "kargo" tag; the inbound shows it on the chat.
    with login(appliance, "admin", admin_password(appliance)) as api:
        tag = api.post(f"/api/accounts/{account}/tags", json={"name": "kargo"})
        assert tag.status_code == 201, tag.text
    page.goto(f"{base}/panel/auto-replies?account={account}")
    page.fill("#f-ar-name", "Shipping")
    page.fill("#f-ar-pattern", "kargo")
    page.click("#add-condition")  # a plain post: the form again, one condition row more
    page.locator("#f-ar-c0-type").wait_for()
    # The new page's stylesheets hide the other types' fields (CSS :has, no script): the
    # row can be in the DOM before screens.css has loaded (CI saw the field still shown).
    page.wait_for_load_state("load")
    assert page.input_value("#f-ar-name") == "Shipping"
    page.select_option("#f-ar-c0-type", "chat_type")
    page.select_option("#f-ar-c0-chat", "private")
    page.select_option("#f-ar-a0-type", "tags")
    assert page.locator("#f-ar-reply").is_hidden()  # only the chosen type's fields
    page.click("#create-rule")  # no tag chosen: the model's error next to the action
    page.locator("#f-ar-a0-error").wait_for()
    assert page.locator("#f-ar-a0-type").get_attribute("aria-invalid") == "true"
    page.problems.clear()  # the browser logs the 400 itself
    page.select_option("#f-ar-a0-add", label="kargo")
    page.locator("#ar-actions").scroll_into_view_if_needed()
    _both_themes(page, artefacts, "auto-reply-rows")
    page.click("#create-rule")
    page.locator("#auto-replies li.rule", has_text="Shipping").wait_for()
    with login(appliance, "admin", admin_password(appliance)) as api:
        _inject(api, account, "+905551237002", "Kargom nerede? kargo takip", "Ece")
    chat_url = f"{base}/panel/inbox/{account}/905551237002@s.whatsapp.net"

    def _tagged() -> bool:
        page.goto(chat_url)
        return page.locator("#chat-tags .tag", has_text="kargo").count() > 0

    _wait(_tagged, "the rule's tag on the chat")
    _shot(page, artefacts, "auto-reply-tagged-chat-en-light")

    # Scheduled messages: a recurring one with its next occurrences.
    page.goto(f"{base}/panel/schedules?account={account}")
    page.fill("#f-sch-name", "Morning")
    page.fill("#f-sch-to", "+905551237001")
    page.fill("#f-sch-text", "Good morning!")
    page.check('input[name="kind"][value="cron"]')
    page.fill("#f-sch-cron", "0 9 * * *")
    page.fill("#f-sch-zone", "Europe/Istanbul")
    page.click("#create-schedule")
    page.locator("#schedules .next-run time").nth(2).wait_for()
    _both_themes(page, artefacts, "schedules")

    # Its detail page, then its edit form: a new text and a one-time time; the detail
    # page shows the new next occurrence. At 375 px nothing is wider than the phone.
    row = page.locator("#schedules li.schedule", has_text="Morning")
    row.get_by_role("link", name="Morning", exact=True).click()
    page.locator("#schedule-facts").wait_for()
    assert page.locator("#schedule-next time").count() == 5
    assert "Good morning!" in page.locator("#schedule-sends").inner_text()
    _both_themes(page, artefacts, "schedule-detail")
    page.click("#edit-schedule")
    page.locator("#schedule-edit").wait_for()
    assert page.input_value("#f-sch-text") == "Good morning!"
    assert page.input_value("#f-sch-cron") == "0 9 * * *"
    page.fill("#f-sch-text", "Good morning, team!")
    page.check('input[name="kind"][value="once"]')
    day = dt.date.today() + dt.timedelta(days=2)
    page.fill("#f-sch-at", f"{day}T10:45")
    _both_themes(page, artefacts, "schedule-edit")
    page.click("#save-schedule")
    page.locator("#schedule-facts").wait_for()
    assert "Good morning, team!" in page.locator("#schedule-sends").inner_text()
    upcoming = page.locator("#schedule-next time")
    assert upcoming.count() == 1 and "10:45" in upcoming.inner_text(), upcoming.all_inner_texts()
    assert "Once" in page.locator("#schedule-when").inner_text()
    _shot(page, artefacts, "schedule-detail-edited-en-light")
    detail_url = page.url
    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    _axe(page, "schedule detail (phone)")
    _shot(page, artefacts, "schedule-detail-en-light-phone")
    page.context.set_extra_http_headers({"Accept-Language": "tr-TR,tr;q=0.9"})
    page.goto(f"{detail_url}/edit")
    page.get_by_role("button", name="Kaydet").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("#f-sch-missed").scroll_into_view_if_needed()
    _axe(page, "schedule edit (tr, phone)")
    _shot(page, artefacts, "schedule-edit-tr-light-phone")
    page.context.set_extra_http_headers({})
    page.set_viewport_size({"width": 1280, "height": 900})

    # Scripts: create, write code in the editor, save, dry run.
    page.goto(f"{base}/panel/scripts?account={account}")
    page.fill("#f-scr-name", "Hello log")
    page.select_option("#f-scr-trigger", "manual")
    page.click("#create-script")
    page.wait_for_url("**/scripts/scr*")
    page.fill("#f-scr-code", "log('merhaba');\nlog('dünya');\n")
    assert page.locator(".code-editor .gutter").inner_text().split() == ["1", "2", "3"]
    page.click("#save-script")
    page.wait_for_url("**saved=1")
    assert page.input_value("#f-scr-code").startswith("log('merhaba');")
    page.fill("#f-run-body", "selam")
    page.click("#dry-run")
    page.locator("#run-result pre.logs", has_text="merhaba").wait_for(timeout=WAIT_MS)
    _both_themes(page, artefacts, "script")

    # 375 px: nothing wider than the phone; the Admin menu opens inside the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(f"{base}/panel/auto-replies?account={account}")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    shipping = page.locator("#auto-replies li.rule", has_text="Shipping")
    shipping.get_by_role("link", name="Edit").click()
    page.locator("#f-ar-c0-type").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("#ar-actions").scroll_into_view_if_needed()
    _both_themes(page, artefacts, "auto-reply-edit-phone")
    page.context.set_extra_http_headers({"Accept-Language": "tr-TR,tr;q=0.9"})
    page.reload()
    page.get_by_role("button", name="Koşul ekle").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("#ar-actions").scroll_into_view_if_needed()
    _axe(page, "auto-reply edit (tr, phone)")
    _shot(page, artefacts, "auto-reply-edit-tr-light-phone")
    page.context.set_extra_http_headers({})
    page.goto(f"{base}/panel/auto-replies?account={account}")
    # The header is one row: the brand and the Menu button; the navigation opens below.
    brand = page.locator("header.top .brand").bounding_box()
    toggle = page.locator("#nav-toggle").bounding_box()
    assert brand is not None and toggle is not None
    assert abs(brand["y"] + brand["height"] / 2 - (toggle["y"] + toggle["height"] / 2)) < 8
    assert not page.locator("nav.nav").is_visible()
    _shot(page, artefacts, "header-en-light-phone")
    page.click("#nav-toggle")
    assert page.locator("#nav-toggle").get_attribute("aria-expanded") == "true"
    page.locator("nav.nav").wait_for(state="visible")
    page.locator("details[data-nav-menu] > summary", has_text="Admin").click()
    page.locator('details[data-nav-menu][open] a[href="/panel/users"]').wait_for()
    _menu_inside(page, 375)
    _axe(page, "auto-replies (phone, menu open)")
    _shot(page, artefacts, "nav-menu-en-light-phone")
    page.keyboard.press("Escape")  # closes the Admin menu
    page.keyboard.press("Escape")  # then the header's menu, the focus back on its button
    page.locator("nav.nav").wait_for(state="hidden")
    assert page.evaluate("document.activeElement.id") == "nav-toggle"
    _shot(page, artefacts, "auto-replies-en-light-phone")
    page.emulate_media(color_scheme="dark")
    page.click("#nav-toggle")
    page.locator("nav.nav").wait_for(state="visible")
    _axe(page, "header menu (phone, dark)")
    _shot(page, artefacts, "header-menu-en-dark-phone")
    page.emulate_media(color_scheme="light")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{base}/panel/inbox")
    assert not page.locator("#nav-toggle").is_visible()  # desktop: the menu inline
    assert page.locator("nav.nav").is_visible()
    _shot(page, artefacts, "nav-en-light")
    _clean(page)


def test_auto_reply_durations_in_units(appliance: Appliance, page: Any, artefacts: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    account = f"dur{suffix}"
    rule = {
        "name": "Away",
        "match_type": "contains",
        "pattern": "merhaba",
        "cooldown_s": 5400,
        "conditions": [{"type": "first_message", "idle_s": 90}],
        "actions": [
            {"type": "reply", "text": "We are away"},
            {"type": "set_status", "status": "snoozed", "snooze_s": 172800},
        ],
    }
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post("/api/accounts", json={"id": account, "name": f"Durations {suffix}"})
        assert made.status_code == 201, made.text
        created = api.post(f"/api/accounts/{account}/auto-replies", json=rule)
        assert created.status_code == 201, created.text
        rule_id = created.json()["id"]
    _sign_in(page, appliance, "admin", admin_password(appliance))
    edit_url = f"{appliance.base_url}/panel/accounts/{account}/auto-replies/{rule_id}"
    page.goto(edit_url)
    # Each in the largest unit that divides it: 90 min, 90 s (no whole minute), 2 days.
    assert page.input_value("#f-ar-cooldown") == "90"
    assert page.input_value("#f-ar-cooldown-unit") == "min"
    assert page.input_value("#f-ar-c0-idle") == "90"
    assert page.input_value("#f-ar-c0-idle-unit") == "s"
    assert page.input_value("#f-ar-a1-snooze") == "2"
    assert page.input_value("#f-ar-a1-snooze-unit") == "d"
    page.fill("#f-ar-cooldown", "2")
    page.select_option("#f-ar-cooldown-unit", "h")
    page.locator("#f-ar-cooldown").scroll_into_view_if_needed()
    _both_themes(page, artefacts, "auto-reply-durations")
    page.click("#save-rule")
    page.wait_for_url(f"**/panel/auto-replies?account={account}")
    with login(appliance, "admin", admin_password(appliance)) as api:
        saved = api.get(f"/api/accounts/{account}/auto-replies/{rule_id}").json()
    assert saved["cooldown_s"] == 7200
    assert saved["conditions"] == [{"type": "first_message", "idle_s": 90}]
    assert saved["actions"][1]["snooze_s"] == 172800
    # 375 px, in Turkish: the units translated, nothing wider than the phone.
    page.set_viewport_size({"width": 375, "height": 800})
    page.context.set_extra_http_headers({"Accept-Language": "tr-TR,tr;q=0.9"})
    page.goto(edit_url)
    assert page.input_value("#f-ar-cooldown") == "2"
    assert page.locator("#f-ar-cooldown-unit option:checked").inner_text() == "saat"
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("#ar-actions").scroll_into_view_if_needed()
    _axe(page, "auto-reply durations (tr, phone)")
    _shot(page, artefacts, "auto-reply-durations-tr-light-phone")
    page.emulate_media(color_scheme="dark")
    page.locator("#f-ar-cooldown").scroll_into_view_if_needed()
    _shot(page, artefacts, "auto-reply-durations-tr-dark-phone")
    page.emulate_media(color_scheme="light")
    page.context.set_extra_http_headers({})
    page.set_viewport_size({"width": 1280, "height": 900})
    _clean(page)


def _sent(appliance: Appliance, account: str, jid: str, kind: str) -> list[dict[str, Any]]:
    with login(appliance, "admin", admin_password(appliance)) as api:
        found = api.get(f"/api/accounts/{account}/chats/{jid}/messages")
    if found.status_code != 200:  # no such chat yet
        return []
    return [m for m in found.json()["items"] if m["direction"] == "out" and m["type"] == kind]


def test_automations_with_media_and_quick_replies(
    appliance: Appliance, page: Any, artefacts: Path
) -> None:
    """An auto-reply with an image reply made in the panel fires on an inbound message
    and sends the image with its caption; a quick reply with a variable filled in the
    rule's form (the API's 400 next to the field), shown rendered by the tester and sent;
    a schedule with an image, due within the minute, sent as an image."""
    from tests.unit.test_panel_data import png

    suffix = uuid.uuid4().hex[:6]
    account = f"media{suffix}"
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post(
            "/api/accounts",
            json={"id": account, "name": f"Media {suffix}", "engine_settings": FAST_SANDBOX},
        )
        assert made.status_code == 201, made.text
        _wait(
            lambda: api.get(f"/api/accounts/{account}/status").json()["state"] == "connected",
            "the sandbox account to connect",
        )
        qr = api.post(
            f"/api/accounts/{account}/quick-replies",
            json={"name": "Code", "shortcut": "/code", "body": "Your code is {{code}}"},
        )
        assert qr.status_code == 201, qr.text
    _sign_in(page, appliance, "admin", admin_password(appliance))
    base = appliance.base_url

    # 1. A reply with an image and its caption.
    page.goto(f"{base}/panel/auto-replies?account={account}")
    page.fill("#f-ar-name", "Menu")
    page.fill("#f-ar-pattern", "menu")
    page.fill("#f-ar-reply", "Today's menu")
    page.set_input_files(
        "#f-ar-a0-media", files=[{"name": "menu.png", "mimeType": "image/png", "buffer": png(48)}]
    )
    page.click("#create-rule")
    rule = page.locator("#auto-replies li.rule", has_text="Menu")
    rule.locator("img.qr-thumb").wait_for()
    assert "Today's menu" in rule.inner_text()
    rule.scroll_into_view_if_needed()
    _shot(page, artefacts, "auto-replies-media-en-light")
    rule.get_by_role("link", name="Edit").click()
    page.locator("#f-ar-a0-current img.qr-thumb").wait_for()
    _wait(lambda: page.evaluate("document.querySelector('#f-ar-a0-current img').naturalWidth")
          == 48, "the thumbnail drawn")  # fmt: skip
    page.evaluate("document.getElementById('f-ar-reply').scrollIntoView({block: 'start'})")
    _both_themes(page, artefacts, "auto-reply-media")
    page.set_viewport_size({"width": 375, "height": 800})
    page.context.set_extra_http_headers({"Accept-Language": "tr-TR,tr;q=0.9"})
    page.reload()
    page.locator("#f-ar-a0-current").scroll_into_view_if_needed()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    _axe(page, "auto-reply media (tr, phone)")
    _shot(page, artefacts, "auto-reply-media-tr-light-phone")
    page.emulate_media(color_scheme="dark")
    _shot(page, artefacts, "auto-reply-media-tr-dark-phone")
    page.emulate_media(color_scheme="light")
    page.context.set_extra_http_headers({})
    page.set_viewport_size({"width": 1280, "height": 900})
    page.click("#save-rule")  # saved again as it is: the image kept
    page.wait_for_url(f"**/panel/auto-replies?account={account}")
    with login(appliance, "admin", admin_password(appliance)) as api:
        _inject(api, account, "+905551238001", "Menu please", "Deniz")
    jid = "905551238001@s.whatsapp.net"
    (image,) = _wait(lambda: _sent(appliance, account, jid, "image"), "the image reply")
    assert image["content"]["image"]["caption"] == "Today's menu"
    assert image["content"]["image"]["id"].startswith("med_")
    page.goto(f"{base}/panel/inbox/{account}/{jid}")
    page.locator("#messages .msg.out img.media").wait_for(timeout=WAIT_MS)

    # 2. A quick reply with a variable: asked in the rule's form, rendered by the tester.
    page.goto(f"{base}/panel/auto-replies?account={account}")
    page.fill("#f-ar-name", "Codes")
    page.fill("#f-ar-pattern", "kod")
    page.select_option("#f-ar-a0-type", "quick_reply")
    page.select_option("#f-ar-a0-qr", label="/code Code (code)")
    page.click("#f-ar-a0-show-vars")  # a plain post: the form again with its variable
    page.locator("#f-ar-a0-var-0").wait_for()
    page.click("#create-rule")  # left empty: the API's 400 next to the field
    page.locator("#f-ar-a0-var-0-error", has_text="missing variable").wait_for()
    page.problems.clear()  # the browser logs the 400 itself
    page.locator("#f-ar-a0-vars").scroll_into_view_if_needed()
    _both_themes(page, artefacts, "auto-reply-quick-reply-variables")
    page.fill("#f-ar-a0-var-0", "X42")
    page.click("#create-rule")
    page.locator("#auto-replies li.rule", has_text="Codes").wait_for()
    page.fill("#f-test-text", "kod?")
    page.click("#run-test")
    page.locator("#test-result .fired-name", has_text="Codes").wait_for()
    assert "Your code is X42" in page.locator("#test-result q.would-send").inner_text()
    with login(appliance, "admin", admin_password(appliance)) as api:
        _inject(api, account, "+905551238002", "kod lazim", "Ece")
    jid2 = "905551238002@s.whatsapp.net"
    (text,) = _wait(lambda: _sent(appliance, account, jid2, "text"), "the quick reply")
    assert text["content"]["text"]["body"] == "Your code is X42"

    # 3. A schedule with an image, due within the minute, sent as an image.
    page.goto(f"{base}/panel/schedules?account={account}")
    page.fill("#f-sch-name", "Offers")
    page.fill("#f-sch-to", "+905551238003")
    page.fill("#f-sch-text", "This week's offers")
    page.set_input_files(
        "#f-sch-media", files=[{"name": "offers.png", "mimeType": "image/png", "buffer": png(32)}]
    )
    page.check('input[name="kind"][value="cron"]')
    page.fill("#f-sch-cron", "* * * * *")
    page.fill("#f-sch-zone", "UTC")
    page.click("#create-schedule")
    row = page.locator("#schedules li.schedule", has_text="Offers")
    row.locator("img.qr-thumb").wait_for()
    row.locator(".next-run time").nth(2).wait_for()
    _both_themes(page, artefacts, "schedules-media")
    # A scheduled quick reply with its variable (a plain post shows its field).
    page.fill("#f-sch-name", "Code reminder")
    page.fill("#f-sch-to", "+905551238004")
    page.select_option("#f-sch-qr", label="/code Code (code)")
    page.click("#f-sch-show-vars")
    page.locator("#f-sch-var-0").fill("X43")
    page.check('input[name="kind"][value="cron"]')
    page.fill("#f-sch-cron", "* * * * *")
    page.fill("#f-sch-zone", "UTC")
    page.click("#create-schedule")
    page.locator("#schedules li.schedule", has_text="code = X43").wait_for()
    jid3 = "905551238003@s.whatsapp.net"
    sent = _wait(lambda: _sent(appliance, account, jid3, "image"), "the scheduled image", 150)
    assert sent[0]["content"]["image"]["caption"] == "This week's offers"
    jid4 = "905551238004@s.whatsapp.net"
    coded = _wait(lambda: _sent(appliance, account, jid4, "text"), "the scheduled reply", 150)
    assert coded[0]["content"]["text"]["body"] == "Your code is X43"
    for name in ("Offers", "Code reminder"):  # no more sends every minute
        item = page.locator("#schedules li.schedule", has_text=name)
        item.get_by_role("button", name="Pause").click()
        page.locator("#schedules li.schedule", has_text=name).get_by_role(
            "button", name="Resume"
        ).wait_for()
    _clean(page)
