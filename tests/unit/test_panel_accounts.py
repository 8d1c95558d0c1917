# ruff: noqa: RUF001  (Turkish text: the dotless i is meant)
"""The panel's Accounts screen in the in-process app (no worker: a fake answers the QR
and pairing-code calls): the list with live state, create for each engine from the
engine's settings model (with the issues next to the fields), the settings edit
(cloud secrets kept when left empty), connect, log out, the QR code and the pairing
code, the history sync's progress, deleting an account (its name typed again), and
what agents may not do."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from quart import Quart

from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.db.database import Database
from appliance.errors import Conflict, WorkerUnavailable
from appliance.ipc import protocol
from appliance.messaging import history_store, store
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in


class FakeWorker:
    """Answers the worker calls the Accounts screen makes."""

    connected = True

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.qr = "PHN2Zz48L3N2Zz4="  # base64 of <svg></svg>
        self.away = False  # pairing codes: the worker does not answer

    async def call(self, params: Any) -> Any:
        self.calls.append(params)
        if isinstance(params, protocol.WebQrParams):
            if not self.qr:
                raise Conflict("no QR code now")
            return protocol.WebQrResult(qr=self.qr)
        if isinstance(params, protocol.WebPairParams):
            if self.away:
                raise WorkerUnavailable("no connection to the worker")
            return protocol.WebPairResult(code="ABCD-EFGH")
        raise AssertionError(params)

    def notify(self, params: Any) -> None:
        self.calls.append(params)


async def _csrf(client: Any, url: str) -> str:
    text = await (await client.get(url)).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', text)
    assert found, text
    return found.group(1)


def test_accounts_list_create_settings_link(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        worker = FakeWorker()
        state_of(app).worker = worker  # type: ignore[assignment]
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        # The list: every account with its state; it follows account.status events live.
        response = await admin.get("/panel/accounts")
        text = await response.get_data(as_text=True)
        assert response.status_code == 200
        assert 'href="/panel/accounts/acc_a"' in text and "Shop" in text
        assert 'data-events-after="' in text
        assert 'hx-trigger="panel:accounts from:body, panel:sync from:body throttle:1s"' in text
        assert 'href="/panel/accounts/new"' in text
        assert "<script>" not in text and " style=" not in text
        # A form per engine, generated from the engine's settings model.
        web_form = await (await admin.get("/panel/accounts/new?engine=web")).get_data(as_text=True)
        assert 'name="engine_settings.pairing_timeout_s"' in web_form
        assert 'value="300"' in web_form  # the model's default
        cloud_form = await (await admin.get("/panel/accounts/new?engine=cloud")).get_data(
            as_text=True
        )
        assert re.search(
            r'type="password" id="[^"]+" name="engine_settings.access_token"', cloud_form
        )
        assert "access_token_enc" not in cloud_form
        # Bad input: 400, the issue next to its field, nothing written.
        before = len(await store.list_account_rows(db, None))
        bad = await admin.post(
            "/panel/accounts",
            form={
                "csrf_token": csrf,
                "engine": "web",
                "name": "Phone",
                "engine_settings.pairing_timeout_s": "5",
            },
        )
        bad_text = await bad.get_data(as_text=True)
        assert bad.status_code == 400
        assert re.search(
            r'name="engine_settings.pairing_timeout_s" value="5"[^>]*aria-invalid="true" '
            r'aria-describedby="f-engine-settings-pairing-timeout-s-error"',
            bad_text,
        ), bad_text
        assert 'id="f-engine-settings-pairing-timeout-s-error">Input should be greater' in bad_text
        assert len(await store.list_account_rows(db, None)) == before
        # Created: the same row, grant and audit entry as POST /api/accounts.
        created = await admin.post(
            "/panel/accounts",
            form={
                "csrf_token": csrf,
                "engine": "web",
                "name": "Phone",
                "engine_settings.pairing_timeout_s": "120",
                "engine_settings.download_media": "false",
                "settings.mark_as_read": "on",
                "settings.history_limit": "50",
                "settings.timezone": "Europe/Istanbul",
            },
        )
        assert created.status_code == 303, await created.get_data(as_text=True)
        account_id = created.headers["Location"].rsplit("/", 1)[1]
        row = await store.account_row(db, account_id)
        assert row is not None and row.engine == "web" and row.name == "Phone"
        assert row.engine_settings["pairing_timeout_s"] == 120
        assert row.engine_settings["download_media"] is False
        assert row.settings["mark_as_read"] is True and row.settings["history_limit"] == 50
        assert row.settings["download_media"] is False  # an unchecked box is off
        audit = await auth_store.list_audit(db, before=None, limit=5)
        assert audit[0].action == "account.create" and audit[0].target == f"account:{account_id}"
        # The account's page: state, link by QR and by code, settings.
        page = await (await admin.get(f"/panel/accounts/{account_id}")).get_data(as_text=True)
        assert f'hx-get="/panel/accounts/{account_id}/qr"' in page
        assert "panel:accounts from:body" in page
        assert 'name="phone"' in page
        # Not pairing: no QR code asked of the worker.
        qr = await (await admin.get(f"/panel/accounts/{account_id}/qr")).get_data(as_text=True)
        assert "Connect the account to show its QR code." in qr
        assert not any(isinstance(c, protocol.WebQrParams) for c in worker.calls)
        # Connect: desired state and audit as the API's connect; the worker is poked.
        response = await admin.post(
            f"/panel/accounts/{account_id}/connect", form={"csrf_token": csrf}
        )
        assert response.status_code == 303
        row = await store.account_row(db, account_id)
        assert row is not None and row.desired == "connected"
        # Pairing: the QR code as an image (data: URL, allowed by the CSP), asked anew on
        # each fetch (the page fetches on every account.status event).
        async with db.write() as conn:
            await store.set_account_state(
                conn, account_id, state="pairing", reason=None, phone=None, now=2.0
            )
        qr = await (await admin.get(f"/panel/accounts/{account_id}/qr")).get_data(as_text=True)
        assert f'src="data:image/svg+xml;base64,{worker.qr}"' in qr
        worker.qr = "PHN2ZyBpZD0iMiI+PC9zdmc+"
        qr = await (await admin.get(f"/panel/accounts/{account_id}/qr")).get_data(as_text=True)
        assert worker.qr in qr
        worker.qr = ""  # between two codes: waiting
        qr = await (await admin.get(f"/panel/accounts/{account_id}/qr")).get_data(as_text=True)
        assert "Waiting for the QR code" in qr
        # Pairing code: a bad number is refused next to the field; a good one shows the code.
        bad = await admin.post(
            f"/panel/accounts/{account_id}/pairing-code",
            form={"csrf_token": csrf, "phone": "0555"},
            headers={"HX-Request": "true"},
        )
        assert bad.status_code == 400
        assert 'id="pair-phone-error"' in await bad.get_data(as_text=True)
        good = await admin.post(
            f"/panel/accounts/{account_id}/pairing-code",
            form={"csrf_token": csrf, "phone": "+905551234567"},
            headers={"HX-Request": "true"},
        )
        assert good.status_code == 200
        assert 'id="pairing-code">ABCD-EFGH<' in await good.get_data(as_text=True)
        assert any(
            isinstance(c, protocol.WebPairParams) and c.phone == "+905551234567"
            for c in worker.calls
        )
        # No worker: said in the panel's words, not the IPC client's.
        worker.away = True
        away = await admin.post(
            f"/panel/accounts/{account_id}/pairing-code",
            form={"csrf_token": csrf, "phone": "+905551234567"},
            headers={"HX-Request": "true"},
        )
        text = await away.get_data(as_text=True)
        assert "The worker did not answer; try again in a moment." in text
        assert "no connection to the worker" not in text
        worker.away = False
        # Log out.
        response = await admin.post(
            f"/panel/accounts/{account_id}/logout", form={"csrf_token": csrf}
        )
        assert response.status_code == 303
        row = await store.account_row(db, account_id)
        assert row is not None and row.desired == "logged_out"
        # Settings: rename and change a setting; a bad value is shown next to its field.
        bad = await admin.post(
            f"/panel/accounts/{account_id}/settings",
            form={"csrf_token": csrf, "name": "Phone", "settings.timezone": "Not/A/Zone"},
        )
        assert bad.status_code == 400
        assert 'id="f-settings-timezone-error"' in await bad.get_data(as_text=True)
        saved = await admin.post(
            f"/panel/accounts/{account_id}/settings",
            form={
                "csrf_token": csrf,
                "name": "Front desk",
                "settings.history_limit": "10",
                "engine_settings.pairing_timeout_s": "600",
            },
        )
        assert saved.status_code == 200 and "Saved." in await saved.get_data(as_text=True)
        row = await store.account_row(db, account_id)
        assert row is not None and row.name == "Front desk"
        assert (
            row.settings["history_limit"] == 10 and row.engine_settings["pairing_timeout_s"] == 600
        )

    _run(open_db, db_path, tmp_path, test)


def test_cloud_account_secrets_kept_and_turkish(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        missing = await admin.post(
            "/panel/accounts",
            form={
                "csrf_token": csrf,
                "engine": "cloud",
                "name": "Cloud",
                "engine_settings.phone_number_id": "123",
                "engine_settings.verify_token": "v",
            },
        )
        assert missing.status_code == 400
        assert "access_token is required" in await missing.get_data(as_text=True)
        created = await admin.post(
            "/panel/accounts",
            form={
                "csrf_token": csrf,
                "engine": "cloud",
                "name": "Cloud",
                "engine_settings.phone_number_id": "123",
                "engine_settings.verify_token": "v",
                "engine_settings.access_token": "token-secret-1",
                "engine_settings.app_secret": "app-secret-1",
            },
        )
        assert created.status_code == 303
        account_id = created.headers["Location"].rsplit("/", 1)[1]
        page = await (await admin.get(f"/panel/accounts/{account_id}")).get_data(as_text=True)
        assert "token-secret-1" not in page and "app-secret-1" not in page
        row = await store.account_row(db, account_id)
        assert row is not None
        enc = row.engine_settings["access_token_enc"]
        # Saving with the secret fields empty keeps the stored secrets.
        saved = await admin.post(
            f"/panel/accounts/{account_id}/settings",
            form={
                "csrf_token": csrf,
                "name": "Cloud 2",
                "engine_settings.phone_number_id": "456",
                "engine_settings.verify_token": "v",
            },
        )
        assert saved.status_code == 200, await saved.get_data(as_text=True)
        row = await store.account_row(db, account_id)
        assert row is not None and row.engine_settings["access_token_enc"] == enc
        assert row.engine_settings["phone_number_id"] == "456"
        # In Turkish.
        await admin.post("/panel/preferences", form={"csrf_token": csrf, "language": "tr"})
        tr = await (await admin.get("/panel/accounts")).get_data(as_text=True)
        assert "<h1>Hesaplar</h1>" in tr and "Yeni hesap" in tr

    _run(open_db, db_path, tmp_path, test)


def test_agents_read_accounts_but_do_not_manage_them(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        async with db.write() as conn:
            await store.create_account(
                conn,
                account_id="acc_other",
                name="Other",
                engine="sandbox",
                engine_settings={},
                settings={},
                now=1.0,
            )
        agent = app.test_client()
        status, _text, csrf = await _sign_in(agent, "agent1")
        assert status == 303
        listing = await agent.get("/panel/accounts")
        text = await listing.get_data(as_text=True)
        assert listing.status_code == 200 and "Shop" in text
        assert "Other" not in text  # outside the agent's grants
        assert 'href="/panel/accounts/new"' not in text
        page = await (await agent.get(f"/panel/accounts/{A}")).get_data(as_text=True)
        assert 'id="settings-form"' not in page and 'id="connect"' not in page
        assert (await agent.get("/panel/accounts/acc_other")).status_code == 404
        assert (await agent.get("/panel/accounts/new")).status_code == 403
        refused = await agent.post(f"/panel/accounts/{A}/logout", form={"csrf_token": csrf})
        assert refused.status_code == 403
        refused = await agent.post(
            "/panel/accounts", form={"csrf_token": csrf, "engine": "sandbox", "name": "X"}
        )
        assert refused.status_code == 403
        row = await store.account_row(db, A)
        assert row is not None and row.desired != "logged_out"
        # Nor delete them: no link, the confirmation page and the post are refused.
        assert 'id="delete-account-link"' not in page
        assert (await agent.get(f"/panel/accounts/{A}/delete")).status_code == 403
        refused = await agent.post(
            f"/panel/accounts/{A}/delete", form={"csrf_token": csrf, "confirm": "Shop"}
        )
        assert refused.status_code == 403
        assert await store.account_row(db, A) is not None
        # The history sync's progress is theirs to read, like the state.
        assert (await agent.get(f"/panel/accounts/{A}/sync")).status_code == 200

    _run(open_db, db_path, tmp_path, test)


async def _history_batch(db: Database, progress: int, *, last: bool, messages: int) -> None:
    """What the web engine's import writes for one batch of a history chunk (the
    worker's call), with ``messages`` messages in one chat."""
    chat = "905551119999@s.whatsapp.net"
    batch = history_store.HistoryBatch(
        chunk_key=f"recent-{progress}",
        sync_type="RECENT",
        chats=[history_store.ChatInfo(jid=chat, name="Deniz")],
        messages=[
            history_store.PhoneMessage(
                id=f"H{progress}-{i}",
                chat_jid=chat,
                direction="in",
                type="text",
                content={"type": "text", "text": {"body": f"old {i}"}},
                timestamp=1_700_000_000.0 + i,
                body=f"old {i}",
                sender_jid=chat,
            )
            for i in range(messages)
        ],
        contacts=[],
        last=last,
        progress=progress,
    )
    async with db.write() as conn:
        await history_store.import_history_batch(
            conn, A, batch, history_store.HistoryLimit(), now=1_700_000_100.0
        )


def test_history_sync_progress_shown_and_followed_live(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        # Before the first chunk: nothing shown, but the page listens for account.sync.
        page = await (await admin.get(f"/panel/accounts/{A}")).get_data(as_text=True)
        assert 'id="account-sync"' in page and "panel:sync from:body" in page
        assert "History from the phone" not in page and "<progress" not in page
        # A sync running: WhatsApp's percentage as a progress bar, the running totals.
        await _history_batch(db, 40, last=False, messages=3)
        fragment = await admin.get(f"/panel/accounts/{A}/sync", headers={"HX-Request": "true"})
        text = await fragment.get_data(as_text=True)
        assert fragment.status_code == 200
        assert "History from the phone" in text and "Importing: 40 %" in text
        assert 'max="100" value="40"' in text
        assert "3 messages, 1 chat, 0 contact names" in text
        listing = await (await admin.get("/panel/accounts/list")).get_data(as_text=True)
        assert f'id="sync-{A}"' in listing and "History 40 %" in listing
        page = await (await admin.get(f"/panel/accounts/{A}")).get_data(as_text=True)
        assert 'value="40"' in page
        # Done: no bar any more, the totals stay; the list shows nothing for it.
        await _history_batch(db, 100, last=True, messages=1)
        text = await (await admin.get(f"/panel/accounts/{A}/sync")).get_data(as_text=True)
        assert "Imported" in text and "<progress" not in text
        assert "4 messages, 2 chats" in text  # running totals, as the API's
        listing = await (await admin.get("/panel/accounts/list")).get_data(as_text=True)
        assert f'id="sync-{A}"' not in listing
        # In Turkish.
        await admin.post("/panel/preferences", form={"csrf_token": csrf, "language": "tr"})
        text = await (await admin.get(f"/panel/accounts/{A}/sync")).get_data(as_text=True)
        assert "Telefondaki geçmiş" in text and "4 mesaj, 2 sohbet" in text

    _run(open_db, db_path, tmp_path, test)


def test_delete_an_account_after_typing_its_name(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        worker = FakeWorker()
        state_of(app).worker = worker  # type: ignore[assignment]
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        page = await (await admin.get(f"/panel/accounts/{A}")).get_data(as_text=True)
        assert f'href="/panel/accounts/{A}/delete"' in page
        # The confirmation names the account and what goes with it.
        confirm = await admin.get(f"/panel/accounts/{A}/delete")
        text = await confirm.get_data(as_text=True)
        assert confirm.status_code == 200
        assert "Delete the account Shop" in text and "chats, messages, contacts" in text
        assert 'name="confirm"' in text and 'name="csrf_token"' in text
        # A wrong name deletes nothing: 400, the reason next to the field.
        wrong = await admin.post(
            f"/panel/accounts/{A}/delete", form={"csrf_token": csrf, "confirm": "Sho"}
        )
        text = await wrong.get_data(as_text=True)
        assert wrong.status_code == 400
        assert 'id="f-confirm-error"' in text and 'aria-invalid="true"' in text
        assert "Type the account&#39;s name, Shop, exactly as shown." in text
        assert await store.account_row(db, A) is not None
        # Without the CSRF token: refused, nothing deleted.
        forged = await admin.post(f"/panel/accounts/{A}/delete", form={"confirm": "Shop"})
        assert forged.status_code == 403
        assert await store.account_row(db, A) is not None
        # The name: deleted with its chats, audited, the worker told; back to the list.
        done = await admin.post(
            f"/panel/accounts/{A}/delete", form={"csrf_token": csrf, "confirm": " Shop "}
        )
        assert done.status_code == 303 and done.headers["Location"] == "/panel/accounts?deleted=1"
        assert await store.account_row(db, A) is None
        assert await db.scalar("SELECT COUNT(*) FROM chats WHERE account_id = ?", (A,)) == 0
        assert await db.scalar("SELECT COUNT(*) FROM messages WHERE account_id = ?", (A,)) == 0
        [entry] = [
            e
            for e in await auth_store.list_audit(db, before=None, limit=20)
            if e.action == "account.delete"
        ]
        assert entry.target == f"account:{A}"
        assert any(isinstance(c, protocol.PokeParams) for c in worker.calls), worker.calls
        listing = await (await admin.get("/panel/accounts?deleted=1")).get_data(as_text=True)
        assert "The account was deleted with its data." in listing
        assert f'href="/panel/accounts/{A}"' not in listing
        assert (await admin.get(f"/panel/accounts/{A}/delete")).status_code == 404

    _run(open_db, db_path, tmp_path, test)


class PingedWorker(FakeWorker):
    """A worker that answers ping with the webhooks process's pids it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.webhooks_pids: list[int] = []

    async def ping(self, *, timeout_s: float | None = None) -> protocol.PingResult:
        return protocol.PingResult(pong=True, pid=1, webhooks_pids=self.webhooks_pids)


def test_banner_says_when_webhook_deliveries_are_stopped(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    """/readyz's webhooks check in the banner: said to those who manage webhooks while
    the webhooks process is not connected to the worker, in their language."""

    async def test(app: Quart, db: Database) -> None:
        worker = PingedWorker()
        state_of(app).worker = worker  # type: ignore[assignment]
        admin = app.test_client()
        await _sign_in(admin, "admin1")
        banner = await (await admin.get("/panel/banner")).get_data(as_text=True)
        assert 'id="banner-webhooks"' in banner and "The worker is not answering" not in banner
        assert "Webhook deliveries are stopped: the webhooks process is not running." in banner
        agent = app.test_client()
        await _sign_in(agent, "agent1")  # agents do not manage webhooks: not said to them
        assert "banner-webhooks" not in await (await agent.get("/panel/banner")).get_data(
            as_text=True
        )
        turkish = app.test_client()
        tr = {"Accept-Language": "tr"}
        await _sign_in(turkish, "admin1", **tr)
        text = await (await turkish.get("/panel/banner", headers=tr)).get_data(as_text=True)
        assert "Webhook teslimatları durdu" in text
        worker.webhooks_pids = [4242]  # connected again
        banner = await (await admin.get("/panel/banner")).get_data(as_text=True)
        assert "banner-webhooks" not in banner

    _run(open_db, db_path, tmp_path, test)
