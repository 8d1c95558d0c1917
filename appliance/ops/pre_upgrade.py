"""What install.sh asks before an upgrade: will the new code migrate the database?

``python -m appliance.ops.pre_upgrade --prefix DIR`` prints ``FROM TO`` (two schema
versions) when the installation's database is older than this code's migrations,
and nothing otherwise (no database yet, already current, or newer: a downgrade, which
the worker refuses by itself). install.sh then takes a backup before anything
migrates (runbook/operations.md, "Upgrading"). ``--schema`` prints the database's
version (install.sh names it when an upgrade failed and is rolled back).
"""

from __future__ import annotations

import argparse
import sys

from appliance.config import Paths, load_settings
from appliance.db.migrate import latest_version, read_schema_version
from appliance.errors import StartupError
from appliance.ops import offline_store


def pending_migration(paths: Paths) -> tuple[int, int] | None:
    """(database version, code version) when the code would migrate the database."""
    try:
        settings = load_settings(paths)
    except StartupError:
        return None
    db_path = settings.database_path
    if not db_path.exists():
        return None
    conn = offline_store.open_read_only(db_path, timeout_s=30)
    try:
        version = read_schema_version(conn)
    finally:
        conn.close()
    latest = latest_version()
    if 0 < version < latest:
        return version, latest
    return None


def schema_version(paths: Paths) -> int:
    """The installation's database schema version (0: no database)."""
    db_path = load_settings(paths).database_path
    if not db_path.exists():
        return 0
    conn = offline_store.open_read_only(db_path, timeout_s=30)
    try:
        return read_schema_version(conn)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.ops.pre_upgrade")
    parser.add_argument("--prefix", default=None)
    parser.add_argument(
        "--schema", action="store_true", help="print the database's schema version instead"
    )
    args = parser.parse_args(argv)
    if args.schema:
        print(schema_version(Paths.discover(args.prefix)))
        return 0
    pending = pending_migration(Paths.discover(args.prefix))
    if pending is not None:
        print(f"{pending[0]} {pending[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
