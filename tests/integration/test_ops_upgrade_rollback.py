"""install.sh upgrading a running installation to a release whose migration fails puts
everything back by itself: the previous code (venv, supervisord.conf, lock), the
database from the backup it took before migrating; the previous version runs again,
and install.sh says what happened and where the backup is.

The failing release is real, not a switch in the product: the test copies this
checkout (install.sh, pyproject.toml, the lock, appliance/) and adds two migrations,
one that succeeds (a table ``rollback_probe``) and one that fails (an INSERT into a
table that does not exist), so the failed upgrade leaves the database one version
ahead of the old code, which only the backup can undo. install.sh from that copy runs
against the installation made from this checkout."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from appliance.db.migrate import latest_version
from tests.integration.conftest import REPO, bearer, new_api_key, running_appliance

pytestmark = pytest.mark.integration

COPIED = ("install.sh", "pyproject.toml", "README.md", "supervisord.conf", "requirements.lock")


def _failing_release(dest: Path) -> int:
    """A copy of this checkout with two new migrations, the second failing; the
    version of the one that succeeds."""
    dest.mkdir()
    for name in COPIED:
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(
        REPO / "appliance",
        dest / "appliance",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    ok = latest_version() + 1
    migrations = dest / "appliance/db/migrations"
    (migrations / f"{ok:04d}_rollback_probe.sql").write_text(
        "CREATE TABLE rollback_probe (x INTEGER) STRICT;\n"
    )
    (migrations / f"{ok + 1:04d}_rollback_fails.sql").write_text(
        "INSERT INTO no_such_table_rollback VALUES (1);\n"
    )
    return ok


def _query(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(3000)
def test_a_failed_migration_rolls_the_upgrade_back(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    old_version = latest_version()
    with running_appliance(tmp_path_factory, "uprb") as app:
        key = new_api_key(app, "ops", "admin")
        with bearer(app, key) as c:
            made = c.post("/api/accounts", json={"id": "keep", "name": "kept through it"})
            assert made.status_code == 201, made.text
        release = tmp_path / "release"
        _failing_release(release)

        result = subprocess.run(
            ["bash", str(release / "install.sh"), "--prefix", str(app.prefix)],
            capture_output=True,
            text=True,
            timeout=1500,
            cwd=REPO,  # where an operator runs it from: a checkout with the OLD appliance/
        )
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert f"schema goes from version {old_version} to {old_version + 2}" in out, out
        assert "did not start" in out and "rolling back" in out, out
        assert "the previous code is back" in out, out
        assert f"the database is back at schema {old_version}" in out, out
        assert "the upgrade failed and was rolled back" in out, out
        backup = next(
            word
            for line in out.splitlines()
            if "backup before migrating:" in line
            for word in line.split()
            if word.endswith(".tar.gz")
        )
        assert Path(backup).is_file() and backup in result.stderr  # named in the last word

        # The previous version runs again, on the data from before the upgrade.
        app.wait_ready(timeout_s=120)
        assert app.supervisor.getProcessInfo("worker")["statename"] == "RUNNING"
        assert _query(app.db_path, "SELECT MAX(version) FROM schema_migrations") == [(old_version,)]
        assert not _query(
            app.db_path, "SELECT name FROM sqlite_master WHERE name = 'rollback_probe'"
        )
        assert _query(app.db_path, "SELECT name FROM accounts WHERE id = 'keep'") == [
            ("kept through it",)
        ]
        check = app.ctl("check", check=False)
        assert "schema is at version" not in check.stdout + check.stderr  # as the code expects
        installed = list(
            (app.prefix / "opt/appliance/venv/lib").glob(
                "python3*/site-packages/appliance/db/migrations/*rollback*"
            )
        )
        assert installed == []  # the previous code, not the failed release's
        assert not (app.prefix / "opt/appliance/previous").exists()
        with bearer(app, key) as c:  # keys from before still work: same data
            assert c.get("/api/accounts/keep").status_code == 200
