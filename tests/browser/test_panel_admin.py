"""The panel's Accounts, Webhooks and admin screens in Debian's chromium against a real
installation: one lean flow per screen group, each scanned with axe-core (no serious
or critical violations) and saved as screenshots, light and dark.

- Accounts and admin (the session's installation): create a sandbox account from the
  engine's form, connect it and watch its state turn connected live; a history sync's
  progress appearing and finishing live (batches written by the web engine's own
  import function: the sandbox has no history); create a user with a grant, an API
  key shown once and revoked, the audit log filtered; the accounts list at 375 px;
  the account deleted after its name is typed (a wrong name first).
- Contacts, tags and quick replies (the session's installation): a tag with a palette
  colour and one recoloured to a custom #rrggbb, shown in the chat list and the
  contacts; a quick reply added, a CSV imported and its contact listed.
- Deleting users (the webhooks' installation, where ``admin`` is surely the only
  administrator): another user deleted after the confirmation; deleting ``admin``
  refused with the last-administrator message.
- Webhooks (an installation whose SSRF guard allows 127.0.0.1, OUTBOUND_ALLOW_NETWORKS:
  the session's refuses loopback receivers): an endpoint pointing at a receiver on
  127.0.0.1, its secret shown once, a test event whose delivery appears in the log
  with the receiver's answer; its secret rotated after the confirmation, the new one
  shown once (gone on reload), and the next delivery's signatures checked by the
  receiver with the new secret and, during the grace period, the old one.
- A user's password set by an administrator (the session's installation): the two
  fields differing is refused next to the field; then the user's open session ends,
  the old password no longer signs in and the new one does.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from appliance.messaging import history_store
from appliance.webhooks.signing import sign
from tests.browser.test_panel import WAIT_MS, _axe, _clean, _inject, _shot, _sign_in, _wait
from tests.integration.conftest import Appliance, admin_password, login, running_appliance

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def _both_themes(page: Any, artefacts: Path, name: str) -> None:
    """axe and a screenshot in the light theme, then in the dark one."""
    page.emulate_media(color_scheme="light")
    _axe(page, name)
    _shot(page, artefacts, f"{name}-en-light")
    page.emulate_media(color_scheme="dark")
    _axe(page, f"{name} (dark)")
    _shot(page, artefacts, f"{name}-en-dark")
    page.emulate_media(color_scheme="light")


def _history_batch(app: Appliance, account: str, progress: int, *, last: bool) -> None:
    """One batch of a history chunk written into the installation's database by the
    web engine's own import function (what the worker does for a linked phone's
    history), in a thread of its own (Playwright's sync API owns this one's loop)."""
    chat = "905551230000@s.whatsapp.net"
    batch = history_store.HistoryBatch(
        chunk_key=f"browser-{account}-{progress}",
        sync_type="RECENT",
        chats=[history_store.ChatInfo(jid=chat, name="Old friend")],
        messages=[
            history_store.PhoneMessage(
                id=f"HB{progress}-{i}",
                chat_jid=chat,
                direction="in",
                type="text",
                content={"type": "text", "text": {"body": f"from the phone {i}"}},
                timestamp=1_700_000_000.0 + progress * 10 + i,
                body=f"from the phone {i}",
                sender_jid=chat,
            )
            for i in range(5)
        ],
        contacts=[],
        last=last,
        progress=progress,
    )

    async def write() -> None:
        async with aiosqlite.connect(app.db_path, timeout=30, isolation_level=None) as conn:
            conn.row_factory = sqlite3.Row
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("BEGIN IMMEDIATE")
            await history_store.import_history_batch(
                conn, account, batch, history_store.HistoryLimit(), now=time.time()
            )
            await conn.commit()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(write())
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == [], errors


def test_accounts_and_admin_screens(appliance: Appliance, page: Any, artefacts: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    _sign_in(page, appliance, "admin", admin_password(appliance))

    # Accounts: a sandbox account from its engine's form; connect; the state follows
    # live (account.status events), without a reload.
    page.goto(f"{appliance.base_url}/panel/accounts/new?engine=sandbox")
    assert page.locator('input[name="engine_settings.pairing_delay_ms"]').is_visible()
    _both_themes(page, artefacts, "account-new")
    page.fill("#f-name", f"Desk {suffix}")
    page.click("#create-account")
    page.wait_for_url("**/panel/accounts/acc*")
    account = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__noReload = 1")
    page.click("#connect")
    page.wait_for_url(f"**/panel/accounts/{account}")
    page.evaluate("window.__noReload = 1")
    page.locator('#account-state [data-state="connected"]').wait_for(timeout=WAIT_MS)
    _both_themes(page, artefacts, "account")
    # History sync: the progress appears live (account.sync events), no reload.
    assert page.locator("#account-sync progress").count() == 0
    _history_batch(appliance, account, 35, last=False)
    page.locator('#account-sync progress[value="35"]').wait_for(timeout=WAIT_MS)
    assert "5 messages, 1 chat" in page.locator("#sync-totals").inner_text()
    assert page.evaluate("window.__noReload") == 1
    _both_themes(page, artefacts, "account-sync")
    page.goto(f"{appliance.base_url}/panel/accounts")
    page.locator(f'a[href="/panel/accounts/{account}"]').wait_for()
    page.locator(f"#sync-{account}").wait_for(timeout=WAIT_MS)
    page.evaluate("window.__noReload = 1")
    _history_batch(appliance, account, 100, last=True)  # the last chunk: done
    page.locator(f"#sync-{account}").wait_for(state="detached", timeout=WAIT_MS)
    assert page.evaluate("window.__noReload") == 1
    _both_themes(page, artefacts, "accounts")
    page.set_viewport_size({"width": 375, "height": 800})
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width  # no sideways scrolling at phone width
    _shot(page, artefacts, "accounts-en-light-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Users: create an agent with a grant on the new account.
    page.goto(f"{appliance.base_url}/panel/users/new")
    page.fill("#f-username", f"agent{suffix}")
    page.fill("#f-password", "agent-password-123")
    page.select_option("#f-role", "agent")
    page.check(f'input[name="accounts"][value="{account}"]')
    _axe(page, "user-new")
    page.click("#create-user")
    page.wait_for_url("**/panel/users/*?created=1")
    assert page.locator(f'input[type=checkbox][name="accounts"][value="{account}"]').is_checked()
    _both_themes(page, artefacts, "user")

    # API keys: the key once, then revoked.
    page.goto(f"{appliance.base_url}/panel/api-keys")
    page.fill("#f-key-name", f"crm {suffix}")
    page.click("#create-key")
    key = page.locator("#new-key-value").inner_text()
    assert key.strip()
    _both_themes(page, artefacts, "api-keys")
    page.goto(f"{appliance.base_url}/panel/api-keys")
    assert key not in page.content()
    page.locator(f'button[aria-label="Revoke the key crm {suffix}"]').click()
    page.wait_for_url("**/panel/api-keys")

    # The audit log, filtered by action.
    page.goto(f"{appliance.base_url}/panel/audit?action=api_key.")
    page.locator("#audit td code", has_text="api_key.revoke").first.wait_for()
    assert page.locator("#audit td code", has_text="user.create").count() == 0
    _both_themes(page, artefacts, "audit")

    # Delete the account: the confirmation names it; a wrong name deletes nothing.
    page.goto(f"{appliance.base_url}/panel/accounts/{account}")
    page.click("#delete-account-link")
    page.wait_for_url(f"**/panel/accounts/{account}/delete")
    assert f"Delete the account Desk {suffix}" in page.locator("h1").inner_text()
    page.fill("#f-confirm", "Desk")
    page.click("#delete-account")
    page.locator("#f-confirm-error").wait_for(timeout=WAIT_MS)
    assert page.locator("#f-confirm").get_attribute("aria-invalid") == "true"
    page.problems.clear()  # the browser logs the refused form's 400 itself
    _both_themes(page, artefacts, "account-delete")
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    _shot(page, artefacts, "account-delete-en-light-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    with login(appliance, "admin", admin_password(appliance)) as api:
        assert api.get(f"/api/accounts/{account}").status_code == 200
    page.fill("#f-confirm", f"Desk {suffix}")
    page.click("#delete-account")
    page.wait_for_url("**/panel/accounts?deleted=1")
    page.locator("#deleted").wait_for()
    assert page.locator(f'a[href="/panel/accounts/{account}"]').count() == 0
    with login(appliance, "admin", admin_password(appliance)) as api:
        assert api.get(f"/api/accounts/{account}").status_code == 404
    _clean(page)


def test_delete_users_and_the_last_admin(hooks_app: Appliance, page: Any, artefacts: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    with login(hooks_app, "admin", admin_password(hooks_app)) as api:
        made = api.post(
            "/api/users",
            json={"username": f"temp{suffix}", "password": "temp-password-123", "role": "agent"},
        )
        assert made.status_code == 201, made.text
        temp_id = made.json()["id"]
        admins = [u for u in api.get("/api/users").json()["items"] if u["role"] == "admin"]
        assert [u["username"] for u in admins if u["active"]] == ["admin"]
        admin_id = next(u["id"] for u in admins if u["username"] == "admin")
    _sign_in(page, hooks_app, "admin", admin_password(hooks_app))
    page.goto(f"{hooks_app.base_url}/panel/users/{temp_id}")
    page.click("#delete-user-link")
    page.wait_for_url(f"**/panel/users/{temp_id}/delete")
    assert f"temp{suffix}" in page.locator("h1").inner_text()
    _both_themes(page, artefacts, "user-delete")
    page.click("#delete-user")
    page.wait_for_url("**/panel/users?deleted=1")
    page.locator("#deleted").wait_for()
    assert page.locator(f'a[href="/panel/users/{temp_id}"]').count() == 0
    # The last active administrator: refused, said plainly; still signed in.
    page.goto(f"{hooks_app.base_url}/panel/users/{admin_id}/delete")
    page.click("#delete-user")
    error = page.locator("#delete-error")
    error.wait_for(timeout=WAIT_MS)
    assert "admin is the last active administrator" in error.inner_text()
    page.problems.clear()  # the browser logs the refused form's 409 itself
    _both_themes(page, artefacts, "user-delete-last-admin")
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    _shot(page, artefacts, "user-delete-last-admin-en-light-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{hooks_app.base_url}/panel/users")
    assert page.locator(f'a[href="/panel/users/{admin_id}"]').count() == 1
    _clean(page)


def test_contacts_tags_and_quick_replies_screens(
    appliance: Appliance, page: Any, artefacts: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    account = f"org{suffix}"
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post("/api/accounts", json={"id": account, "name": f"Shop {suffix}"})
        assert made.status_code == 201, made.text
    _sign_in(page, appliance, "admin", admin_password(appliance))
    page.goto(f"{appliance.base_url}/panel/tags?account={account}")
    page.fill("#f-tag-name", "wholesale")
    page.check('input[name="color"][value="#16a34a"]')  # a palette colour (Green)
    page.click("#create-tag")
    page.locator('#tags input[value="wholesale"]').wait_for()
    assert page.locator('#tags li[data-tag="wholesale"]').get_attribute("data-color") == "#16a34a"
    # A custom colour for another tag, then recoloured from its row.
    page.fill("#f-tag-name", "returns")
    page.check("#f-tag-custom")
    page.fill("#f-tag-custom-color", "#a1b2c3")
    page.click("#create-tag")
    row = page.locator('#tags li[data-tag="returns"]')
    row.wait_for()
    assert row.get_attribute("data-color") == "#a1b2c3"
    row.locator('input[type="color"]').fill("#7c2d12")
    row.locator('button[type="submit"]:not([name="delete"])').click()
    page.locator('#tags li[data-tag="returns"][data-color="#7c2d12"]').wait_for()
    assert page.locator('#tags circle[fill="#7c2d12"]').count() == 1
    # The dot's ring: the theme's muted colour, so #7c2d12 shows on the dark theme too
    # (read once the page's stylesheets are in: the row is parsed before they load).
    page.wait_for_load_state("load")
    dot = page.locator('#tags li[data-tag="returns"] svg.tag-dot')
    light_ring = dot.evaluate("e => getComputedStyle(e).boxShadow")
    page.emulate_media(color_scheme="dark")
    dark_ring = dot.evaluate("e => getComputedStyle(e).boxShadow")
    page.emulate_media(color_scheme="light")
    assert "0px 0px 0px 1px" in light_ring and "0px 0px 0px 1px" in dark_ring
    assert light_ring != dark_ring, light_ring
    _both_themes(page, artefacts, "tags")
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    _shot(page, artefacts, "tags-en-light-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{appliance.base_url}/panel/quick-replies?account={account}")
    page.fill("#f-qr-name", "Hello")
    page.fill("#f-qr-shortcut", "/hello")
    page.fill("#f-qr-body", "Hello {{contact.name}}!")
    page.click("#create-quick-reply")
    page.locator("#quick-replies code", has_text="/hello").wait_for()
    _both_themes(page, artefacts, "quick-replies")
    page.goto(f"{appliance.base_url}/panel/contacts?account={account}")
    page.set_input_files(
        "#import-file",
        files=[
            {
                "name": "c.csv",
                "mimeType": "text/csv",
                "buffer": b"phone,name\n+905551239999,Deniz\n",
            }
        ],
    )
    page.click("#import-form button[type=submit]")
    page.locator("#imported").wait_for()
    page.locator("#contacts td", has_text="Deniz").wait_for()
    # Tag chips in their colours: the contact's, and the chat's in the inbox list and
    # the conversation's side panel (a sandbox inbound makes the chat).
    phone = "+905551239999"
    with login(appliance, "admin", admin_password(appliance)) as api:
        listed = api.get(f"/api/accounts/{account}/tags").json()["items"]
        tag_ids = {t["name"]: t["id"] for t in listed}
        assert api.post(f"/api/accounts/{account}/connect").status_code == 202

        def connected() -> bool:
            return api.get(f"/api/accounts/{account}/status").json()["state"] == "connected"

        _wait(connected, "the account connected")
        _inject(api, account, phone, "Is my refund on its way?", "Deniz")

        def chat_made() -> bool:
            return bool(api.get(f"/api/accounts/{account}/chats").json()["items"])

        _wait(chat_made, "the inbound chat")
        tagged = api.post(
            f"/api/accounts/{account}/tagging",
            json={"add": [tag_ids["returns"]], "chats": [phone], "contacts": [phone]},
        )
        assert tagged.status_code == 200, tagged.text
    page.goto(f"{appliance.base_url}/panel/contacts?account={account}")
    chip = page.locator("#contacts .tag", has_text="returns")
    chip.wait_for()
    assert chip.locator('circle[fill="#7c2d12"]').count() == 1
    _both_themes(page, artefacts, "contacts")
    page.goto(f"{appliance.base_url}/panel/inbox?account={account}")
    chip = page.locator("#chat-list .tag", has_text="returns")
    chip.wait_for(timeout=WAIT_MS)
    assert chip.get_attribute("data-color") == "#7c2d12"
    assert chip.locator('circle[fill="#7c2d12"]').count() == 1
    page.locator("#chat-list .chat a").first.click()
    side = page.locator("#chat-tags .tag", has_text="returns")
    side.wait_for(timeout=WAIT_MS)
    assert side.locator('circle[fill="#7c2d12"]').count() == 1
    _both_themes(page, artefacts, "inbox-tag-colours")
    _clean(page)


class _Receiver(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []
    posts: list[tuple[dict[str, str], bytes]] = []  # headers (lower-case names), body

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        type(self).seen.append(dict(self.headers))
        type(self).posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
        answer = b"received, thanks"
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hooks_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with running_appliance(
        tmp_path_factory, "panelhooks", "OUTBOUND_ALLOW_NETWORKS=127.0.0.1/32\n"
    ) as app:
        yield app


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_webhook_endpoint_and_its_delivery_log(
    hooks_app: Appliance, receiver: str, page: Any, artefacts: Path
) -> None:
    _sign_in(page, hooks_app, "admin", admin_password(hooks_app))
    page.goto(f"{hooks_app.base_url}/panel/webhooks")
    _both_themes(page, artefacts, "webhooks")
    page.fill("#wh-url", receiver)
    page.fill("#wh-description", "receiver on loopback")
    page.click("#create-endpoint")
    secret = page.locator("#secret-value").inner_text()
    assert secret.startswith("whsec_")
    endpoint_url = page.locator("form#endpoint-form").get_attribute("action")
    assert endpoint_url and endpoint_url.startswith("/panel/webhooks/")
    page.click("#send-test")
    page.wait_for_url("**?sent=test")

    def delivered() -> bool:
        page.goto(f"{hooks_app.base_url}{endpoint_url}")
        item = page.locator("#deliveries li", has_text="webhook.test")
        return item.count() > 0 and "HTTP 200" in item.first.inner_text()

    _wait(delivered, "the test delivery in the log", timeout_s=90)
    assert any("webhook-signature" in {k.lower() for k in h} for h in _Receiver.seen)
    page.locator("#deliveries summary").first.click()
    page.locator("#deliveries pre.excerpt", has_text="received, thanks").wait_for()
    assert secret not in page.content()  # shown once only
    _both_themes(page, artefacts, "webhook")
    _clean(page)


def test_settings_screen(appliance: Appliance, page: Any, artefacts: Path) -> None:
    """Settings: a bad age is shown next to its field; a good one is saved (the API
    reads it back); axe and screenshots, light and dark, and at 375 px."""
    _sign_in(page, appliance, "admin", admin_password(appliance))
    page.goto(f"{appliance.base_url}/panel/settings")
    page.fill("#f-events_days", "abc")
    page.click("#save-settings")
    page.locator("#events_days-error").wait_for(timeout=WAIT_MS)
    assert page.locator("#f-events_days").get_attribute("aria-invalid") == "true"
    page.problems.clear()  # the browser logs the refused form's 400 itself
    page.fill("#f-events_days", "45")
    page.fill("#f-audit_days", "400")
    page.click("#save-settings")
    page.wait_for_url("**/panel/settings?saved=1")
    with login(appliance, "admin", admin_password(appliance)) as api:
        stored = api.get("/api/retention").json()
    assert (stored["events_days"], stored["audit_days"]) == (45, 400)
    _both_themes(page, artefacts, "settings")
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    _shot(page, artefacts, "settings-en-light-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    _clean(page)


def test_rotate_a_webhook_secret(
    hooks_app: Appliance, receiver: str, page: Any, artefacts: Path
) -> None:
    with login(hooks_app, "admin", admin_password(hooks_app)) as api:
        made = api.post("/api/webhooks", json={"url": receiver, "description": "rotation"})
        assert made.status_code == 201, made.text
        endpoint_id, first = made.json()["id"], made.json()["secret"]
    base = hooks_app.base_url
    _sign_in(page, hooks_app, "admin", admin_password(hooks_app))
    page.goto(f"{base}/panel/webhooks/{endpoint_id}")
    page.click("#rotate-secret-link")
    page.wait_for_url(f"**/panel/webhooks/{endpoint_id}/rotate-secret")
    assert "24 hours" in page.locator("main").inner_text()  # what happens to the old one
    _both_themes(page, artefacts, "webhook-rotate")
    page.click("#rotate-secret")
    secret = page.locator("#secret-value").inner_text().strip()
    assert secret.startswith("whsec_") and secret != first
    assert "with the previous secret too" in page.locator("#secret-grace").inner_text()
    # The history holds the endpoint's own address, not the post: a reload rotates
    # nothing and shows no secret.
    # Asked of the browser: the sync API's page.url is a cached value that a
    # history.replaceState after the last call does not update while we sleep.
    page.wait_for_function(
        "path => location.pathname === path",
        arg=f"/panel/webhooks/{endpoint_id}",
        timeout=WAIT_MS,
    )
    assert page.evaluate("location.href") == f"{base}/panel/webhooks/{endpoint_id}"
    _both_themes(page, artefacts, "webhook-rotated")
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    _shot(page, artefacts, "webhook-rotated-en-light-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.reload()
    page.locator("#previous-secret").wait_for()
    assert page.locator("#secret-value").count() == 0 and secret not in page.content()
    with login(hooks_app, "admin", admin_password(hooks_app)) as api:
        audit = api.get("/api/audit", params={"limit": 200}).json()["items"]
        rotations = [
            e
            for e in audit
            if e["action"] == "webhook.rotate_secret" and e["target"] == f"webhook:{endpoint_id}"
        ]
        assert len(rotations) == 1, rotations  # the reload rotated nothing
    # A delivery after the rotation: the receiver verifies it with the new secret (and,
    # for the grace period, the old one signs it too).
    page.click("#send-test")
    page.wait_for_url("**?sent=test")

    def delivery() -> tuple[dict[str, str], bytes] | None:
        return next((p for p in _Receiver.posts if endpoint_id.encode() in p[1]), None)

    headers, body = _wait(delivery, "the test delivery at the receiver", timeout_s=90)
    signatures = headers["webhook-signature"].split()
    msg_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    assert sign(secret, msg_id, timestamp, body) in signatures
    assert sign(first, msg_id, timestamp, body) in signatures
    assert len(signatures) == 2
    _clean(page)


def test_set_a_users_password(appliance: Appliance, page: Any, artefacts: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    name, old, new = f"pw{suffix}", "old-password-123", "new-password-456"
    with login(appliance, "admin", admin_password(appliance)) as api:
        made = api.post(
            "/api/users",
            json={"username": name, "password": old, "role": "agent", "all_accounts": True},
        )
        assert made.status_code == 201, made.text
        user_id = made.json()["id"]
    theirs = login(appliance, name, old)  # a session of theirs, open during the reset
    with theirs:
        assert theirs.get("/auth/me").status_code == 200
        _sign_in(page, appliance, "admin", admin_password(appliance))
        page.goto(f"{appliance.base_url}/panel/users/{user_id}")
        effects = page.locator("#f-new-password-effects").inner_text()
        assert "Every session of theirs ends" in effects and "API keys keep working" in effects
        page.fill("#f-new-password", new)
        page.fill("#f-new-password-again", new + "x")
        page.click("#set-password")
        page.locator("#f-new-password-again-error").wait_for(timeout=WAIT_MS)
        assert page.locator("#f-new-password-again").get_attribute("aria-invalid") == "true"
        page.problems.clear()  # the browser logs the refused form's 400 itself
        page.locator("#password-form").scroll_into_view_if_needed()
        _both_themes(page, artefacts, "user-password-error")
        assert theirs.get("/auth/me").status_code == 200  # nothing changed yet
        page.fill("#f-new-password", new)
        page.fill("#f-new-password-again", new)
        page.click("#set-password")
        page.wait_for_url(f"**/panel/users/{user_id}?password=set*")
        done = page.locator("#password-set")
        done.wait_for(timeout=WAIT_MS)
        assert f"{name} was signed out of 1 session" in done.inner_text()
        assert new not in page.content()
        _both_themes(page, artefacts, "user-password")
        page.set_viewport_size({"width": 375, "height": 800})
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.locator("#password-form").scroll_into_view_if_needed()
        _shot(page, artefacts, "user-password-en-light-phone")
        page.context.set_extra_http_headers({"Accept-Language": "tr-TR,tr;q=0.9"})
        page.reload()
        page.locator("#password-form").scroll_into_view_if_needed()
        _axe(page, "user password (tr, phone)")
        page.emulate_media(color_scheme="dark")
        _shot(page, artefacts, "user-password-tr-dark-phone")
        page.emulate_media(color_scheme="light")
        page.context.set_extra_http_headers({})
        page.set_viewport_size({"width": 1280, "height": 900})
        assert theirs.get("/auth/me").status_code == 401  # their session ended
    # They sign in with the new password, not the old one.
    page.context.clear_cookies()
    page.goto(f"{appliance.base_url}/panel/login")
    page.fill("#username", name)
    page.fill("#password", old)
    page.click("#login-form button[type=submit]")
    page.locator("#login-error", has_text="Wrong user name or password.").wait_for()
    page.problems.clear()  # the browser logs the refused sign-in's 401 itself
    _sign_in(page, appliance, name, new)
    page.goto(f"{appliance.base_url}/panel/inbox")
    assert name in page.locator("a.me").inner_text()
    _clean(page)
