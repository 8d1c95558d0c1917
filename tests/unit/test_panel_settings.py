"""The panel's settings screen in the in-process app: the appliance-wide retention
(event-log and audit-log ages) as PUT /api/retention sets it, audited; bad input next to
its field with nothing written; the recent retention runs; admins only."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from quart import Quart

from appliance.auth import store as auth_store
from appliance.auth.passwords import hash_password
from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.inbox import retention_store
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import PASSWORD, _run, _sign_in


def _value(text: str, name: str) -> str:
    found = re.search(rf'name="{name}"[^>]*value="([^"]*)"', text)
    assert found is not None, name
    return found.group(1)


def test_settings_retention_and_runs(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        inbox = await (await admin.get("/panel/inbox")).get_data(as_text=True)
        assert 'href="/panel/settings"' in inbox  # in the Admin menu
        before = await retention_store.settings(db)
        shown = await (await admin.get("/panel/settings")).get_data(as_text=True)
        assert _value(shown, "events_days") == str(before.events_days or "")
        assert "No run yet" in shown
        # Bad input: shown next to its field, nothing written.
        for events, audit_days, field in (("abc", "30", "events_days"), ("10", "0", "audit_days")):
            bad = await admin.post(
                "/panel/settings",
                form={"csrf_token": csrf, "events_days": events, "audit_days": audit_days},
            )
            assert bad.status_code == 400
            text = await bad.get_data(as_text=True)
            assert f'id="{field}-error"' in text and 'aria-invalid="true"' in text
            assert _value(text, field) == (events if field == "events_days" else audit_days)
        assert await retention_store.settings(db) == before
        # Saved: the ages, an empty one kept for ever; audited as the API's route.
        saved = await admin.post(
            "/panel/settings", form={"csrf_token": csrf, "events_days": "45", "audit_days": ""}
        )
        assert saved.status_code == 303 and saved.headers["Location"] == "/panel/settings?saved=1"
        now = await retention_store.settings(db)
        assert (now.events_days, now.audit_days) == (45, None)
        row = await db.fetchone(
            "SELECT action, details FROM audit_log WHERE action = 'retention.update' "
            "ORDER BY id DESC LIMIT 1"
        )
        assert row is not None
        assert orjson.loads(row["details"]) == {"events_days": 45, "audit_days": None}
        page = await (await admin.get("/panel/settings?saved=1")).get_data(as_text=True)
        assert "Saved." in page and _value(page, "events_days") == "45"
        assert _value(page, "audit_days") == ""
        # A finished run is listed with what it deleted.
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO retention_runs (trigger, started_at, finished_at, deleted, batches) "
                "VALUES ('manual', 1.0, 2.0, ?, 1)",
                (orjson.dumps({"messages": 1200, "events": 34}).decode(),),
            )
        runs = await (await admin.get("/panel/settings")).get_data(as_text=True)
        assert 'id="retention-runs"' in runs and "1,234" in runs and "By hand" in runs
        # In Turkish.
        turkish = app.test_client()
        await _sign_in(turkish, "admin1", **{"Accept-Language": "tr"})
        await turkish.post(
            "/panel/preferences",
            form={
                "csrf_token": _value(
                    await (await turkish.get("/panel/preferences")).get_data(as_text=True),
                    "csrf_token",
                ),
                "language": "tr",
                "timezone": "",
                "theme": "system",
            },
        )
        tr_page = await (await turkish.get("/panel/settings")).get_data(as_text=True)
        assert "Ayarlar" in tr_page and "Saklama" in tr_page and "1.234" in tr_page

    _run(open_db, db_path, tmp_path, test)


def test_settings_refused_to_agents_and_managers(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        async with db.write() as conn:
            await auth_store.create_user(
                conn,
                username="manager1",
                password_hash=hash_password(PASSWORD),
                role=Role.MANAGER,
                all_accounts=True,
                accounts=[],
                now=1.0,
            )
        before = await retention_store.settings(db)
        for name in ("agent1", "manager1"):
            client = app.test_client()
            status, _text, csrf = await _sign_in(client, name)
            assert status == 303
            inbox = await (await client.get("/panel/inbox")).get_data(as_text=True)
            assert 'href="/panel/settings"' not in inbox
            assert (await client.get("/panel/settings")).status_code == 403
            changed = await client.post(
                "/panel/settings", form={"csrf_token": csrf, "events_days": "1", "audit_days": "1"}
            )
            assert changed.status_code == 403
        assert await retention_store.settings(db) == before

    _run(open_db, db_path, tmp_path, test)
