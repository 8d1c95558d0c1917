"""The landing page at / and the /docs page, over HTTP against the real installation.

That the pages actually render in a browser is tests/browser/test_docs.py; here: the
answers, the links, the strict CSP, and that every script and stylesheet the pages
name is served by the appliance itself (no CDN)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from tests.integration.conftest import Appliance, admin_password, login

pytestmark = pytest.mark.integration

STRICT_CSP = ("script-src 'self'", "style-src 'self'", "frame-ancestors 'none'")


class _Page(HTMLParser):
    """Links, scripts, stylesheets and anything inline a strict CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "style" in a or any(name.startswith("on") for name in a):
            self.inline.append(f"<{tag} {attrs}>")
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag == "link" and a.get("rel") == "stylesheet":
            self.styles.append(a.get("href") or "")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            if a.get("src"):
                self.scripts.append(a["src"] or "")
            else:
                self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"<script>{data[:40]}")


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _assert_strict_html(response) -> _Page:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["Content-Security-Policy"]
    for directive in STRICT_CSP:
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    page = _parse(response.text)
    assert page.inline == [], page.inline
    return page


def _assert_served_here(client, urls: list[str], content_type: str) -> None:
    assert urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url  # same origin, no CDN
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert content_type in asset.headers["content-type"], (url, asset.headers)
        assert len(asset.content) > 100, url


def test_landing_page_says_what_this_is_and_links_to_docs(appliance: Appliance) -> None:
    with appliance.client() as c:
        response = c.get("/")
        page = _assert_strict_html(response)
        assert "WhatsApp gateway appliance" in response.text
        for href in ("/docs", "/openapi.json", "/healthz", "/readyz"):
            assert href in page.links, page.links
        assert "runbook/README.md" in response.text
        _assert_served_here(c, page.scripts, "javascript")
        _assert_served_here(c, page.styles, "text/css")
        # Every link on it answers (the docs only for admins).
        for href in page.links:
            answer = c.get(href)
            if href.startswith("/panel"):
                # the panel sends a signed-out visitor to its sign-in page
                assert answer.status_code == 303, href
                assert answer.headers["location"].startswith("/panel/login"), answer.headers
                assert c.get(answer.headers["location"]).status_code == 200
                continue
            assert answer.status_code in ((401,) if href == "/docs" else (200,)), href


def test_docs_page_serves_swagger_ui_5_for_admins_only(appliance: Appliance) -> None:
    with appliance.client() as c:
        assert c.get("/docs").status_code == 401
    with login(appliance, "admin", admin_password(appliance)) as admin:
        response = admin.get("/docs")
        page = _assert_strict_html(response)
        assert "/static/swagger-ui/swagger-ui-bundle.js" in page.scripts
        assert "/static/docs.js" in page.scripts
        _assert_served_here(admin, page.scripts, "javascript")
        _assert_served_here(admin, page.styles, "text/css")
        bundle = admin.get("/static/swagger-ui/swagger-ui-bundle.js").text
        # Swagger UI 4.x cannot read OpenAPI 3.1 ("does not specify a valid version field").
        version = re.search(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle)
        assert version is not None and int(version.group(1)) >= 5
        assert admin.get("/openapi.json").json()["openapi"].startswith("3.1")
        # The licence travels with the vendored files.
        assert "Apache License" in admin.get("/static/swagger-ui/LICENSE").text
