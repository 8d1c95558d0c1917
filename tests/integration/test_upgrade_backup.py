"""install.sh takes a backup before the new code migrates an existing database, and
says where; the archive holds the database at its old schema version."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.db.database import open_connection
from appliance.db.migrate import latest_version, migrate
from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.integration


def _migrate_to(path: Path, target: int) -> None:
    async def run() -> None:
        conn = await open_connection(path)
        try:
            await migrate(conn, target=target)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.timeout(3000)
def test_install_backs_up_an_older_database_before_migrating(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    prefix = Path(tmp_path_factory.mktemp("upg"))
    try:
        first = _install(prefix, "--port", str(free_port()), "--no-start")
        assert "backing it up" not in first.stdout  # nothing to back up yet
        db = prefix / "var/lib/appliance/appliance.db"
        older = latest_version() - 1
        _migrate_to(db, older)  # what the previous release left

        again = _install(prefix, "--no-start")
        assert f"schema goes from version {older} to {latest_version()}" in again.stdout
        found = re.search(r"backup before migrating: (\S+\.tar\.gz)", again.stdout)
        assert found, again.stdout
        archive = Path(found.group(1))
        assert archive.parent == prefix / "var/backups/appliance"
        assert archive.is_file() and archive.stat().st_mode & 0o777 == 0o600
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            manifest = json.load(member)
        assert manifest["schema_version"] == older
        verify = run_ctl(prefix, "check")
        assert f"schema is at version {older}" in verify  # --no-start: not migrated yet
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def run_ctl(prefix: Path, *args: str) -> str:
    result = subprocess.run(
        [str(prefix / "opt/appliance/venv/bin/appliancectl"), "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout + result.stderr


def _install(prefix: Path, *args: str) -> subprocess.CompletedProcess:
    """install.sh, with more time than conftest's run_install: on this loaded machine
    a first install (a venv, every locked dependency) takes most of ten minutes."""
    result = subprocess.run(
        ["bash", str(REPO / "install.sh"), "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if result.returncode != 0:
        raise AssertionError(f"install.sh failed:\n{result.stdout}\n{result.stderr}")
    return result
