"""The web panel in the in-process app (never served; no worker): sign in with its
retry messages, the role-aware navigation, the 403 and 404 pages, CSRF on forms, the
CSP, preferences (language, timezone, theme), and the inbox's actions (send, quick
reply, tag, note, resolve) through the same stores as the API."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from quart import Quart
from quart.typing import TestClientProtocol as Client

from appliance.api.app import create_app
from appliance.api.panel.web import PANEL_CSP
from appliance.api.ratelimit import RateLimiter
from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.passwords import hash_password
from appliance.auth.permissions import Role
from appliance.auth.principal import Principal
from appliance.config import Paths, load_settings
from appliance.db.database import Database
from appliance.inbox import quick_replies_store, tags_store
from appliance.inbox import store as inbox
from appliance.inbox.notes_store import actor_of
from appliance.messaging import queries, store
from appliance.secrets import Secrets
from tests.unit.conftest import OpenDb

A = "acc_a"
ALICE = "905551110001@s.whatsapp.net"
PASSWORD = "correct horse battery"
ADMIN = Principal(kind="user", id=1, name="admin1", role=Role.ADMIN, all_accounts=True)


def _app(tmp_path: Path, env: str = "") -> Quart:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text(env, encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    return create_app(load_settings(paths, environ={}), secrets)


async def _setup(db: Database) -> None:
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=A,
            name="Shop",
            engine="sandbox",
            engine_settings={},
            settings={},
            now=1.0,
        )
        for name, role in (("admin1", Role.ADMIN), ("agent1", Role.AGENT)):
            await auth_store.create_user(
                conn,
                username=name,
                password_hash=hash_password(PASSWORD),
                role=role,
                all_accounts=False,
                accounts=[A],
                now=1.0,
            )
        now = time.time()
        await store.insert_inbound(
            conn,
            account_id=A,
            message_id="IN1",
            chat_jid=ALICE,
            sender_jid=ALICE,
            sender_name="Alice",
            type_="text",
            body="Merhaba, siparişim nerede?",
            content={"type": "text", "text": {"body": "Merhaba, siparişim nerede?"}},
            reply_to=None,
            media_id=None,
            wa_timestamp=now,
            now=now,
        )
        await inbox.on_inbound(conn, A, ALICE, "IN1", now=now)
        await tags_store.create_tag(conn, A, name="vip", color=None, by=actor_of(ADMIN), now=now)
        await quick_replies_store.create_quick_reply(
            conn,
            A,
            name="Thanks",
            shortcut="/thanks",
            body="Thank you {{contact.name}}!",
            media=None,
            created_by="user:1",
            by=actor_of(ADMIN),
            now=now,
        )


async def _sign_in(
    client: Client, username: str, password: str = PASSWORD, **headers: str
) -> tuple[int, str, str]:
    """(status, body, csrf token of the page after the redirect or '')."""
    response = await client.post(
        "/panel/login",
        form={
            "username": username,
            "password": password,
            "next": "/panel/",
            "tz": "Europe/Istanbul",
        },
        headers=headers,
    )
    body = await response.get_data(as_text=True)
    if response.status_code != 303:
        return response.status_code, body, ""
    page = await client.get("/panel/preferences")
    text = await page.get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', text)
    return 303, text, found.group(1) if found else ""


def _run(open_db: OpenDb, db_path: Path, tmp_path: Path, test: Any, env: str = "") -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _setup(db)
            app = _app(tmp_path / "etc-root", env)
            state = state_of(app)
            state.db = db
            state.limiter = RateLimiter(tmp_path / "ratelimit.db")
            await state.limiter.open()
            try:
                await test(app, db)
            finally:
                await state.limiter.close()

    asyncio.run(body())


def test_sign_in_pages_languages_and_retry_messages(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        # Signed out: the panel sends you to the sign-in page, keeping where you were.
        response = await client.get("/panel/inbox?status=open")
        assert response.status_code == 303
        assert response.headers["Location"].startswith("/panel/login?next=/panel/inbox")
        # An htmx fragment of a page whose session ended: the whole page goes there.
        fragment = await client.get(
            "/panel/inbox/chats",
            headers={"HX-Request": "true", "HX-Current-URL": "http://x/panel/inbox?who=mine"},
        )
        assert fragment.headers["HX-Redirect"] == "/panel/login?next=/panel/inbox%3Fwho%3Dmine"
        # The sign-in page speaks the browser's language; strict CSP; no inline script.
        en = await client.get("/panel/login")
        text = await en.get_data(as_text=True)
        assert en.status_code == 200 and "<h1>Sign in</h1>" in text
        assert en.headers["Content-Security-Policy"] == PANEL_CSP
        assert "unsafe-inline" not in PANEL_CSP and "unsafe-eval" not in PANEL_CSP
        assert "<script>" not in text and " style=" not in text
        tr = await client.get("/panel/login", headers={"Accept-Language": "tr-TR,tr;q=0.9"})
        assert "<h1>Giriş yap</h1>" in await tr.get_data(as_text=True)
        assert tr.headers["Content-Language"] == "tr"
        # A wrong password says so; the fifth failure locks, saying when to retry.
        for _ in range(4):
            status, text, _csrf = await _sign_in(client, "admin1", "wrong password!")
            assert status == 401 and "Wrong user name or password." in text
        status, text, _csrf = await _sign_in(client, "admin1", "wrong password!")
        assert status == 401
        status, text, _csrf = await _sign_in(client, "admin1")
        assert status == 429, text
        assert re.search(r"Try again in \d+ minutes? \(at \d", text), text
        # In Turkish too.
        status, text, _csrf = await _sign_in(client, "admin1", **{"Accept-Language": "tr"})
        assert status == 429 and "sonra tekrar deneyin (saat " in text, text

    _run(open_db, db_path, tmp_path, test)


def test_navigation_errors_csrf_and_preferences(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, text, csrf = await _sign_in(admin, "admin1")
        assert status == 303 and csrf
        # The browser's timezone became the first preference.
        assert 'value="Europe/Istanbul"' in text
        inbox_page = await (await admin.get("/panel/inbox")).get_data(as_text=True)
        assert 'href="/panel/users"' in inbox_page  # admins see the admin screen
        agent = app.test_client()
        status, _text, agent_csrf = await _sign_in(agent, "agent1")
        assert status == 303
        agent_inbox = await (await agent.get("/panel/inbox")).get_data(as_text=True)
        assert 'href="/panel/users"' not in agent_inbox
        refused = await agent.get("/panel/users")
        assert refused.status_code == 403
        assert "Not allowed" in await refused.get_data(as_text=True)
        missing = await agent.get("/panel/no/such/page")
        assert missing.status_code == 404
        assert "Not found" in await missing.get_data(as_text=True)
        # A form without the session's CSRF token is refused.
        forged = await agent.post("/panel/preferences", form={"language": "tr"})
        assert forged.status_code == 403
        # Preferences: Turkish, a timezone, dark; the answer already speaks Turkish.
        saved = await agent.post(
            "/panel/preferences",
            form={
                "csrf_token": agent_csrf,
                "language": "tr",
                "timezone": "Asia/Tokyo",
                "theme": "dark",
            },
        )
        text = await saved.get_data(as_text=True)
        assert saved.status_code == 200 and "Kaydedildi." in text
        assert 'data-theme="dark"' in text and 'lang="tr"' in text
        assert (await auth_store.preferences(db, 2)).timezone == "Asia/Tokyo"
        bad = await agent.post(
            "/panel/preferences",
            form={"csrf_token": agent_csrf, "language": "xx", "timezone": "Mars/Base"},
        )
        assert bad.status_code == 400
        assert 'aria-invalid="true"' in await bad.get_data(as_text=True)

    _run(open_db, db_path, tmp_path, test)


def test_inbox_actions(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        status, _text, csrf = await _sign_in(client, "agent1")
        assert status == 303
        htmx = {"HX-Request": "true", "X-CSRF-Token": csrf}
        page = await (await client.get("/panel/inbox")).get_data(as_text=True)
        assert 'data-unread="1"' in page and "Merhaba, siparişim nerede?" in page
        chat = f"/panel/inbox/{A}/{ALICE}"
        opened = await client.get(chat, headers={"HX-Request": "true"})
        text = await opened.get_data(as_text=True)
        assert opened.status_code == 200 and 'id="composer"' in text
        listing = await (await client.get("/panel/inbox/chats")).get_data(as_text=True)
        assert "data-unread" not in listing  # reading the chat cleared the badge
        # A quick reply, rendered for this chat.
        reply = await quick_replies_store.list_quick_replies(db, A, q=None, cursor=None, limit=5)
        sent = await client.post(
            f"{chat}/send", form={"quick_reply_id": str(reply[0][0].id)}, headers=htmx
        )
        assert sent.status_code == 200, await sent.get_data(as_text=True)
        rows, _ = await queries.list_messages(db, A, chat_jid=ALICE, limit=5)
        assert rows[0].direction == "out" and rows[0].body == "Thank you Alice!"
        # A reply with text quoting the inbound message.
        await client.post(
            f"{chat}/send", form={"text": "On its way", "reply_to": "IN1"}, headers=htmx
        )
        rows, _ = await queries.list_messages(db, A, chat_jid=ALICE, limit=5)
        assert rows[0].body == "On its way" and rows[0].reply_to == "IN1"
        # Tag (an agent applies existing tags), note, resolve.
        vip = await tags_store.tag_id_by_name(db, A, "vip")
        await client.post(f"{chat}/tags", form={"add": str(vip)}, headers=htmx)
        made = await client.post(f"{chat}/tags", form={"add": "brand-new"}, headers=htmx)
        assert "No such tag" in await made.get_data(as_text=True)  # agents cannot create
        await client.post(f"{chat}/notes", form={"body": "Called her back"}, headers=htmx)
        done = await client.post(f"{chat}/status", form={"status": "resolved"}, headers=htmx)
        text = await done.get_data(as_text=True)
        assert "Called her back" in text and "vip" in text and 'id="reopen-button"' in text
        assert "agent1 ·" in text  # the note's author
        row = await queries.chat_row(db, A, ALICE)
        assert row is not None and row.status == "resolved"
        # An empty message is refused next to the composer, nothing is stored.
        empty = await client.post(f"{chat}/send", form={"text": "  "}, headers=htmx)
        assert "Write a message first." in await empty.get_data(as_text=True)
        # Another account's chat, or one that does not exist: the 404 page.
        gone = await client.post(
            f"/panel/inbox/other/{ALICE}/notes", form={"body": "x"}, headers=htmx
        )
        assert gone.status_code == 404

    _run(open_db, db_path, tmp_path, test)


def test_first_run_offers_the_simulator(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                for name, role in (("boss", Role.ADMIN), ("ann", Role.AGENT)):
                    await auth_store.create_user(
                        conn,
                        username=name,
                        password_hash=hash_password(PASSWORD),
                        role=role,
                        all_accounts=False,
                        accounts=[],
                        now=1.0,
                    )
            app = _app(tmp_path / "etc-root")
            state = state_of(app)
            state.db = db
            state.limiter = RateLimiter(tmp_path / "ratelimit.db")
            await state.limiter.open()
            try:
                admin = app.test_client()
                status, _text, csrf = await _sign_in(admin, "boss")
                assert status == 303
                # An empty installation: the front door is "Get started" for an admin...
                front = await admin.get("/panel/")
                assert front.headers["Location"] == "/panel/setup"
                setup = await (await admin.get("/panel/setup")).get_data(as_text=True)
                assert 'id="try-simulator"' in setup and 'id="link-phone"' in setup
                # ... and the inbox for an agent (who may not create accounts).
                agent = app.test_client()
                await _sign_in(agent, "ann")
                assert (await agent.get("/panel/")).headers["Location"] == "/panel/inbox"
                assert (await agent.get("/panel/setup")).status_code == 403
                # The simulator: a sandbox account, three sample messages waiting in the
                # simulated server, a quick reply; then the inbox of that account.
                made = await admin.post("/panel/setup/simulator", form={"csrf_token": csrf})
                assert made.status_code == 303
                assert made.headers["Location"].startswith("/panel/inbox?account=acc_")
                account = made.headers["Location"].split("account=")[1]
                row = await store.account_row(db, account)
                assert row is not None and row.engine == "sandbox"
                waiting = await db.fetchone(
                    "SELECT COUNT(*) AS n FROM sandbox_server_inbox WHERE account_id = ?",
                    (account,),
                )
                assert waiting is not None and waiting["n"] == 3
                replies, _ = await quick_replies_store.list_quick_replies(
                    db, account, q=None, cursor=None, limit=5
                )
                assert [r.shortcut for r in replies] == ["/thanks"]
                assert (await admin.get("/panel/")).headers["Location"] == "/panel/inbox"
            finally:
                await state.limiter.close()

    asyncio.run(body())


def test_banner_dates_and_numbers(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        client = app.test_client()
        await _sign_in(client, "agent1")
        # No worker here, and the account wants to be connected but is not.
        banner = await (await client.get("/panel/banner")).get_data(as_text=True)
        assert "The worker is not answering" in banner
        assert "Account Shop is not connected." in banner
        async with app.test_request_context("/panel/inbox"):
            from quart import g

            from appliance.api.panel import i18n

            g.panel_language, g.panel_timezone = "tr", "Europe/Istanbul"
            # 2026-03-01 21:30 UTC is 2 March 00:30 in Istanbul (UTC+3).
            ts = 1772400600.0
            assert i18n.fmt_time(ts) == "00:30"
            assert i18n.fmt_day(ts, now=ts + 3600) == "Bugün"
            assert i18n.fmt_day(ts, now=ts + 86400) == "Dün"
            assert i18n.fmt_day(ts, now=ts + 5 * 86400) == "2 Mart 2026 Pazartesi"
            assert i18n.fmt_number(12345) == "12.345"
            g.panel_language, g.panel_timezone = "en", "UTC"
            assert i18n.fmt_time(ts) == "9:30\u202fPM"
            assert i18n.fmt_number(12345) == "12,345"
            assert i18n.ngettext("%(num)d chat", "%(num)d chats", 1, x=1) == "1 chat"

    _run(open_db, db_path, tmp_path, test)
