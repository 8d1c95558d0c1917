"""``appliancectl support-bundle``: what a supporter needs, with nothing they must not see.

The tarball (mode 0600) holds:

    versions.json    appliance, schema, Python, SQLite, OS, installed packages
    settings.json    the validated settings; credential-like values redacted
    appliance.env    the settings file, redacted line by line
    secrets.txt      which secret files exist, their modes and owners (never values)
    status.json      `appliancectl status --json`
    check.txt        `appliancectl check`
    database.json    every table's row count, queue sizes by queue and state,
                     file sizes, restore epochs
    logs/NAME.log    the last lines of each log, redacted (``ops.redact``)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sqlite3
import stat
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.config import Paths, Settings
from appliance.db.migrate import latest_version, read_schema_version
from appliance.ops import offline_store
from appliance.ops.redact import CREDENTIAL_KEY, SECRET, Known, Redactor
from appliance.secrets import OPTIONAL_SECRET_NAMES, SECRET_NAMES

# How many recent message bodies and contacts are read to redact them exactly.
KNOWN_CONTENT_LIMIT = 20_000


@dataclass(frozen=True)
class BundleResult:
    path: Path
    members: list[str]


def known_values(paths: Paths, settings: Settings) -> Known:
    """Secret values and recent content to redact wherever they appear."""
    known = Known()
    for name in SECRET_NAMES:
        with contextlib.suppress(OSError):
            known.secrets.append((paths.secrets_dir / name).read_text().strip())
    for name in OPTIONAL_SECRET_NAMES:  # during a rotation: the old key, the old token
        with contextlib.suppress(OSError, IndexError):
            known.secrets.append((paths.secrets_dir / name).read_text().split()[0])
    if not settings.database_path.exists():
        return known
    try:
        conn = offline_store.open_read_only(settings.database_path, timeout_s=10)
    except sqlite3.Error:
        return known
    try:
        for value in offline_store.recent_content(conn, KNOWN_CONTENT_LIMIT):
            if isinstance(value, str):
                known.contents.append(value)
                user = value.split("@", 1)[0]
                if "@" in value and len(user) >= 5:
                    known.contents.append(user)
    finally:
        conn.close()
    return known


def versions(settings: Settings) -> dict[str, Any]:
    schema = None
    if settings.database_path.exists():
        try:
            conn = offline_store.open_read_only(settings.database_path, timeout_s=10)
            try:
                schema = read_schema_version(conn)
            finally:
                conn.close()
        except sqlite3.Error:
            schema = None
    packages = sorted(
        f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions()
    )
    return {
        "appliance": __version__,
        "schema_version": schema,
        "code_schema_version": latest_version(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "packages": packages,
    }


def redacted_settings(settings: Settings, redactor: Redactor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.model_dump(mode="json").items():
        if CREDENTIAL_KEY.search(key):
            out[key] = SECRET if value else value
        elif isinstance(value, str):
            out[key] = redactor.line(value)
        else:
            out[key] = value
    return out


def redacted_env(text: str, redactor: Redactor) -> str:
    lines = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and CREDENTIAL_KEY.search(key) and value.strip():
            lines.append(f"{key}={SECRET}")
        else:
            lines.append(redactor.line(line))
    return "\n".join(lines) + "\n"


def secrets_listing(paths: Paths) -> str:
    lines = []
    for name in SECRET_NAMES:
        path = paths.secrets_dir / name
        try:
            st = path.lstat()
        except OSError:
            lines.append(f"{name}: missing")
            continue
        lines.append(f"{name}: mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}")
    return "\n".join(lines) + "\n"


def database_report(settings: Settings) -> dict[str, Any]:
    db_path = settings.database_path
    report: dict[str, Any] = {"path": str(db_path), "files": {}}
    for suffix in ("", "-wal", "-shm"):
        path = db_path.with_name(db_path.name + suffix)
        if path.exists():
            report["files"][path.name] = path.stat().st_size
    if not db_path.exists():
        return report
    try:
        conn = offline_store.open_read_only(db_path, timeout_s=10)
    except sqlite3.Error as exc:
        report["error"] = str(exc)
        return report
    try:
        tables = offline_store.table_names(conn, user_only=True)
        report["tables"] = {
            table: offline_store.row_count(conn, table) for table in tables if "_fts_" not in table
        }
        if "queue_jobs" in tables:
            report["queues"] = [
                {"queue": q, "state": s, "count": n} for q, s, n in offline_store.queue_counts(conn)
            ]
        if "restore_epochs" in tables:
            report["restore_epochs"] = [
                {"epoch": e, "restored_at": r, "archive_created_at": a, "gap": g}
                for e, r, a, g in offline_store.restore_epochs(conn)
            ]
    except sqlite3.Error as exc:
        report["error"] = str(exc)
    finally:
        conn.close()
    return report


def tail_lines(path: Path, lines: int, *, block: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a file, reading from the end."""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        data = b""
        while end > 0 and data.count(b"\n") <= lines:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + data
            end = start
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def write_bundle(
    paths: Paths,
    settings: Settings,
    dest: Path,
    *,
    status: Callable[[], str],
    check: Callable[[], str],
    log_lines: int = 2000,
    now: float | None = None,
) -> BundleResult:
    now = time.time() if now is None else now
    redactor = Redactor(known_values(paths, settings))
    members: dict[str, str] = {
        "versions.json": json.dumps(versions(settings), indent=2),
        "settings.json": json.dumps(redacted_settings(settings, redactor), indent=2),
        "secrets.txt": secrets_listing(paths),
        "status.json": redactor.text(status()),
        "check.txt": redactor.text(check()),
        "database.json": json.dumps(database_report(settings), indent=2),
    }
    if paths.env_file.exists():
        members["appliance.env"] = redacted_env(paths.env_file.read_text(), redactor)
    if settings.log_dir.is_dir():
        for log in sorted(settings.log_dir.glob("*.log")):
            try:
                tail = tail_lines(log, log_lines)
            except OSError as exc:
                members[f"logs/{log.name}"] = f"(not readable: {exc})\n"
                continue
            members[f"logs/{log.name}"] = "\n".join(redactor.line(x) for x in tail) + "\n"
    dest = dest.resolve()
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in members.items():
            body = text.encode()
            info = tarfile.TarInfo(f"support/{name}")
            info.size, info.mtime, info.mode = len(body), int(now), 0o600
            tar.addfile(info, io.BytesIO(body))
    os.chmod(tmp, 0o600)
    tmp.replace(dest)
    return BundleResult(dest, sorted(members))
