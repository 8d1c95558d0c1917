"""Playwright driving Debian's chromium (/usr/bin/chromium), never a downloaded browser.

Each test gets a fresh browser with a new empty profile, a page that refuses every
request leaving loopback (recorded in ``page.off_loopback``), and the console errors
and uncaught page errors collected in ``page.problems``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path(os.environ.get("APPLIANCE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $BROWSER_ARTEFACTS when set (CI keeps it), else a temp dir."""
    where = os.environ.get("BROWSER_ARTEFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("browser-artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(tmp_path: Path) -> Iterator[object]:
    # Not skipped when missing: .ci/run installs Debian's chromium, and a browser test
    # that silently skipped would prove nothing.
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)"
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "profile"
    profile.mkdir()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            off_loopback: list[str] = []

            def only_loopback(route, request) -> None:  # type: ignore[no-untyped-def]
                host = urlsplit(request.url).hostname or ""
                if request.url.startswith(("data:", "blob:")) or host in LOOPBACK_HOSTS:
                    route.continue_()
                else:
                    off_loopback.append(request.url)
                    route.abort()

            context.route("**/*", only_loopback)
            context.set_default_timeout(60_000)  # a loaded 2-core machine is slow
            pg = context.pages[0] if context.pages else context.new_page()
            problems: list[str] = []

            def console(message) -> None:  # type: ignore[no-untyped-def]
                if message.type == "error":
                    url = (message.location or {}).get("url", "")
                    problems.append(f"{message.text} ({url})")

            pg.on("console", console)
            pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            pg.off_loopback = off_loopback  # type: ignore[attr-defined]
            pg.problems = problems  # type: ignore[attr-defined]
            yield pg
        finally:
            context.close()
