"""The auto-reply routes (appliance/api/routes/auto_replies.py) on the in-process app
with a real migrated database: managers manage rules and agents get 403, an invalid
regex is a 400 naming it, PATCH re-checks the whole rule, the test endpoint explains
which rule would fire without sending, changes are audited and written as events."""

# Turkish text (dotless i, ...) and full-width letters are the point here.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from quart import Quart

from appliance.api.app import create_app
from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.db.database import Database
from appliance.inbox import quick_replies_store, tags_store
from appliance.inbox.models import Actor
from appliance.inbox.models import Actor as _QrActor
from appliance.messaging import store
from appliance.secrets import Secrets
from tests.unit.conftest import OpenDb, key_owner

QR_ACTOR = _QrActor(principal="user:1", name="test")

A, B = "acc_a", "acc_b"
ALICE = "905551110001@s.whatsapp.net"


def _app(tmp_path: Path, db: Database) -> Quart:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    app = create_app(load_settings(paths, environ={}), secrets)
    state_of(app).db = db
    return app


async def _key(db: Database, role: Role, *accounts: str) -> dict[str, str]:
    async with db.write() as conn:
        _, key, _ = await auth_store.create_api_key(
            conn,
            name=f"test-{role.value}",
            role=role,
            all_accounts=False,
            accounts=list(accounts),
            created_by="test",
            owner_user_id=await key_owner(conn),
            now=time.time(),
        )
    return {"Authorization": f"Bearer {key}"}


Call = Callable[..., Awaitable[tuple[int, Any]]]


def _run(
    tmp_path: Path, open_db: OpenDb, db_path: Path, body: Callable[..., Awaitable[None]]
) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            for account in (A, B):
                async with db.write() as conn:
                    await store.create_account(
                        conn,
                        account_id=account,
                        name=account,
                        engine="sandbox",
                        engine_settings={},
                        settings={},
                        now=1.0,
                    )
            manager = await _key(db, Role.MANAGER, A)
            agent = await _key(db, Role.AGENT, A)
            client = _app(tmp_path / "etc-root", db).test_client()

            async def call(
                method: str, path: str, body: Any = None, headers: dict[str, str] = manager
            ) -> tuple[int, Any]:
                response = await client.open(path, method=method, json=body, headers=headers)
                data = await response.get_json() if response.status_code != 204 else None
                return response.status_code, data

            await body(db, call, agent)

    asyncio.run(main())


RULE = {
    "name": "greeting",
    "match_type": "contains",
    "pattern": "İSTANBUL",
    "actions": [{"type": "reply", "text": "Hoş geldiniz!"}],
}
BASE = f"/api/accounts/{A}/auto-replies"
TEST = f"/api/accounts/{A}/auto-reply-test"


def test_managers_manage_rules_and_agents_get_403(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database, call: Call, agent: dict[str, str]) -> None:
        status, rule = await call("POST", BASE, RULE)
        assert status == 201, rule
        assert rule["id"].startswith("ar_") and rule["account_id"] == A
        assert rule["priority"] == 100 and rule["active"] is True and rule["stop"] is True
        assert rule["cooldown_s"] == 0 and rule["conditions"] == [] and rule["fired_count"] == 0
        assert rule["actions"] == [
            {"type": "reply", "text": "Hoş geldiniz!", "media": None, "quote": False}
        ]
        status, second = await call(
            "POST",
            BASE,
            {
                **RULE,
                "name": "first",
                "priority": 10,
                "match_type": "regex",
                "pattern": r"^(merhaba|selam)\b",
                "conditions": [
                    {"type": "chat_type", "chat": "private"},
                    {"type": "first_message", "idle_s": 86400},
                    {"type": "business_hours", "when": "outside"},
                ],
                "cooldown_s": 600,
            },
        )
        assert status == 201, second
        status, page = await call("GET", BASE)
        assert status == 200 and [r["name"] for r in page["items"]] == ["first", "greeting"]
        status, one = await call("GET", f"{BASE}/{rule['id']}")
        assert status == 200 and one == rule

        status, changed = await call("PATCH", f"{BASE}/{rule['id']}", {"active": False})
        assert status == 200 and changed["active"] is False and changed["name"] == "greeting"
        assert changed["pattern"] == "İSTANBUL" and changed["updated_at"] >= rule["updated_at"]

        for method, path, payload in (
            ("GET", BASE, None),
            ("POST", BASE, RULE),
            ("GET", f"{BASE}/{rule['id']}", None),
            ("PATCH", f"{BASE}/{rule['id']}", {"active": True}),
            ("DELETE", f"{BASE}/{rule['id']}", None),
            ("POST", TEST, {"text": "x"}),
        ):
            status, error = await call(method, path, payload, headers=agent)
            assert status == 403, (method, path, error)
            assert error["error"] and "requestId" in error

        # Another account (outside the manager's grants) and unknown rules: 404.
        status, _ = await call("GET", f"/api/accounts/{B}/auto-replies")
        assert status == 404
        status, _ = await call("GET", f"{BASE}/ar_nope")
        assert status == 404

        status, _ = await call("DELETE", f"{BASE}/{rule['id']}")
        assert status == 204
        status, _ = await call("DELETE", f"{BASE}/{rule['id']}")
        assert status == 404
        status, page = await call("GET", BASE)
        assert [r["name"] for r in page["items"]] == ["first"]

        actions = [
            r["action"]
            for r in await db.fetchall("SELECT action FROM audit_log ORDER BY id")
            if r["action"].startswith("auto_reply.")
        ]
        assert actions == [
            "auto_reply.create",
            "auto_reply.create",
            "auto_reply.update",
            "auto_reply.delete",
        ]
        events = await db.fetchall(
            "SELECT json_extract(data, '$.action') AS action FROM events "
            "WHERE type = 'auto_reply.changed' ORDER BY id"
        )
        assert [e["action"] for e in events] == ["created", "created", "updated", "deleted"]

    _run(tmp_path, open_db, db_path, body)


def test_invalid_input_is_a_400_naming_it(tmp_path: Path, open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, call: Call, agent: dict[str, str]) -> None:
        for pattern in (r"(a)\1", r"foo(?=bar)", r"(unclosed"):
            status, error = await call(
                "POST", BASE, {**RULE, "match_type": "regex", "pattern": pattern}
            )
            assert status == 400, error
            assert error["issues"][0]["path"] == "pattern", error
            assert repr(pattern) in error["issues"][0]["message"], error
        for bad in (
            {**RULE, "match_type": "startswith"},
            {**RULE, "pattern": ""},
            {**RULE, "actions": []},
            {**RULE, "actions": [{"type": "reply"}]},
            {**RULE, "conditions": [{"type": "chat_tags", "all": ["vip"]}]},
            {**RULE, "conditions": [{"type": "chat_type", "chat": "channel"}]},
            {**RULE, "cooldown_s": "60"},
            {**RULE, "active": 1},
            {**RULE, "extra": True},
        ):
            status, error = await call("POST", BASE, bad)
            assert status == 400, (bad, error)
            assert error["issues"], error
        # A media link to a private address is refused like a send's.
        status, error = await call(
            "POST",
            BASE,
            {
                **RULE,
                "actions": [
                    {"type": "reply", "media": {"type": "image", "link": "http://127.0.0.1/x.png"}}
                ],
            },
        )
        assert status == 400 and error["issues"][0]["path"] == "actions.0.media.link", error
        status, error = await call(
            "POST",
            BASE,
            {
                **RULE,
                "actions": [{"type": "reply", "media": {"type": "image", "id": "med_missing123"}}],
            },
        )
        assert status == 422 and error["issues"][0]["path"] == "actions.0.media.id", error

        # PATCH checks the rule it would make: the stored pattern is no regex.
        status, rule = await call("POST", BASE, {**RULE, "pattern": "(50% off"})
        assert status == 201
        status, error = await call("PATCH", f"{BASE}/{rule['id']}", {"match_type": "regex"})
        assert status == 400 and error["issues"][0]["path"] == "pattern", error
        assert "'(50% off'" in error["issues"][0]["message"]
        status, same = await call("GET", f"{BASE}/{rule['id']}")
        assert same["match_type"] == "contains"  # nothing half-written
        status, _ = await call(
            "PATCH", f"{BASE}/{rule['id']}", {"match_type": "regex", "pattern": r"\(50% off"}
        )
        assert status == 200

    _run(tmp_path, open_db, db_path, body)


def test_the_test_endpoint_explains_without_sending(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database, call: Call, agent: dict[str, str]) -> None:
        status, city = await call("POST", BASE, {**RULE, "cooldown_s": 3600})
        assert status == 201
        status, _ = await call(
            "POST",
            BASE,
            {
                **RULE,
                "name": "groups only",
                "priority": 1,
                "pattern": "istanbul",
                "conditions": [{"type": "chat_type", "chat": "group"}],
            },
        )
        assert status == 201
        status, out = await call("POST", TEST, {"text": "istanbul'da mısınız?"})
        assert status == 200, out
        assert [(t["name"], t["outcome"], t["detail"]) for t in out["trace"]] == [
            ("groups only", "condition", "chat_type"),
            ("greeting", "fired", None),
        ]
        assert out["fired"][0]["rule_id"] == city["id"]
        assert out["fired"][0]["replies"][0]["text"]["body"] == "Hoş geldiniz!"
        assert out["inside_business_hours"] is True
        status, out = await call("POST", TEST, {"text": "İSTANBUL", "chat_type": "group"})
        assert [t["outcome"] for t in out["trace"]] == ["fired", "not_reached"]
        status, out = await call("POST", TEST, {"text": "ankara"})
        assert out["fired"] == [] and {t["outcome"] for t in out["trace"]} == {"no_match"}

        # With a chat: its cooldowns count.
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO auto_reply_cooldowns (rule_id, chat_jid, fired_at, message_id) "
                "VALUES (?, ?, ?, 'X')",
                (city["id"], ALICE, time.time()),
            )
        status, out = await call("POST", TEST, {"text": "istanbul", "chat": "+905551110001"})
        assert status == 200 and out["fired"] == []
        assert out["trace"][1]["outcome"] == "cooldown" and out["trace"][1]["detail"]
        status, out = await call(
            "POST",
            TEST,
            {"text": "istanbul", "chat": "+905551110001", "at": time.time() + 7200},
        )
        assert [f["name"] for f in out["fired"]] == ["greeting"]
        status, _ = await call("POST", TEST, {"text": "x", "chat": "nobody"})
        assert status == 400
        # Nothing was sent, and no cooldown started.
        assert await db.scalar("SELECT COUNT(*) FROM messages") == 0
        assert await db.scalar("SELECT COUNT(*) FROM auto_reply_cooldowns") == 1

    _run(tmp_path, open_db, db_path, body)


def test_rules_per_account_are_capped(tmp_path: Path, open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database, call: Call, agent: dict[str, str]) -> None:
        from appliance.automations import auto_reply_store as rules_store

        async with db.write() as conn:
            for n in range(rules_store.MAX_RULES_PER_ACCOUNT):
                await conn.execute(
                    "INSERT INTO auto_reply_rules (id, account_id, name, priority, match_type, "
                    "pattern, actions, created_at, updated_at) VALUES (?, ?, 'r', 1, 'exact', "
                    '\'x\', \'[{"type": "reply", "text": "y"}]\', 1, 1)',
                    (f"ar_{n:016d}", A),
                )
        status, error = await call("POST", BASE, RULE)
        assert status == 409 and "200" in error["error"]

    _run(tmp_path, open_db, db_path, body)


async def _inbox_setup(db: Database) -> dict[str, int]:
    """Tags, quick replies and users on account A (and a tag on B)."""
    by = Actor(principal="user:1", name="setup")
    ids: dict[str, int] = {}
    async with db.write() as conn:
        for account, name in ((A, "VIP"), (A, "blocked"), (B, "other")):
            tag = await tags_store.create_tag(conn, account, name=name, color=None, by=by, now=1.0)
            ids[name] = tag.id
        quick = await quick_replies_store.create_quick_reply(
            conn,
            A,
            name="code",
            shortcut="/code",
            body="Hi {{contact.name|there}}, your code is {{code}}",
            media=None,
            created_by="user:1",
            by=QR_ACTOR,
            now=1.0,
        )
        ids["quick"] = quick.id
        for name, accounts in (("ayse", [A]), ("bora", [B])):
            ids[name] = await auth_store.create_user(
                conn,
                username=name,
                password_hash="x",
                role=Role.AGENT,
                all_accounts=False,
                accounts=accounts,
                now=1.0,
            )
    return ids


def test_inbox_conditions_and_actions_are_checked_against_the_account(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database, call: Call, agent: dict[str, str]) -> None:
        ids = await _inbox_setup(db)
        rule = {
            **RULE,
            "conditions": [
                {"type": "chat_tags", "required": [ids["VIP"]], "excluded": [ids["blocked"]]},
                {"type": "status", "statuses": ["open", "pending"]},
            ],
            "actions": [
                {
                    "type": "quick_reply",
                    "quick_reply": {"id": ids["quick"], "variables": {"code": "7"}},
                },
                {"type": "tags", "add": [ids["blocked"]], "remove": [ids["VIP"]]},
                {"type": "assign", "user_id": ids["ayse"]},
                {"type": "set_status", "status": "snoozed", "snooze_s": 3600},
            ],
        }
        status, created = await call("POST", BASE, rule)
        assert status == 201, created
        assert [a["type"] for a in created["actions"]] == [
            "quick_reply",
            "tags",
            "assign",
            "set_status",
        ]
        # Tags, users and quick replies of another account (or none) are named: 422.
        bad = {
            **rule,
            "conditions": [{"type": "chat_tags", "required": [ids["other"]]}],
            "actions": [
                {"type": "tags", "add": [ids["VIP"], 9999]},
                {"type": "assign", "user_id": ids["bora"]},
                {"type": "quick_reply", "quick_reply": {"id": 4242}},
            ],
        }
        status, error = await call("POST", BASE, bad)
        assert status == 422, error
        assert [i["path"] for i in error["issues"]] == [
            "conditions.0.required.0",
            "actions.0.add.1",
            "actions.1.user_id",
            "actions.2.quick_reply.id",
        ]
        # Variables that do not fit: 400 naming the unknown and the missing one.
        status, error = await call(
            "POST",
            BASE,
            {
                **RULE,
                "actions": [
                    {
                        "type": "quick_reply",
                        "quick_reply": {"id": ids["quick"], "variables": {"typo": "x"}},
                    }
                ],
            },
        )
        assert status == 400, error
        assert sorted(i["path"] for i in error["issues"]) == [
            "actions.0.quick_reply.variables.code",
            "actions.0.quick_reply.variables.typo",
        ]
        # Shape errors: 400 (more than 3 sends, snoozed without snooze_s, a tag both ways).
        for actions in (
            [{"type": "reply", "text": "x"}] * 4,
            [{"type": "set_status", "status": "snoozed"}],
            [{"type": "tags", "add": [1], "remove": [1]}],
        ):
            status, error = await call("POST", BASE, {**RULE, "actions": actions})
            assert status == 400, (actions, error)
        # PATCH checks the references of the merged rule too.
        status, error = await call(
            "PATCH",
            f"{BASE}/{created['id']}",
            {"actions": [{"type": "assign", "user_id": ids["bora"]}]},
        )
        assert status == 422 and error["issues"][0]["path"] == "actions.0.user_id"

    _run(tmp_path, open_db, db_path, body)


def test_the_test_endpoint_reports_inbox_conditions_and_actions_without_doing_them(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database, call: Call, agent: dict[str, str]) -> None:
        ids = await _inbox_setup(db)
        status, rule = await call(
            "POST",
            BASE,
            {
                "name": "vip",
                "match_type": "contains",
                "pattern": "help",
                "conditions": [
                    {"type": "chat_tags", "required": [ids["VIP"]]},
                    {"type": "status", "statuses": ["pending"]},
                ],
                "actions": [
                    {
                        "type": "quick_reply",
                        "quote": True,
                        "quick_reply": {"id": ids["quick"], "variables": {"code": "42"}},
                    },
                    {"type": "tags", "add": [ids["blocked"]], "remove": [ids["VIP"]]},
                    {"type": "assign", "user_id": ids["ayse"]},
                    {"type": "set_status", "status": "snoozed", "snooze_s": 600},
                ],
            },
        )
        assert status == 201, rule
        status, out = await call("POST", TEST, {"text": "help"})
        assert status == 200 and out["fired"] == []
        assert [(t["outcome"], t["detail"]) for t in out["trace"]] == [("condition", "chat_tags")]
        sample = {"text": "help", "chat_tags": [ids["VIP"]], "at": 1_800_000_000}
        status, out = await call("POST", TEST, sample)
        assert [(t["outcome"], t["detail"]) for t in out["trace"]] == [("condition", "status")]
        status, out = await call("POST", TEST, {**sample, "status": "pending"})
        assert status == 200, out
        (fired,) = out["fired"]
        quick, tags, assign, snooze = fired["actions"]
        assert quick["message"] == {
            "to": "(sample chat)",
            "type": "text",
            "text": {"body": "Hi there, your code is 42", "preview_url": False},
            "context": {"message_id": "SAMPLE"},
        }
        assert fired["replies"] == [quick["message"]]
        assert [t["name"] for t in tags["tags_added"]] == ["blocked"]
        assert [t["name"] for t in tags["tags_removed"]] == ["VIP"]
        assert assign["assignee"] == {"id": ids["ayse"], "username": "ayse"}
        assert snooze["status"] == "snoozed" and snooze["snoozed_until"] == 1_800_000_600
        assert all(a["error"] is None for a in fired["actions"])
        # Nothing was done: no message, no tag, no event but the rule's creation.
        assert await db.scalar("SELECT COUNT(*) FROM messages") == 0
        assert await db.scalar("SELECT COUNT(*) FROM chat_tags") == 0
        types = [r["type"] for r in await db.fetchall("SELECT type FROM events ORDER BY id")]
        assert "automation.fired" not in types and "chat.updated" not in types

    _run(tmp_path, open_db, db_path, body)
