# ruff: noqa: RUF001  (Turkish text: the dotless i is meant)
"""The inbox conversation's extras in Debian's chromium against the session's real
installation: older messages load when scrolling up, the emoji picker, attachments by
drag and drop and by paste (uploaded through the media API, sent by id), a quick reply
whose custom variable is asked before sending, our typing state sent while typing,
reactions and the edited and deleted markers arriving live; at desktop and 375 px
width, light and dark, English and Turkish, with axe-core on each and screenshots.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_panel import WAIT_MS, _axe, _clean, _inject, _shot, _sign_in, _wait
from tests.integration.conftest import Appliance, admin_password, login

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# A 1x1 PNG, for the dropped picture.
PNG = base64.b64encode(
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
    b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7"
    b"\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
).decode()

DROP = """([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type }));
  const zone = document.querySelector('.conversation');
  const opts = { dataTransfer: dt, bubbles: true, cancelable: true };
  zone.dispatchEvent(new DragEvent('dragover', opts));
  zone.dispatchEvent(new DragEvent('drop', opts));
}"""
PASTE = """([text, name]) => {
  const dt = new DataTransfer();
  dt.items.add(new File([text], name, { type: 'text/plain' }));
  const box = document.getElementById('composer-text');
  const opts = { clipboardData: dt, bubbles: true, cancelable: true };
  box.dispatchEvent(new ClipboardEvent('paste', opts));
}"""

WIDE = """() => Array.from(document.querySelectorAll('body *'))
  .filter(e => e.getBoundingClientRect().right > 376)
  .slice(0, 8).map(e => e.tagName + '#' + e.id + '.' + e.className)"""


def _sent(page: Any, text: str) -> Any:
    """Our message with this text, once its receipt says WhatsApp took it."""
    message = page.locator("#messages .msg.out", has_text=text).last
    message.wait_for(timeout=WAIT_MS)
    _wait(
        lambda: (
            message.locator("[data-receipt]").first.get_attribute("data-receipt")
            in ("sent", "delivered", "read")
        ),
        f"{text!r} to be sent",
    )
    return message


def test_conversation_paging_composer_reactions_markers(
    appliance: Appliance, page: Any, artefacts: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    account = f"cv{suffix}"
    phone, jid = "+905557770001", "905557770001@s.whatsapp.net"
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post("/api/accounts", json={"id": account, "name": "Kargo"})
        assert made.status_code == 201, made.text
        reply = {"name": "Kargo kodu", "shortcut": "/kod", "body": "Kargo kodunuz: {{code}}"}
        assert api.post(f"/api/accounts/{account}/quick-replies", json=reply).status_code == 201
        for i in range(70):
            _inject(api, account, phone, f"eski mesaj {i:02}", "Deniz Kaya")
        _inject(api, account, phone, "Son mesaj: kargom nerede?", "Deniz Kaya")

        def stored() -> bool:
            got = api.get(f"/api/accounts/{account}/chats/{jid}/messages", params={"limit": 100})
            return got.status_code == 200 and len(got.json()["items"]) == 71

        _wait(stored, "the 71 messages to be stored", timeout_s=180)
    _sign_in(page, appliance, "admin", admin_password(appliance))
    page.goto(f"{appliance.base_url}/panel/inbox?account={account}&chat={jid}")
    page.locator("#messages .msg.in", has_text="Son mesaj").wait_for(timeout=WAIT_MS)
    assert page.locator("#messages .msg.in").count() == 60  # the newest page
    assert page.locator(".conv-head .avatar").inner_text().strip() == "DK"

    # Scrolling up loads the older messages above, keeping the reader's place.
    assert page.locator("#messages li.older").count() == 1
    scrolled = "document.getElementById('messages').scrollTop"
    _wait(lambda: page.evaluate(scrolled) > 0, "the newest message in view")
    page.evaluate(f"{scrolled} = 0")
    page.locator("#messages .msg", has_text="eski mesaj 00").wait_for(timeout=WAIT_MS)
    assert page.locator("#messages .msg.in").count() == 71
    assert page.locator("#messages li.older").count() == 0
    assert page.locator("#messages li.day").count() == 1  # the day is not repeated

    # Typing sends our typing state (the API's presence action).
    box = page.locator("#composer-text")
    with page.expect_response(lambda r: r.url.endswith("/presence")) as typing:
        box.click()
        box.type("Merhaba Deniz ")
    assert typing.value.status == 204
    # The emoji picker inserts at the cursor; Enter sends.
    page.click("#emoji-button")
    page.locator("#emoji-picker").wait_for(state="visible")
    _axe(page, "emoji picker")
    page.click('#emoji-picker [data-emoji="👍"]')
    assert box.input_value() == "Merhaba Deniz 👍"
    assert page.locator("#emoji-picker").is_hidden()
    box.press("Enter")
    first = _sent(page, "Merhaba Deniz 👍")
    first_id = (first.get_attribute("id") or "")[len("msg-") :]

    # A picture dropped on the conversation: uploaded, then sent with a caption.
    page.evaluate(DROP, [PNG, "fis.png", "image/png"])
    _wait(lambda: page.locator("#media-id").input_value() != "", "the dropped upload")
    assert page.locator("#attachment").is_visible() and "fis.png" in page.inner_text("#attachment")
    box.fill("Fişiniz")
    page.click("#send-button")
    picture = _sent(page, "Fişiniz")
    assert picture.locator("img.media").count() == 1
    picture_id = (picture.get_attribute("id") or "")[len("msg-") :]
    # A file pasted into the message box: a document with its name.
    page.evaluate(PASTE, ["Sipariş 1042: 2 adet", "siparis.txt"])
    _wait(lambda: page.locator("#media-kind").input_value() == "document", "the pasted upload")
    page.click("#send-button")
    page.locator("#messages .msg.out a[download]", has_text="siparis.txt").wait_for(timeout=WAIT_MS)

    # A quick reply with a custom variable: asked for before it is sent.
    box.click()
    box.type("/ko")
    page.locator("#qr-suggestions li", has_text="/kod").wait_for()
    box.press("Enter")
    page.locator("#qr-vars").wait_for(state="visible")
    field = page.locator("#qr-var-code")
    _wait(lambda: page.evaluate("document.activeElement.id") == "qr-var-code", "the variable")
    _axe(page, "quick reply variables")
    field.type("TR42")
    field.press("Enter")
    _sent(page, "Kargo kodunuz: TR42")

    # Live: Deniz reacts to our first message, we edit it and delete the picture.
    with login(appliance, "admin", admin_password(appliance)) as api:
        body = {
            "from": phone,
            "type": "reaction",
            "reaction": {"message_id": first_id, "emoji": "❤️"},
        }
        assert api.post(f"/api/accounts/{account}/sandbox/inbound", json=body).status_code == 202
        edit = api.post(
            f"/api/accounts/{account}/messages/{first_id}/edit", json={"text": "Merhaba Deniz!"}
        )
        assert edit.status_code == 202, edit.text
        revoke = api.post(f"/api/accounts/{account}/messages/{picture_id}/revoke")
        assert revoke.status_code == 202, revoke.text
    mine = page.locator(f"#msg-{first_id}")
    mine.locator(".reaction", has_text="❤️").wait_for(timeout=WAIT_MS)
    mine.locator(".edited-marker").wait_for(timeout=WAIT_MS)
    assert "Merhaba Deniz!" in mine.inner_text()
    page.locator(f"#msg-{picture_id} .deleted-marker").wait_for(timeout=WAIT_MS)
    assert page.locator("#messages .msg", has_text="eski mesaj 00").count() == 1  # kept
    page.evaluate("document.getElementById('messages').scrollTop = 1e9")
    _axe(page, "conversation extras")
    _shot(page, artefacts, "conversation-extras-en-light")
    page.emulate_media(color_scheme="dark")
    _shot(page, artefacts, "conversation-extras-en-dark")
    _axe(page, "conversation extras (dark)")

    # Turkish at phone width, light and dark.
    page.context.set_extra_http_headers({"Accept-Language": "tr-TR,tr;q=0.9"})
    page.set_viewport_size({"width": 375, "height": 812})
    page.emulate_media(color_scheme="light")
    page.goto(f"{appliance.base_url}/panel/inbox?account={account}&chat={jid}")
    page.locator(f"#msg-{first_id} .edited-marker", has_text="düzenlendi").wait_for()
    assert page.locator("#messages li.older button").inner_text() == "Daha eski mesajları yükle"
    _shot(page, artefacts, "conversation-extras-tr-light-phone-top")
    width = page.evaluate("document.documentElement.scrollWidth")
    wide = page.evaluate(WIDE)
    assert width <= 375, f"the page is wider than the phone: {width}px: {wide}"
    page.click("#emoji-button")
    _shot(page, artefacts, "conversation-extras-tr-light-phone")
    _axe(page, "conversation extras (tr, phone)")
    page.keyboard.press("Escape")
    page.emulate_media(color_scheme="dark")
    page.locator("#composer-text").click()
    page.locator("#composer-text").type("/ko")
    page.keyboard.press("Enter")
    page.locator("#qr-vars").wait_for(state="visible")
    assert "Hazır yanıtın alanlarını doldurun" in page.inner_text("#qr-vars")
    _shot(page, artefacts, "conversation-extras-tr-dark-phone")
    _axe(page, "conversation extras (tr, phone, dark)")
    _clean(page)


def test_chat_list_keeps_its_place_on_live_updates(
    appliance: Appliance, page: Any, artefacts: Path
) -> None:
    """After "More chats" and scrolling down, a live update refreshes the list without
    taking the user back to the first page or the top."""
    suffix = uuid.uuid4().hex[:6]
    account = f"cl{suffix}"
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post("/api/accounts", json={"id": account, "name": "Liste"})
        assert made.status_code == 201, made.text
        for i in range(56):
            _inject(api, account, f"+9055588{i:05}", f"merhaba {i:02}", f"Kişi {i:02}")

        def listed() -> bool:
            got = api.get(f"/api/accounts/{account}/chats", params={"limit": 100})
            return got.status_code == 200 and len(got.json()["items"]) == 56

        _wait(listed, "the 56 chats to be stored", timeout_s=180)
    _sign_in(page, appliance, "admin", admin_password(appliance))
    page.set_viewport_size({"width": 1280, "height": 700})
    page.goto(f"{appliance.base_url}/panel/inbox?account={account}")
    chats = page.locator("#chat-list li.chat")
    chats.nth(49).wait_for(timeout=WAIT_MS)
    assert chats.count() == 50
    page.click("#chat-list li.more-chats button")
    _wait(lambda: chats.count() == 56, "the second page of chats")
    pane = "document.querySelector('.list-pane')"
    page.evaluate(f"{pane}.scrollTop = {pane}.scrollHeight")
    top = page.evaluate(f"{pane}.scrollTop")
    assert top > 0
    # A new message in the oldest chat (the last one in the list) moves it to the top.
    with login(appliance, "admin", admin_password(appliance)) as api:
        _inject(api, account, "+905558800000", "yeni mesaj", "Kişi 00")
    chats.first.filter(has_text="yeni mesaj").wait_for(timeout=WAIT_MS)
    assert chats.count() == 56  # the loaded page stayed
    assert page.locator("#chat-list li.more-chats").count() == 0
    assert abs(page.evaluate(f"{pane}.scrollTop") - top) <= 2, (
        top,
        page.evaluate(pane + ".scrollTop"),
    )
    _shot(page, artefacts, "inbox-list-kept-en-light")
    _clean(page)
