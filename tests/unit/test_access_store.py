"""Unit tests for appliance/auth/store.py against a real, migrated SQLite file."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from appliance.auth import store
from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.errors import Conflict, NotFound
from tests.unit.conftest import key_owner

T0 = 1_700_000_000.0
SESSION_KEY = b"k" * 32


async def _user(
    db: Database,
    username: str,
    *,
    role: Role = Role.AGENT,
    all_accounts: bool = False,
    accounts: list[str] | None = None,
) -> int:
    async with db.write() as conn:
        return await store.create_user(
            conn,
            username=username,
            password_hash="$argon2id$fake",
            role=role,
            all_accounts=all_accounts,
            accounts=accounts or [],
            now=T0,
        )


async def _session(db: Database, user_id: int, token: str, *, absolute_s: float = 1000.0) -> str:
    token_hash = store.session_hash(SESSION_KEY, token)
    async with db.write() as conn:
        await store.create_session(
            conn,
            user_id=user_id,
            token_hash=token_hash,
            now=T0,
            absolute_s=absolute_s,
            client_addr="192.0.2.1",
        )
    return token_hash


async def _key(db: Database, **kwargs: Any) -> tuple[int, str, str]:
    args: dict[str, Any] = {
        "name": "crm",
        "role": Role.AGENT,
        "all_accounts": False,
        "accounts": [],
        "created_by": "user:1",
        "now": T0,
    }
    args.update(kwargs)
    async with db.write() as conn:
        args.setdefault("owner_user_id", await key_owner(conn))
        return await store.create_api_key(conn, **args)


# -- users -------------------------------------------------------------------------------


def test_create_and_get_user(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria", role=Role.MANAGER, accounts=["sales"])
            user = await store.get_user(db, uid)
            assert user.username == "maria"
            assert user.role is Role.MANAGER
            assert user.active is True
            assert user.all_accounts is False
            assert user.accounts == ("sales",)
            assert user.created_at == user.updated_at == T0
            with pytest.raises(NotFound):
                await store.get_user(db, uid + 100)

    asyncio.run(body())


def test_duplicate_username_is_a_conflict_case_insensitively(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            await _user(db, "Maria")
            for dup in ("Maria", "maria", "MARIA"):
                with pytest.raises(Conflict) as info:
                    await _user(db, dup)
                assert info.value.http_status == 409
                assert dup in info.value.message
            async with db.write() as conn:
                assert await store.user_count(conn) == 1
            # Login lookup is case-insensitive too.
            found = await store.user_for_login(db, "mARIA")
            assert found is not None and found[1] == "$argon2id$fake" and found[2] is True
            assert await store.user_for_login(db, "nobody") is None

    asyncio.run(body())


def test_grants_are_stored_deduplicated_and_sorted(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria", accounts=["support", "billing", "sales", "billing"])
            assert (await store.get_user(db, uid)).accounts == ("billing", "sales", "support")

            async with db.write() as conn:
                await store.update_user(conn, uid, now=T0 + 1, accounts=["zeta", "alpha"])
            user = await store.get_user(db, uid)
            assert user.accounts == ("alpha", "zeta")
            assert user.updated_at == T0 + 1

            # Only the given fields change; grants untouched when accounts is None.
            async with db.write() as conn:
                await store.update_user(conn, uid, now=T0 + 2, role=Role.MANAGER, all_accounts=True)
            user = await store.get_user(db, uid)
            assert user.role is Role.MANAGER and user.all_accounts is True
            assert user.accounts == ("alpha", "zeta")

            # Another user's grants are separate.
            other = await _user(db, "joe", accounts=["sales"])
            assert (await store.get_user(db, other)).accounts == ("sales",)
            assert [u.username for u in await store.list_users(db, after=0, limit=10)] == [
                "maria",
                "joe",
            ]
            assert [u.id for u in await store.list_users(db, after=uid, limit=10)] == [other]

    asyncio.run(body())


def test_delete_user_cascades_grants_and_sessions(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria", accounts=["sales"])
            await _session(db, uid, "tok")
            async with db.write() as conn:
                await store.delete_user(conn, uid)
            assert await db.scalar("SELECT COUNT(*) FROM user_grants") == 0
            assert await db.scalar("SELECT COUNT(*) FROM sessions") == 0

    asyncio.run(body())


def test_other_active_admins(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            a1 = await _user(db, "root1", role=Role.ADMIN)
            a2 = await _user(db, "root2", role=Role.ADMIN)
            agent = await _user(db, "agent")
            async with db.write() as conn:
                assert await store.other_active_admins(conn, a1) == 1
                assert await store.other_active_admins(conn, a2) == 1
                assert await store.other_active_admins(conn, agent) == 2
                await store.update_user(conn, a2, now=T0, active=False)
                assert await store.other_active_admins(conn, a1) == 0
                assert await store.other_active_admins(conn, agent) == 1
                await store.update_user(conn, agent, now=T0, role=Role.ADMIN)
                assert await store.other_active_admins(conn, a1) == 1

    asyncio.run(body())


# -- sessions ----------------------------------------------------------------------------


def test_session_hash_is_keyed_hmac_not_the_token() -> None:
    h = store.session_hash(SESSION_KEY, "tok")
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert h == store.session_hash(SESSION_KEY, "tok")
    assert h != store.session_hash(b"other key", "tok")
    assert h != store.session_hash(SESSION_KEY, "tok2")
    assert h != hashlib.sha256(b"tok").hexdigest()


def test_session_principal_for_a_live_session(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria", role=Role.MANAGER, accounts=["sales", "support"])
            token_hash = store.session_hash(SESSION_KEY, "tok")
            async with db.write() as conn:
                csrf = await store.create_session(
                    conn,
                    user_id=uid,
                    token_hash=token_hash,
                    now=T0,
                    absolute_s=1000.0,
                    client_addr="192.0.2.1",
                )
            assert isinstance(csrf, str) and len(csrf) >= 32
            found = await store.session_principal(db, token_hash, now=T0 + 10, idle_s=100.0)
            assert found is not None
            who, last_seen = found
            assert last_seen == T0
            assert who.kind == "user" and who.id == uid and who.name == "maria"
            assert who.role is Role.MANAGER and who.all_accounts is False
            assert who.accounts == frozenset({"sales", "support"})
            assert who.session_hash == token_hash
            assert who.csrf_token == csrf
            assert who.key == f"user:{uid}"
            # The raw token is never stored.
            assert await db.scalar("SELECT COUNT(*) FROM sessions WHERE token_hash = 'tok'") == 0
            unknown = store.session_hash(SESSION_KEY, "nope")
            assert await store.session_principal(db, unknown, now=T0, idle_s=100.0) is None

    asyncio.run(body())


def test_session_idle_expiry(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria")
            th = await _session(db, uid, "tok", absolute_s=1000.0)
            assert await store.session_principal(db, th, now=T0 + 99.9, idle_s=100.0)
            assert await store.session_principal(db, th, now=T0 + 100.0, idle_s=100.0) is None
            # Use moves the idle deadline.
            async with db.write() as conn:
                await store.touch_session(conn, th, T0 + 90.0)
            found = await store.session_principal(db, th, now=T0 + 150.0, idle_s=100.0)
            assert found is not None and found[1] == T0 + 90.0
            assert await store.session_principal(db, th, now=T0 + 190.0, idle_s=100.0) is None

    asyncio.run(body())


def test_session_absolute_expiry_despite_activity(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria")
            th = await _session(db, uid, "tok", absolute_s=1000.0)
            async with db.write() as conn:
                await store.touch_session(conn, th, T0 + 950.0)
            assert await store.session_principal(db, th, now=T0 + 999.0, idle_s=100.0)
            assert await store.session_principal(db, th, now=T0 + 1000.0, idle_s=100.0) is None
            assert await store.session_principal(db, th, now=T0 + 1001.0, idle_s=100.0) is None

    asyncio.run(body())


def test_session_of_deactivated_user_is_refused(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria")
            th = await _session(db, uid, "tok")
            assert await store.session_principal(db, th, now=T0 + 1, idle_s=100.0)
            async with db.write() as conn:
                await store.update_user(conn, uid, now=T0 + 1, active=False)
            assert await store.session_principal(db, th, now=T0 + 2, idle_s=100.0) is None
            found = await store.user_for_login(db, "maria")
            assert found is not None and found[2] is False

    asyncio.run(body())


def test_session_sees_role_change_at_once(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria", role=Role.ADMIN)
            th = await _session(db, uid, "tok")
            async with db.write() as conn:
                await store.update_user(conn, uid, now=T0, role=Role.AGENT, accounts=["x"])
            found = await store.session_principal(db, th, now=T0 + 1, idle_s=100.0)
            assert found is not None
            assert found[0].role is Role.AGENT and found[0].accounts == frozenset({"x"})

    asyncio.run(body())


def test_delete_user_sessions_keeps_one(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria")
            other = await _user(db, "joe")
            h1, h2, h3 = [await _session(db, uid, t) for t in ("t1", "t2", "t3")]
            joe = await _session(db, other, "t4")
            async with db.write() as conn:
                assert await store.delete_user_sessions(conn, uid, keep=h1) == 2
            alive = {
                h
                for h in (h1, h2, h3, joe)
                if await store.session_principal(db, h, now=T0 + 1, idle_s=100.0)
            }
            assert alive == {h1, joe}
            async with db.write() as conn:
                assert await store.delete_user_sessions(conn, uid) == 1
            assert await store.session_principal(db, h1, now=T0 + 1, idle_s=100.0) is None
            assert await store.session_principal(db, joe, now=T0 + 1, idle_s=100.0)

    asyncio.run(body())


def test_delete_session_and_purge(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            uid = await _user(db, "maria")
            h1 = await _session(db, uid, "t1", absolute_s=1000.0)
            h2 = await _session(db, uid, "t2", absolute_s=1000.0)
            h3 = await _session(db, uid, "t3", absolute_s=1000.0)
            async with db.write() as conn:
                await store.delete_session(conn, h1)
                await store.touch_session(conn, h3, T0 + 50.0)
            assert await store.session_principal(db, h1, now=T0 + 1, idle_s=100.0) is None
            async with db.write() as conn:
                # h2 is idle (last seen T0), h3 was seen at T0 + 50.
                assert await store.purge_sessions(conn, now=T0 + 120.0, idle_s=100.0) == 1
            assert await store.session_principal(db, h2, now=T0 + 1, idle_s=100.0) is None
            assert await store.session_principal(db, h3, now=T0 + 120.0, idle_s=100.0)

    asyncio.run(body())


# -- API keys ----------------------------------------------------------------------------

KEY_RE = re.compile(r"^apk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")


def test_new_api_key_format() -> None:
    seen = set()
    for _ in range(50):
        key, prefix, digest = store.new_api_key()
        match = KEY_RE.fullmatch(key)
        assert match, key
        assert match.group(1) == prefix
        assert digest == hashlib.sha256(key.encode()).hexdigest()
        assert store.split_api_key(key) == prefix
        seen.add(key)
    assert len(seen) == 50


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "apk_",
        "apk__secret",
        "apk_0123456789ab",  # no separator, no secret
        "apk_0123456789a_secret",  # 11-character prefix
        "apk_0123456789abc_secret",  # 13-character prefix
        "APK_0123456789ab_secret",
        "key_0123456789ab_secret",
        "0123456789ab_secret",
        " apk_0123456789ab_secret",
        "apk_0123456789ab_" + "s" * 200,  # too long
    ],
)
def test_split_api_key_rejects_malformed(malformed: str) -> None:
    assert store.split_api_key(malformed) is None


def test_api_key_principal_valid(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            key_id, key, prefix = await _key(
                db, name="crm", role=Role.MANAGER, accounts=["sales", "billing"]
            )
            assert KEY_RE.fullmatch(key) and key.split("_")[1] == prefix
            found = await store.api_key_principal(db, key)
            assert found is not None
            who, last_used = found
            assert last_used is None
            assert who.kind == "key" and who.id == key_id and who.name == "crm"
            assert who.role is Role.MANAGER
            assert who.accounts == frozenset({"sales", "billing"})
            assert who.session_hash is None and who.csrf_token is None
            assert who.key == f"key:{key_id}"

            row = await store.get_api_key(db, key_id)
            assert row.prefix == prefix and row.accounts == ("billing", "sales")
            assert row.created_by == "user:1" and row.revoked_at is None
            # Only a hash is stored.
            stored = await db.scalar("SELECT secret_hash FROM api_keys WHERE id = ?", (key_id,))
            assert stored == hashlib.sha256(key.encode()).hexdigest()
            assert key not in stored

            async with db.write() as conn:
                await store.mark_api_key_used(conn, key_id, T0 + 5)
            found = await store.api_key_principal(db, key)
            assert found is not None and found[1] == T0 + 5

    asyncio.run(body())


def test_api_key_principal_wrong_secret_with_right_prefix(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            _, key, prefix = await _key(db)
            head = f"apk_{prefix}_"
            secret = key[len(head) :]
            wrong = head + ("A" if secret[0] != "A" else "B") + secret[1:]
            assert store.split_api_key(wrong) == prefix
            assert await store.api_key_principal(db, wrong) is None
            assert await store.api_key_principal(db, head + "x") is None
            assert await store.api_key_principal(db, key + "x") is None
            assert await store.api_key_principal(db, key[:-1]) is None
            # A well-formed key whose prefix is unknown.
            other, _, _ = store.new_api_key()
            assert await store.api_key_principal(db, other) is None
            assert await store.api_key_principal(db, "garbage") is None
            assert await store.api_key_principal(db, key) is not None

    asyncio.run(body())


def test_revoked_api_key_is_refused(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            key_id, key, _ = await _key(db)
            keep_id, keep, _ = await _key(db, name="other")
            async with db.write() as conn:
                assert await store.revoke_api_key(conn, key_id, T0 + 1) is True
                assert await store.revoke_api_key(conn, key_id, T0 + 2) is False  # already
                assert await store.revoke_api_key(conn, key_id + 100, T0 + 2) is False
            assert await store.api_key_principal(db, key) is None
            assert (await store.get_api_key(db, key_id)).revoked_at == T0 + 1
            assert await store.api_key_principal(db, keep) is not None
            assert [r.id for r in await store.list_api_keys(db, after=0, limit=10)] == [
                key_id,
                keep_id,
            ]
            with pytest.raises(NotFound):
                await store.get_api_key(db, 999)

    asyncio.run(body())


# -- audit -------------------------------------------------------------------------------


def test_audit_newest_first_with_before_cursor(db_path: Path, open_db: Any) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                for i in range(5):
                    await store.audit(
                        conn,
                        action=f"a{i}",
                        now=T0 + i,
                        actor="user:1",
                        actor_name="maria",
                        target=f"user:{i}",
                        details={"i": i, "nested": {"ok": True}},
                        client_addr="192.0.2.1",
                        request_id=f"req-{i}",
                    )
                await store.audit(conn, action="bare", now=T0 + 9)

            everything = await store.list_audit(db, before=None, limit=100)
            assert [e["action"] for e in everything] == ["bare", "a4", "a3", "a2", "a1", "a0"]
            ids = [e["id"] for e in everything]
            assert ids == sorted(ids, reverse=True)
            bare = everything[0]
            assert bare["details"] == {} and bare["actor"] is None
            a4 = everything[1]
            assert a4["details"] == {"i": 4, "nested": {"ok": True}}
            assert a4["at"] == T0 + 4 and a4["actor_name"] == "maria"
            assert a4["target"] == "user:4" and a4["request_id"] == "req-4"

            first = await store.list_audit(db, before=None, limit=3)
            assert [e["action"] for e in first] == ["bare", "a4", "a3"]
            second = await store.list_audit(db, before=first[-1]["id"], limit=3)
            assert [e["action"] for e in second] == ["a2", "a1", "a0"]
            assert await store.list_audit(db, before=second[-1]["id"], limit=3) == []

    asyncio.run(body())
