"""Browser headers (CORS, security headers: access.BrowserHeaders, added by
api/middleware.py) on answers of the in-process app, and the client address behind
proxies (access.client_addr) in its request contexts (never served)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from quart import Quart, Response

from appliance.api.access import client_addr, public
from appliance.api.app import create_app
from appliance.config import Paths, load_settings
from appliance.secrets import Secrets


def _app(tmp_path: Path, env: str = "") -> Quart:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(env, encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    return create_app(load_settings(paths, environ={}), secrets)


async def _browser_headers(
    app: Quart, origin: str | None, method: str = "GET", path: str = "/healthz"
) -> Any:
    headers = {"Origin": origin} if origin else {}
    response = await app.test_client().open(path, method=method, headers=headers)
    await response.get_data()
    return response.headers


async def _addr(app: Quart, peer: str, xff: str | None = None) -> str:
    # Quart takes request.remote_addr from Remote-Addr, which its ASGI layer sets first
    # from the socket peer.
    headers = {"Remote-Addr": peer}
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    async with app.test_request_context("/api/users", headers=headers):
        return client_addr()


# -- CORS and security headers -----------------------------------------------------------


def test_listed_cors_origin_is_allowed_and_others_not(tmp_path: Path) -> None:
    app = _app(tmp_path, "CORS_ORIGINS=https://crm.example.com/\n")

    async def body() -> None:
        ok = await _browser_headers(app, "https://crm.example.com")
        assert ok["Access-Control-Allow-Origin"] == "https://crm.example.com"
        assert ok["Access-Control-Allow-Credentials"] == "true"
        assert ok["Vary"] == "Origin"
        pre = await _browser_headers(app, "https://crm.example.com", method="OPTIONS")
        assert "X-CSRF-Token" in pre["Access-Control-Allow-Headers"]
        assert "Idempotency-Key" in pre["Access-Control-Allow-Headers"]
        for other in (
            "https://evil.example.com",
            "https://crm.example.com.evil.test",
            "http://crm.example.com",
            "null",
            None,
        ):
            headers = await _browser_headers(app, other)
            assert "Access-Control-Allow-Origin" not in headers, other
            assert "Access-Control-Allow-Credentials" not in headers, other

    asyncio.run(body())


def test_security_headers_on_every_answer(tmp_path: Path) -> None:
    app = _app(tmp_path)

    async def body() -> None:
        headers = await _browser_headers(app, None)
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert "Strict-Transport-Security" not in headers  # http public URL
        html = await _browser_headers(app, None, path="/")  # the landing page: HTML
        assert "script-src 'self'" in html["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in html["Content-Security-Policy"]

    asyncio.run(body())


def test_hsts_when_public_url_is_https(tmp_path: Path) -> None:
    app = _app(tmp_path, "PUBLIC_URL=https://gw.example.com\n")

    async def body() -> None:
        headers = await _browser_headers(app, None)
        assert headers["Strict-Transport-Security"].startswith("max-age=")

    asyncio.run(body())


def test_cors_wildcard_accepted_by_config_takes_effect(tmp_path: Path) -> None:
    # config.py accepts CORS_ORIGINS=* when PUBLIC_URL is on localhost, and the runbook
    # says so; the setting should then let a local browser app call the API.
    app = _app(tmp_path, "PUBLIC_URL=http://127.0.0.1:8080\nCORS_ORIGINS=*\n")

    async def body() -> None:
        headers = await _browser_headers(app, "http://localhost:3000")
        assert "Access-Control-Allow-Origin" in headers, (
            "BUG: CORS_ORIGINS=* passes config validation (appliance/config.py "
            "_no_wildcard_cors_in_public) but appliance/api/access.py BrowserHeaders "
            "compares the Origin literally with cors_origin_list, so '*' never matches any "
            "origin: the accepted setting has no effect"
        )

    asyncio.run(body())


# -- client address ----------------------------------------------------------------------


def test_client_addr_ignores_forwarded_for_without_trusted_proxies(tmp_path: Path) -> None:
    app = _app(tmp_path)

    async def body() -> None:
        assert await _addr(app, "192.0.2.10") == "192.0.2.10"
        assert await _addr(app, "192.0.2.10", "6.6.6.6") == "192.0.2.10"
        assert await _addr(app, "fe80::1%eth0") == "fe80::1"

    asyncio.run(body())


def test_client_addr_behind_a_trusted_proxy(tmp_path: Path) -> None:
    app = _app(tmp_path, "TRUSTED_PROXIES=10.0.0.0/8, 192.0.2.1\n")

    async def body() -> None:
        # The peer is not a trusted proxy: its X-Forwarded-For is not believed.
        assert await _addr(app, "203.0.113.7", "6.6.6.6") == "203.0.113.7"
        # Trusted peer: the right-most address that is not a trusted proxy.
        assert await _addr(app, "10.0.0.5", "198.51.100.4") == "198.51.100.4"
        assert await _addr(app, "10.0.0.5", "198.51.100.4, 10.0.0.9") == "198.51.100.4"
        assert await _addr(app, "192.0.2.1", "198.51.100.4,10.1.1.1, 10.0.0.9") == "198.51.100.4"
        # A client cannot choose its address by prepending to the header.
        assert await _addr(app, "10.0.0.5", "6.6.6.6, 198.51.100.4") == "198.51.100.4"
        # Every hop trusted: the first one; no header: the peer.
        assert await _addr(app, "10.0.0.5", "10.0.0.7, 10.0.0.9") == "10.0.0.7"
        assert await _addr(app, "10.0.0.5") == "10.0.0.5"
        assert await _addr(app, "10.0.0.5", " , ") == "10.0.0.5"

    asyncio.run(body())


def test_client_addr_cannot_be_spoofed_with_a_remote_addr_header(tmp_path: Path) -> None:
    app = _app(tmp_path)

    @app.get("/_addr_for_test")
    @public
    async def _echo() -> Response:
        return Response(client_addr())

    async def body() -> None:
        client = app.test_client()
        honest = await (await client.get("/_addr_for_test")).get_data(as_text=True)
        spoofed = await client.get("/_addr_for_test", headers={"Remote-Addr": "6.6.6.6"})
        assert await spoofed.get_data(as_text=True) == honest != "6.6.6.6"

    asyncio.run(body())
