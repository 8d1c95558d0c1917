"""The panel's Tags and Quick replies screens (managers and admins) in the in-process
app: create, rename, delete, the API's rules (unique names and shortcuts) next to the
fields, audit entries; agents get the 403 page."""

from __future__ import annotations

from pathlib import Path

from quart import Quart

from appliance.auth import store as auth_store
from appliance.db.database import Database
from appliance.inbox import quick_replies_store, tags_store
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in


def test_tags_and_quick_replies(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        page = await (await admin.get("/panel/tags")).get_data(as_text=True)
        assert 'value="vip"' in page and 'href="/panel/quick-replies"' in page
        taken = await admin.post(
            f"/panel/accounts/{A}/tags", form={"csrf_token": csrf, "name": "VIP"}
        )
        assert taken.status_code == 409
        assert 'id="f-tag-name-error"' in await taken.get_data(as_text=True)
        made = await admin.post(
            f"/panel/accounts/{A}/tags", form={"csrf_token": csrf, "name": "wholesale"}
        )
        assert made.status_code == 303
        tags, _next = await tags_store.list_tags(db, A, cursor=None, limit=10)
        wholesale = next(t for t in tags if t.name == "wholesale")
        renamed = await admin.post(
            f"/panel/accounts/{A}/tags/{wholesale.id}", form={"csrf_token": csrf, "name": "bulk"}
        )
        assert renamed.status_code == 303
        assert (await tags_store.get_tag(db, A, wholesale.id)).name == "bulk"
        gone = await admin.post(
            f"/panel/accounts/{A}/tags/{wholesale.id}", form={"csrf_token": csrf, "delete": "1"}
        )
        assert gone.status_code == 303
        tags, _next = await tags_store.list_tags(db, A, cursor=None, limit=10)
        assert [t.name for t in tags] == ["vip"]
        # Quick replies.
        page = await (await admin.get("/panel/quick-replies")).get_data(as_text=True)
        assert "/thanks" in page
        bad = await admin.post(
            f"/panel/accounts/{A}/quick-replies",
            form={"csrf_token": csrf, "name": "Hi", "shortcut": "/thanks", "body": "Hello"},
        )
        assert bad.status_code == 409 and 'id="f-qr-shortcut-error"' in await bad.get_data(
            as_text=True
        )
        made = await admin.post(
            f"/panel/accounts/{A}/quick-replies",
            form={
                "csrf_token": csrf,
                "name": "Hi",
                "shortcut": "/hi",
                "body": "Hello {{contact.name}}",
            },
        )
        assert made.status_code == 303
        replies, _next = await quick_replies_store.list_quick_replies(
            db, A, q=None, cursor=None, limit=10
        )
        hi = next(r for r in replies if r.shortcut == "/hi")
        assert hi.body == "Hello {{contact.name}}"
        deleted = await admin.post(
            f"/panel/accounts/{A}/quick-replies/{hi.id}/delete", form={"csrf_token": csrf}
        )
        assert deleted.status_code == 303
        actions = [e.action for e in await auth_store.list_audit(db, before=None, limit=10)]
        assert {"tag.create", "tag.update", "tag.delete"} <= set(actions)
        assert {"quick_reply.create", "quick_reply.delete"} <= set(actions)
        # Agents may not manage them.
        agent = app.test_client()
        status, _text, agent_csrf = await _sign_in(agent, "agent1")
        assert (await agent.get("/panel/tags")).status_code == 403
        assert (await agent.get("/panel/quick-replies")).status_code == 403
        refused = await agent.post(
            f"/panel/accounts/{A}/tags", form={"csrf_token": agent_csrf, "name": "mine"}
        )
        assert refused.status_code == 403

    _run(open_db, db_path, tmp_path, test)
