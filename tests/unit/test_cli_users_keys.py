"""appliancectl users list|create|deactivate and api-keys list|create, on a temporary
installation directory with a migrated database (the commands never need the processes)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest

from appliance import cli
from appliance.auth import store
from appliance.auth.passwords import verify_password
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.db.database import Database
from appliance.db.migrate import migrate


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True)
    paths.env_file.write_text("", encoding="utf-8")
    settings = load_settings(paths, environ={})
    settings.data_dir.mkdir(parents=True)

    async def setup() -> None:
        db = await Database.open(settings.database_path)
        try:
            await migrate(db.writer)
            async with db.write() as conn:
                await store.create_user(
                    conn,
                    username="admin",
                    password_hash="x",
                    role=Role.ADMIN,
                    all_accounts=True,
                    accounts=[],
                    now=time.time(),
                )
        finally:
            await db.close()

    asyncio.run(setup())
    return tmp_path


def ctl(prefix: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["--prefix", str(prefix), *args])
    out, err = capsys.readouterr()
    return code, out, err


def query(prefix: Path, sql: str, *params: object) -> list[tuple]:
    settings = load_settings(Paths(prefix), environ={})

    async def run() -> list[tuple]:
        db = await Database.open(settings.database_path)
        try:
            return [tuple(r) for r in await db.fetchall(sql, params)]
        finally:
            await db.close()

    return asyncio.run(run())


def test_users_list_has_a_header_row(prefix: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = ctl(prefix, capsys, "users", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split("\t") == ["ID", "USERNAME", "ROLE", "ACCOUNTS", "STATE"]
    assert lines[1].split("\t") == ["1", "admin", "admin", "all", "active"]


def test_users_create_prints_a_generated_password(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = ctl(
        prefix, capsys, "users", "create", "erin", "--role", "agent", "--account", "sales"
    )
    assert code == 0, err
    password = out.strip()
    assert len(password) >= 16 and "generated" in err
    (stored,) = query(prefix, "SELECT password_hash, role FROM users WHERE username = 'erin'")
    assert verify_password(stored[0], password) and stored[1] == "agent"
    assert query(prefix, "SELECT account_id FROM user_grants") == [("sales",)]
    _, listed, _ = ctl(prefix, capsys, "users", "list")
    assert "erin\tagent\tsales\tactive" in listed
    assert ("user.create",) in query(prefix, "SELECT action FROM audit_log")
    # A second user of the same name is refused.
    code, _, err = ctl(prefix, capsys, "users", "create", "ERIN", "--role", "agent")
    assert code == 1 and "already exists" in err


def test_users_create_reads_the_password_from_stdin(
    prefix: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("frank-password-1\n"))
    code, out, _ = ctl(
        prefix, capsys, "users", "create", "frank", "--role", "manager", "--password-stdin"
    )
    assert code == 0 and out == ""
    (stored,) = query(prefix, "SELECT password_hash FROM users WHERE username = 'frank'")
    assert verify_password(stored[0], "frank-password-1")


def test_users_deactivate_ends_sessions_and_revokes_keys(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl(prefix, capsys, "users", "create", "gina", "--role", "admin")[0] == 0
    code, _, err = ctl(
        prefix, capsys, "api-keys", "create", "gina-key", "--role", "admin", "--user", "gina"
    )
    assert code == 0, err
    (gina,) = query(prefix, "SELECT id FROM users WHERE username = 'gina'")
    settings = load_settings(Paths(prefix), environ={})

    async def session() -> None:
        db = await Database.open(settings.database_path)
        try:
            async with db.write() as conn:
                await store.create_session(
                    conn,
                    user_id=gina[0],
                    token_hash="t",
                    now=time.time(),
                    absolute_s=600,
                    client_addr=None,
                )
        finally:
            await db.close()

    asyncio.run(session())
    code, out, err = ctl(prefix, capsys, "users", "deactivate", "gina")
    assert code == 0, err
    assert "1 session" in out and "1 API key" in out
    assert query(prefix, "SELECT active FROM users WHERE id = ?", gina[0]) == [(0,)]
    assert query(prefix, "SELECT * FROM sessions") == []
    assert query(prefix, "SELECT revoked_at IS NOT NULL FROM api_keys") == [(1,)]
    actions = [a for (a,) in query(prefix, "SELECT action FROM audit_log ORDER BY id")]
    assert actions[-2:] == ["user.update", "api_key.revoke"]
    # The last active admin cannot be deactivated.
    code, _, err = ctl(prefix, capsys, "users", "deactivate", "admin")
    assert code == 1 and "last active admin" in err
    code, _, err = ctl(prefix, capsys, "users", "deactivate", "nobody")
    assert code == 1 and "no user named" in err


def test_api_keys_belong_to_the_named_user_and_list_shows_the_owner(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl(prefix, capsys, "users", "create", "hal", "--role", "manager")[0] == 0
    code, key, _ = ctl(prefix, capsys, "api-keys", "create", "default-owner", "--role", "admin")
    assert code == 0 and key.startswith("apk_")
    code, _, _ = ctl(
        prefix, capsys, "api-keys", "create", "hals", "--role", "agent", "--user", "hal"
    )
    assert code == 0
    code, _, err = ctl(
        prefix, capsys, "api-keys", "create", "x", "--role", "agent", "--user", "nobody"
    )
    assert code == 1 and "no active user named 'nobody'" in err
    code, out, _ = ctl(prefix, capsys, "api-keys", "list")
    assert code == 0
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0] == ["ID", "PREFIX", "NAME", "ROLE", "GRANTS", "OWNER", "STATE"]
    assert [(row[2], row[5], row[6]) for row in lines[1:]] == [
        ("default-owner", "admin", "active"),
        ("hals", "hal", "active"),
    ]
