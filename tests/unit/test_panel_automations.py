"""The panel's automation screens (auto-replies with the tester, scheduled messages,
scripts) and the grouped navigation, in the in-process app: each form does what the API
route does (same body: rules, audit entries, events), bad input is shown next to its
field with a 400, agents get the 403 page, managers may not open scripts."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from quart import Quart

from appliance.auth import store as auth_store
from appliance.auth.passwords import hash_password
from appliance.auth.permissions import Role
from appliance.automations import auto_reply_store, schedules_store, scripts_store
from appliance.db.database import Database
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import PASSWORD, A, _run, _sign_in

HX = {"HX-Request": "true"}


async def _manager(db: Database) -> None:
    async with db.write() as conn:
        await auth_store.create_user(
            conn,
            username="manager1",
            password_hash=hash_password(PASSWORD),
            role=Role.MANAGER,
            all_accounts=False,
            accounts=[A],
            now=1.0,
        )


async def _event_types(db: Database) -> list[str]:
    rows = await db.fetchall("SELECT type FROM events ORDER BY id")
    return [r["type"] for r in rows]


def test_navigation_groups_by_role(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        await _manager(db)
        admin = app.test_client()
        await _sign_in(admin, "admin1")
        html = await (await admin.get("/panel/auto-replies")).get_data(as_text=True)
        nav = html.split('<nav class="nav"', 1)[1].split("</nav>", 1)[0]
        assert nav.count("<details data-nav-menu>") == 2
        automations, admin_menu = nav.split("<details data-nav-menu>")[1:]
        assert 'class="current">Automations</summary>' in automations
        for url in ("/panel/auto-replies", "/panel/schedules", "/panel/scripts"):
            assert f'href="{url}"' in automations
        assert 'href="/panel/auto-replies" aria-current="page"' in automations
        hrefs = re.findall(r'href="(/panel/[a-z-]+)"', automations)
        assert hrefs == [
            "/panel/auto-replies",
            "/panel/schedules",
            "/panel/scripts",
            "/panel/quick-replies",
        ]
        for url in ("/panel/users", "/panel/api-keys", "/panel/audit", "/panel/webhooks"):
            assert f'href="{url}"' in admin_menu
        assert 'href="/panel/inbox"' in nav.split("<details")[0]  # not in a menu
        # A manager: automations without scripts; an agent: no menu at all.
        manager = app.test_client()
        await _sign_in(manager, "manager1")
        html = await (await manager.get("/panel/schedules")).get_data(as_text=True)
        nav = html.split('<nav class="nav"', 1)[1].split("</nav>", 1)[0]
        assert 'href="/panel/auto-replies"' in nav and 'href="/panel/scripts"' not in nav
        assert (await manager.get("/panel/scripts")).status_code == 403
        agent = app.test_client()
        await _sign_in(agent, "agent1")
        html = await (await agent.get("/panel/inbox")).get_data(as_text=True)
        assert "data-nav-menu" not in html
        for url in ("/panel/auto-replies", "/panel/schedules", "/panel/scripts"):
            assert (await agent.get(url)).status_code == 403

    _run(open_db, db_path, tmp_path, test)


def test_auto_replies_and_the_tester(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        page = await (await admin.get("/panel/auto-replies")).get_data(as_text=True)
        assert "No rule yet" in page
        form = {
            "csrf_token": csrf,
            "name": "Hours",
            "match_type": "regex",
            "pattern": "(open",
            "reply": "We open at 9.",
            "priority": "10",
            "cooldown_s": "0",
            "stop": "1",
            "active": "1",
        }
        bad = await admin.post(f"/panel/accounts/{A}/auto-replies", form=form)
        assert bad.status_code == 400
        text = await bad.get_data(as_text=True)
        assert 'id="f-ar-pattern-error"' in text and 'value="(open"' in text
        assert await auto_reply_store.list_rules(db, A) == []
        made = await admin.post(
            f"/panel/accounts/{A}/auto-replies", form={**form, "pattern": "open|hours"}
        )
        assert made.status_code == 303
        (record,) = await auto_reply_store.list_rules(db, A)
        rule = record.rule
        assert (rule.name, rule.match_type, rule.priority, rule.active) == (
            "Hours",
            "regex",
            10,
            True,
        )
        # The tester (htmx): the rule fires and shows what it would send.
        test_url = f"/panel/accounts/{A}/auto-reply-test"
        fired = await admin.post(
            test_url, form={"csrf_token": csrf, "text": "When are you OPEN?"}, headers=HX
        )
        html = await fired.get_data(as_text=True)
        assert fired.status_code == 200 and "<html" not in html
        assert 'class="fired-name">Hours<' in html and "We open at 9." in html
        missed = await admin.post(test_url, form={"csrf_token": csrf, "text": "thanks"}, headers=HX)
        assert "No rule would fire." in await missed.get_data(as_text=True)
        bad_chat = await admin.post(
            test_url, form={"csrf_token": csrf, "text": "open", "chat": "not a chat"}
        )
        assert bad_chat.status_code == 400 and "field-error" in await bad_chat.get_data(
            as_text=True
        )
        # Disable: the tester says so; edit; delete.
        off = await admin.post(
            f"/panel/accounts/{A}/auto-replies/{rule.id}/active",
            form={"csrf_token": csrf, "active": "0"},
        )
        assert off.status_code == 303
        html = await (
            await admin.post(test_url, form={"csrf_token": csrf, "text": "open"}, headers=HX)
        ).get_data(as_text=True)
        assert "No rule would fire." in html and "Hours: disabled" in html
        edit = await admin.get(f"/panel/accounts/{A}/auto-replies/{rule.id}")
        assert 'value="open|hours"' in await edit.get_data(as_text=True)
        saved = await admin.post(
            f"/panel/accounts/{A}/auto-replies/{rule.id}",
            form={**form, "name": "Opening hours", "pattern": "open", "reply": "9 to 5."},
        )
        assert saved.status_code == 303
        (record,) = await auto_reply_store.list_rules(db, A)
        assert record.rule.name == "Opening hours" and record.rule.active is True
        assert getattr(record.rule.actions[0], "text", None) == "9 to 5."
        gone = await admin.post(
            f"/panel/accounts/{A}/auto-replies/{rule.id}/delete", form={"csrf_token": csrf}
        )
        assert gone.status_code == 303 and await auto_reply_store.list_rules(db, A) == []
        actions = [e.action for e in await auth_store.list_audit(db, before=None, limit=20)]
        assert {"auto_reply.create", "auto_reply.update", "auto_reply.delete"} <= set(actions)
        assert (await _event_types(db)).count("auto_reply.changed") == 4
        # Another account's rules: 404 (out of grant).
        other = await admin.post(
            "/panel/accounts/acc_nope/auto-replies", form={**form, "pattern": "x"}
        )
        assert other.status_code == 404

    _run(open_db, db_path, tmp_path, test)


def test_scheduled_messages(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        await _manager(db)
        manager = app.test_client()
        _status, _text, csrf = await _sign_in(manager, "manager1")
        assert "Nothing scheduled yet." in await (await manager.get("/panel/schedules")).get_data(
            as_text=True
        )
        url = f"/panel/accounts/{A}/schedules"
        form = {
            "csrf_token": csrf,
            "name": "Reminder",
            "to": "+905551110001",
            "text": "Your order ships today",
            "kind": "cron",
            "cron": "0 9 * * *",
            "timezone": "Europe/Nowhere",
        }
        bad = await manager.post(url, form=form)
        assert bad.status_code == 400
        assert 'id="f-sch-zone-error"' in await bad.get_data(as_text=True)
        past = await manager.post(url, form={**form, "kind": "once", "at": "2001-01-01T09:00"})
        assert past.status_code == 400
        assert 'id="f-sch-at-error"' in await past.get_data(as_text=True)
        made = await manager.post(url, form={**form, "timezone": "Europe/Istanbul"})
        assert made.status_code == 303
        (schedule,) = await schedules_store.list_schedules(db, A, after=None, limit=10)
        assert schedule.cron == "0 9 * * *" and schedule.recipients == ["+905551110001"]
        # Once, at a local time in the user's timezone (Europe/Istanbul, UTC+3).
        tomorrow = dt.date.today() + dt.timedelta(days=2)
        once = await manager.post(
            url, form={**form, "name": "Once", "kind": "once", "at": f"{tomorrow}T10:30"}
        )
        assert once.status_code == 303
        later = next(
            s
            for s in await schedules_store.list_schedules(db, A, after=None, limit=10)
            if s.name == "Once"
        )
        assert later.at == f"{tomorrow}T10:30:00+03:00"
        page = await (await manager.get("/panel/schedules")).get_data(as_text=True)
        block = page.split(f'id="schedule-{schedule.id}"', 1)[1].split("</li>", 1)[0]
        assert len(re.findall(r"<time>", block)) == 3  # the next three occurrences
        paused = await manager.post(f"{url}/{schedule.id}/pause", form={"csrf_token": csrf})
        assert paused.status_code == 303
        assert (await schedules_store.get_schedule(db, A, schedule.id)).state == "paused"
        await manager.post(f"{url}/{schedule.id}/resume", form={"csrf_token": csrf})
        assert (await schedules_store.get_schedule(db, A, schedule.id)).state == "active"
        cancelled = await manager.post(f"{url}/{later.id}/cancel", form={"csrf_token": csrf})
        assert cancelled.status_code == 303
        left = await schedules_store.list_schedules(db, A, after=None, limit=10)
        assert [s.id for s in left] == [schedule.id]
        types = await _event_types(db)
        assert {"schedule.created", "schedule.paused", "schedule.deleted"} <= set(types)
        # every audit entry of a schedule names its account, as create always did
        audited = await db.fetchall(
            "SELECT action, details FROM audit_log WHERE action LIKE 'schedule.%'"
        )
        assert {r["action"] for r in audited} >= {
            "schedule.create",
            "schedule.pause",
            "schedule.resume",
            "schedule.delete",
        }
        assert all(json.loads(r["details"])["account"] == A for r in audited), audited

    _run(open_db, db_path, tmp_path, test)


def test_scripts_editor(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        made = await admin.post(
            f"/panel/accounts/{A}/scripts",
            form={"csrf_token": csrf, "name": "Greeter", "trigger": "manual"},
        )
        assert made.status_code == 303
        editor_url = made.headers["Location"]
        script_id = editor_url.rsplit("/", 1)[1]
        editor = await (await admin.get(editor_url)).get_data(as_text=True)
        assert "data-code-editor" in editor and "No run yet." in editor
        form = {
            "csrf_token": csrf,
            "name": "Greeter",
            "description": "",
            "code": "log('hi');",
            "trigger": "schedule",
            "cron": "61 9 * * *",
            "timezone": "Europe/Istanbul",
            "chat_type": "any",
            "active": "1",
        }
        bad = await admin.post(editor_url, form=form)
        assert bad.status_code == 400
        assert 'id="f-scr-cron-error"' in await bad.get_data(as_text=True)
        saved = await admin.post(
            editor_url, form={**form, "cron": "0 9 * * mon-fri", "code": "log('hello');"}
        )
        assert saved.status_code == 303
        row = await scripts_store.script_row(db, A, script_id)
        assert (
            row is not None and row["code"] == "log('hello');" and row["trigger_type"] == "schedule"
        )
        off = await admin.post(f"{editor_url}/active", form={"csrf_token": csrf, "active": "0"})
        assert off.status_code == 303
        row = await scripts_store.script_row(db, A, script_id)
        assert row is not None and not row["active"] and row["code"] == "log('hello');"
        # No worker in this app: a run says so instead of failing.
        ran = await admin.post(
            f"{editor_url}/run", form={"csrf_token": csrf, "dry": "1"}, headers=HX
        )
        assert ran.status_code == 200
        assert "The worker did not answer" in await ran.get_data(as_text=True)
        actions = [e.action for e in await auth_store.list_audit(db, before=None, limit=20)]
        assert {"script.create", "script.update"} <= set(actions)
        gone = await admin.post(f"{editor_url}/delete", form={"csrf_token": csrf})
        assert gone.status_code == 303
        assert await scripts_store.script_row(db, A, script_id) is None

    _run(open_db, db_path, tmp_path, test)
