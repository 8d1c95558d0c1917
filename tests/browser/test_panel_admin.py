"""The panel's Accounts, Webhooks and admin screens in Debian's chromium against a real
installation: one lean flow per screen group, each scanned with axe-core (no serious
or critical violations) and saved as screenshots, light and dark.

- Accounts and admin (the session's installation): create a sandbox account from the
  engine's form, connect it and watch its state turn connected live; create a user
  with a grant, an API key shown once and revoked, the audit log filtered; the
  accounts list at 375 px.
- Contacts, tags and quick replies (the session's installation): a tag and a quick
  reply added, a CSV imported and its contact listed.
- Webhooks (an installation whose SSRF guard allows 127.0.0.1, OUTBOUND_ALLOW_NETWORKS:
  the session's refuses loopback receivers): an endpoint pointing at a receiver on
  127.0.0.1, its secret shown once, a test event whose delivery appears in the log
  with the receiver's answer.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_panel import WAIT_MS, _axe, _clean, _shot, _sign_in, _wait
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
    page.goto(f"{appliance.base_url}/panel/accounts")
    page.locator(f'a[href="/panel/accounts/{account}"]').wait_for()
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
    page.click("#create-tag")
    page.locator('#tags input[value="wholesale"]').wait_for()
    _both_themes(page, artefacts, "tags")
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
    _both_themes(page, artefacts, "contacts")
    _clean(page)


class _Receiver(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        type(self).seen.append(dict(self.headers))
        body = b"received, thanks"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
