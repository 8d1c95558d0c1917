"""The landing page and the API docs render in a real browser (Debian's chromium).

A 200 is not a rendered page: Swagger UI 4.x answered 200 and showed nothing for
an OpenAPI 3.1 spec. Here the operations must be in the DOM and visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import Appliance, admin_password

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def _assert_clean(page, expected: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Nothing left loopback and the console shows no errors (CSP violations would be
    there), except ``expected`` (a substring of one message at most)."""
    assert page.off_loopback == [], f"requests leaving loopback: {page.off_loopback}"
    problems = [p for p in page.problems if expected is None or expected not in p]
    assert problems == [], f"console errors: {problems}"


def _signed_out_probe(app: Appliance) -> str:
    """The landing page asks /auth/me whether a session exists: signed out, a 401."""
    return f"status of 401 () ({app.base_url}/auth/me)"


def test_landing_page_renders_and_links_to_the_docs(
    appliance: Appliance, page, artefacts: Path
) -> None:
    page.goto(f"{appliance.base_url}/")
    assert page.locator("h1").inner_text() == "WhatsApp gateway appliance"
    for href in ("/docs", "/openapi.json", "/healthz", "/readyz"):
        assert page.locator(f'main a[href="{href}"]').is_visible(), href
    assert page.get_by_text("runbook/README.md").is_visible()
    # The stylesheet applied (a file: inline styles would be refused by the CSP).
    width = page.locator("main").evaluate("e => getComputedStyle(e).maxWidth")
    assert width != "none", width
    assert page.locator("#login").is_visible()
    page.screenshot(path=str(artefacts / "home.png"), full_page=True)
    # The page asks /auth/me whether a session exists; signed out, that is a 401.
    _assert_clean(page, expected=_signed_out_probe(appliance))


def test_admin_signs_in_and_sees_the_operations_in_the_docs(
    appliance: Appliance, page, artefacts: Path
) -> None:
    # Without a session /docs is refused.
    refused = page.goto(f"{appliance.base_url}/docs")
    assert refused is not None and refused.status == 401
    page.problems.clear()  # the browser logs the 401 itself
    # Sign in with the form on / (a session cookie, as a person would).
    page.goto(f"{appliance.base_url}/")
    page.fill("#username", "admin")
    page.fill("#password", admin_password(appliance))
    page.click("#login button[type=submit]")
    status = page.locator("#session")
    status.get_by_text("Signed in as admin (admin).").wait_for()
    page.click("text=Open the API docs")
    page.wait_for_url(f"{appliance.base_url}/docs")
    # Swagger UI read the 3.1 spec: its title and the operation blocks are shown.
    page.locator(".info .title").get_by_text("WhatsApp gateway appliance").wait_for()
    accounts = page.locator('.opblock-get .opblock-summary-path[data-path="/api/accounts"]')
    accounts.first.wait_for(state="visible")
    assert "valid version field" not in page.content()
    page.screenshot(path=str(artefacts / "docs-top.png"), full_page=False)
    # Swagger UI 5 renders a large spec's operations as the reader scrolls (only those
    # near the viewport are in the DOM): scroll to the end, collecting what is shown.
    shown: set[str] = set()
    for _ in range(400):  # bounded: about 120 screens
        shown.update(
            page.locator(".opblock").evaluate_all(
                "els => els.map(e => e.className.match(/opblock-(get|post|put|patch|delete)/)[1]"
                " + ' ' + e.querySelector('.opblock-summary-path').dataset.path)"
            )
        )
        at_end = page.evaluate(
            "window.innerHeight + window.scrollY >= document.body.scrollHeight - 2"
        )
        if at_end:
            break
        page.mouse.wheel(0, 900)
        page.wait_for_timeout(50)
    assert len(shown) >= 30, sorted(shown)
    assert len([op for op in shown if op.startswith("post ")]) >= 10, sorted(shown)
    assert "post /api/accounts/{account}/messages" in shown
    # Back to the top, then down until the send operation is on screen; open it: its
    # parameters and responses render too.
    send = page.locator(
        '.opblock-post .opblock-summary-path[data-path="/api/accounts/{account}/messages"]'
    )
    page.evaluate("window.scrollTo(0, 0)")
    for _ in range(400):  # bounded, as above
        if send.count() and send.first.is_visible():
            break
        page.mouse.wheel(0, 600)
        page.wait_for_timeout(50)
    send.first.scroll_into_view_if_needed()
    send.first.click()
    page.locator(".opblock-post.is-open .responses-wrapper").first.wait_for(state="visible")
    assert page.locator(".opblock-post.is-open .response-col_status").count() >= 1
    page.screenshot(path=str(artefacts / "docs.png"), full_page=False)
    _assert_clean(page, expected=_signed_out_probe(appliance))
