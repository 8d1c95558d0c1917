"""install.sh's question before an upgrade: will the new code migrate the database?"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.db.migrate import latest_version
from appliance.ops.pre_upgrade import main, pending_migration
from tests.unit.test_ops_backup import _install
from tests.unit.test_ops_upgrade import _migrated


def test_an_older_database_is_a_pending_migration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, settings = _install(tmp_path / "inst")
    assert pending_migration(paths) is None  # current
    settings.database_path.unlink()
    assert pending_migration(paths) is None  # no database yet
    _migrated(settings.database_path, target=latest_version() - 2)
    assert pending_migration(paths) == (latest_version() - 2, latest_version())
    assert main(["--prefix", str(paths.prefix)]) == 0
    assert capsys.readouterr().out == f"{latest_version() - 2} {latest_version()}\n"


def test_a_newer_database_is_not_migrated_here(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    conn = sqlite3.connect(settings.database_path)
    with conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', 0)",
            (latest_version() + 1,),
        )
    conn.close()
    assert pending_migration(paths) is None  # the worker refuses a downgrade itself
