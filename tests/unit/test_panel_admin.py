"""The panel's admin screens in the in-process app: users (create, role, grants,
deactivate, delete; the last admin stays one), API keys (the key shown once, revoke), the audit
log with filters; agents and managers get the 403 page."""

from __future__ import annotations

import re
from pathlib import Path

from quart import Quart

from appliance.auth import store as auth_store
from appliance.auth.passwords import hash_password
from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.inbox import store as inbox_store
from appliance.messaging import store
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import ALICE, PASSWORD, A, _run, _sign_in


def test_users_keys_and_audit(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        users = await (await admin.get("/panel/users")).get_data(as_text=True)
        assert 'href="/panel/users/new"' in users
        # Create: bad input next to its field; a taken name is a 409 next to the name.
        bad = await admin.post(
            "/panel/users",
            form={"csrf_token": csrf, "username": "x y", "password": "short", "role": "agent"},
        )
        assert bad.status_code == 400
        text = await bad.get_data(as_text=True)
        assert 'id="f-username-error"' in text and 'id="f-password-error"' in text
        taken = await admin.post(
            "/panel/users",
            form={"csrf_token": csrf, "username": "agent1", "password": PASSWORD, "role": "agent"},
        )
        assert taken.status_code == 409 and "This user name is taken." in await taken.get_data(
            as_text=True
        )
        created = await admin.post(
            "/panel/users",
            form={
                "csrf_token": csrf,
                "username": "mira",
                "password": PASSWORD,
                "role": "agent",
                "accounts": A,
            },
        )
        assert created.status_code == 303
        user_id = int(re.search(r"/panel/users/(\d+)", created.headers["Location"]).group(1))  # type: ignore[union-attr]
        user = await auth_store.get_user(db, user_id)
        assert user.role == Role.AGENT and user.accounts == (A,) and user.active
        # Role and grants.
        saved = await admin.post(
            f"/panel/users/{user_id}",
            form={"csrf_token": csrf, "role": "manager", "all_accounts": "on"},
        )
        assert saved.status_code == 200 and "Saved." in await saved.get_data(as_text=True)
        user = await auth_store.get_user(db, user_id)
        assert user.role == Role.MANAGER and user.all_accounts and user.accounts == ()
        # Deactivate: their sessions end (they are signed out).
        mira = app.test_client()
        assert (await _sign_in(mira, "mira"))[0] == 303
        await admin.post(
            f"/panel/users/{user_id}",
            form={"csrf_token": csrf, "role": "manager", "all_accounts": "on", "active": "false"},
        )
        assert not (await auth_store.get_user(db, user_id)).active
        assert (await mira.get("/panel/inbox")).status_code == 303  # to the sign-in page
        # The last active admin cannot be demoted.
        me = (await auth_store.list_users(db, after=0, limit=10))[0]
        assert me.username == "admin1"
        refused = await admin.post(
            f"/panel/users/{me.id}", form={"csrf_token": csrf, "role": "agent"}
        )
        assert refused.status_code == 409
        assert (await auth_store.get_user(db, me.id)).role == Role.ADMIN
        # API keys: shown once, then only its prefix; revoke.
        bad = await admin.post(
            "/panel/api-keys", form={"csrf_token": csrf, "name": "", "role": "agent"}
        )
        assert bad.status_code == 400 and 'id="f-key-name-error"' in await bad.get_data(
            as_text=True
        )
        made = await admin.post(
            "/panel/api-keys",
            form={"csrf_token": csrf, "name": "crm", "role": "agent", "accounts": A},
        )
        text = await made.get_data(as_text=True)
        assert made.status_code == 201
        key = re.search(r'id="new-key-value">([^<]+)<', text)
        assert key, text
        principal = await auth_store.api_key_principal(db, key.group(1))
        assert principal is not None and principal[0].role == Role.AGENT
        listing = await (await admin.get("/panel/api-keys")).get_data(as_text=True)
        assert key.group(1) not in listing and "crm" in listing
        [row] = await auth_store.list_api_keys(db, after=0, limit=10)
        revoked = await admin.post(f"/panel/api-keys/{row.id}/revoke", form={"csrf_token": csrf})
        assert revoked.status_code == 303
        assert await auth_store.api_key_principal(db, key.group(1)) is None
        # The audit log, filtered.
        everything = await (await admin.get("/panel/audit")).get_data(as_text=True)
        assert "user.create" in everything and "api_key.revoke" in everything
        keys_only = await (await admin.get("/panel/audit?action=api_key.")).get_data(as_text=True)
        assert "api_key.create" in keys_only and "user.create" not in keys_only
        target = await (await admin.get(f"/panel/audit?target=user:{user_id}")).get_data(
            as_text=True
        )
        assert "user.update" in target and "api_key.create" not in target
        nothing = await (await admin.get("/panel/audit?actor=nobody")).get_data(as_text=True)
        assert "Nothing matches." in nothing

    _run(open_db, db_path, tmp_path, test)


async def _user_named(db: Database, name: str) -> auth_store.UserRow | None:
    users = await auth_store.list_users(db, after=0, limit=100)
    return next((u for u in users if u.username == name), None)


def test_delete_a_user_and_the_last_admin_guard(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        agent = await _user_named(db, "agent1")
        assert agent is not None
        agent_client = app.test_client()
        assert (await _sign_in(agent_client, "agent1"))[0] == 303
        async with db.write() as conn:  # a chat assigned to them, and an API key of theirs
            assigned = await inbox_store.change_chat(
                conn,
                A,
                ALICE,
                by=inbox_store.SYSTEM,
                assigns_others=True,
                now=2.0,
                assignee_id=agent.id,
            )
            assert assigned
            await auth_store.create_api_key(
                conn,
                name="theirs",
                role=Role.AGENT,
                all_accounts=False,
                accounts=[A],
                created_by="user:1",
                owner_user_id=agent.id,
                now=1.0,
            )
        # The user's page links to a confirmation naming them and what goes with them.
        page = await (await admin.get(f"/panel/users/{agent.id}")).get_data(as_text=True)
        assert f'href="/panel/users/{agent.id}/delete"' in page
        confirm = await (await admin.get(f"/panel/users/{agent.id}/delete")).get_data(as_text=True)
        assert "Delete the user agent1" in confirm and "become unassigned" in confirm
        assert "This is you" not in confirm
        done = await admin.post(f"/panel/users/{agent.id}/delete", form={"csrf_token": csrf})
        assert done.status_code == 303 and done.headers["Location"] == "/panel/users?deleted=1"
        assert await _user_named(db, "agent1") is None
        assert (await agent_client.get("/panel/inbox")).status_code == 303  # signed out
        # Their chat was given back first (the foreign key's SET NULL inside the DELETE
        # failed on the reports trigger), with its event.
        conv = await inbox_store.conversation(db, A, ALICE)
        assert conv is not None and conv.assignee_id is None
        [event] = [
            e
            for e in await store.events_in_scope(
                db, 0, 500, types=frozenset({"chat.assigned"}), accounts=None, unassigned=False
            )
            if e.data.get("reason") == "user_deleted"
        ]
        assert event.data["from"] == {"id": agent.id, "username": "agent1"}
        assert event.data["to"] is None and event.data["by"]["user_id"] == 1
        [revoked] = await auth_store.list_api_keys(db, after=0, limit=10)
        assert revoked.revoked_at is not None
        actions = [e.action for e in await auth_store.list_audit(db, before=None, limit=20)]
        assert "user.delete" in actions and "api_key.revoke" in actions
        listing = await (await admin.get("/panel/users?deleted=1")).get_data(as_text=True)
        assert "The user was deleted." in listing and "agent1" not in listing
        assert (await admin.get(f"/panel/users/{agent.id}/delete")).status_code == 404
        # The last active admin: refused (409), the reason on the page, nothing deleted.
        me = await _user_named(db, "admin1")
        assert me is not None
        confirm = await (await admin.get(f"/panel/users/{me.id}/delete")).get_data(as_text=True)
        assert "This is you: you will be signed out." in confirm
        refused = await admin.post(f"/panel/users/{me.id}/delete", form={"csrf_token": csrf})
        text = await refused.get_data(as_text=True)
        assert refused.status_code == 409
        assert 'id="delete-error"' in text
        assert "admin1 is the last active administrator: make another user" in text
        assert await _user_named(db, "admin1") is not None
        assert (await admin.get("/panel/users")).status_code == 200  # still signed in
        # In Turkish, the same guard.
        await admin.post("/panel/preferences", form={"csrf_token": csrf, "language": "tr"})
        refused = await admin.post(f"/panel/users/{me.id}/delete", form={"csrf_token": csrf})
        assert refused.status_code == 409
        assert "son etkin yönetici" in await refused.get_data(as_text=True)

    _run(open_db, db_path, tmp_path, test)


def test_admin_screens_refused_to_agents_and_managers(
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
        for name in ("agent1", "manager1"):
            client = app.test_client()
            status, _text, csrf = await _sign_in(client, name)
            assert status == 303
            inbox = await (await client.get("/panel/inbox")).get_data(as_text=True)
            for url in ("/panel/users", "/panel/api-keys", "/panel/audit"):
                assert f'href="{url}"' not in inbox
                response = await client.get(url)
                assert response.status_code == 403, (name, url)
                assert "Not allowed" in await response.get_data(as_text=True)
            assert (await client.get("/panel/users/1")).status_code == 403
            made = await client.post(
                "/panel/api-keys", form={"csrf_token": csrf, "name": "x", "role": "admin"}
            )
            assert made.status_code == 403
            promoted = await client.post(
                "/panel/users/2", form={"csrf_token": csrf, "role": "admin"}
            )
            assert promoted.status_code == 403
            assert (await client.get("/panel/users/1/delete")).status_code == 403
            deleted = await client.post("/panel/users/1/delete", form={"csrf_token": csrf})
            assert deleted.status_code == 403
        assert not await auth_store.list_api_keys(db, after=0, limit=10)
        assert (await auth_store.get_user(db, 2)).role == Role.AGENT

    _run(open_db, db_path, tmp_path, test)


def test_set_a_users_password(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    """As POST /api/users/<id>/password: the API's length rule (and the two fields the
    same) next to the fields with nothing changed; then the user's sessions end, the new
    password signs in and the old one does not, audited ``password.reset``; one's own
    goes through Preferences (a post signs one out); agents and managers get 403."""

    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        _status, _text, csrf = await _sign_in(admin, "admin1")
        agent = await _user_named(db, "agent1")
        assert agent is not None
        agent_client = app.test_client()
        assert (await _sign_in(agent_client, "agent1"))[0] == 303
        page = await (await admin.get(f"/panel/users/{agent.id}")).get_data(as_text=True)
        assert f'action="/panel/users/{agent.id}/password"' in page
        assert "Every session of theirs ends at once" in page and "10 to 256 characters" in page
        url = f"/panel/users/{agent.id}/password"
        short = await admin.post(
            url, form={"csrf_token": csrf, "password": "short", "password_again": "short"}
        )
        text = await short.get_data(as_text=True)
        assert short.status_code == 400 and 'id="f-new-password-error"' in text
        assert "Use 10 to 256 characters." in text
        differ = await admin.post(
            url,
            form={"csrf_token": csrf, "password": "new-password-1", "password_again": "other"},
        )
        text = await differ.get_data(as_text=True)
        assert differ.status_code == 400 and 'id="f-new-password-again-error"' in text
        assert "The two new passwords differ." in text
        assert (await agent_client.get("/panel/inbox")).status_code == 200  # nothing changed
        done = await admin.post(
            url,
            form={
                "csrf_token": csrf,
                "password": "new-password-1",
                "password_again": "new-password-1",
            },
        )
        assert done.status_code == 303  # to the user's page: a reload posts nothing
        location = f"/panel/users/{agent.id}?password=set&ended=1#password-set"
        assert done.headers["Location"] == location
        shown = await admin.get(location.split("#")[0])  # a browser keeps the fragment
        text = await shown.get_data(as_text=True)
        assert 'id="password-set"' in text and "agent1 was signed out of 1 session" in text
        assert "new-password-1" not in text
        assert (await agent_client.get("/panel/inbox")).status_code == 303  # signed out
        assert (await _sign_in(app.test_client(), "agent1"))[0] == 401  # the old one: no
        assert (await _sign_in(app.test_client(), "agent1", "new-password-1"))[0] == 303
        audited = await auth_store.list_audit(db, before=None, limit=20)
        [entry] = [e for e in audited if e.action == "password.reset"]
        assert entry.target == f"user:{agent.id}" and entry.actor_name == "admin1"
        assert "new-password-1" not in str(entry)
        # Turkish: the rule's message translated.
        await admin.post("/panel/preferences", form={"csrf_token": csrf, "language": "tr"})
        short = await admin.post(url, form={"csrf_token": csrf, "password": "x"})
        assert short.status_code == 400
        assert "10 ile 256 arasında karakter" in await short.get_data(as_text=True)  # noqa: RUF001
        await admin.post("/panel/preferences", form={"csrf_token": csrf, "language": "en"})
        # One's own: the page points to Preferences; a post anyway signs one out.
        me = await _user_named(db, "admin1")
        assert me is not None
        mine = await (await admin.get(f"/panel/users/{me.id}")).get_data(as_text=True)
        assert 'href="/panel/preferences"' in mine and 'id="password-form"' not in mine
        own = await admin.post(
            f"/panel/users/{me.id}/password",
            form={"csrf_token": csrf, "password": PASSWORD, "password_again": PASSWORD},
        )
        assert own.status_code == 303 and own.headers["Location"] == "/panel/login"
        assert (await admin.get("/panel/users")).status_code == 303  # signed out
        # Agents and managers: 403, nothing changed.
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
        for name, password in (("agent1", "new-password-1"), ("manager1", PASSWORD)):
            client = app.test_client()
            _s, _t, their_csrf = await _sign_in(client, name, password)
            refused = await client.post(
                f"/panel/users/{me.id}/password",
                form={
                    "csrf_token": their_csrf,
                    "password": "taken-over-1",
                    "password_again": "taken-over-1",
                },
            )
            assert refused.status_code == 403, name
        assert (await _sign_in(app.test_client(), "admin1", "taken-over-1"))[0] == 401

    _run(open_db, db_path, tmp_path, test)
