"""Backup archives: a gzip'd tar with ``manifest.json`` first, then the files.

Members:

    manifest.json          versions, schema version, counts, id sequences, checksums
    data/appliance.db      an online snapshot (SQLite's backup API: one read
                           transaction, consistent while the appliance writes; WAL safe)
    data/<anything else>   media, engine sessions (SQLite files among them snapshotted
                           the same way), whatever else lives in the data directory
    etc/appliance.env      the settings
    secrets/<name>         only with --include-secrets

Every file's size and SHA-256 are in the manifest; ``verify_and_extract`` refuses an
archive whose files do not match it exactly (missing, extra, changed, truncated) or
whose database fails ``PRAGMA integrity_check``, before anything is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import socket
import sqlite3
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.config import Paths, Settings
from appliance.db.migrate import latest_version, read_schema_version
from appliance.errors import ApplianceError
from appliance.ops import offline_store
from appliance.ops.offline_store import sequences
from appliance.secrets import PREVIOUS_DATA_KEY, SECRET_NAMES

if TYPE_CHECKING:
    from appliance.ops.crypt import Encryption

FORMAT = 1
MANIFEST = "manifest.json"
DB_MEMBER = "data/appliance.db"
SQLITE_HEADER = b"SQLite format 3\x00"
# Beside the database: its WAL and shared memory (the snapshot replaces them), the
# write lock file (empty, recreated by every process), the worker's disk reserve (zeros,
# ops/storage_watch.py).
# What a restore leaves at the top of a data directory that is a mount point of its own
# (ops/restore.py swaps inside it): never part of a backup.
RESTORE_LEFTOVERS = (".restore-", ".rollback-", ".failed-")
SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal", ".writelock", "disk-reserve", "disk-reserve.tmp")
COUNTED_TABLES = (
    "accounts",
    "messages",
    "chats",
    "contacts",
    "media",
    "events",
    "webhook_endpoints",
    "webhook_deliveries",
    "users",
    "api_keys",
    "queue_jobs",
)


class ArchiveError(ApplianceError):
    """The archive is unreadable, incomplete, altered, or not restorable here."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: dict[str, Any]
    size: int


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == SQLITE_HEADER
    except OSError:
        return False


def snapshot_sqlite(source: Path, dest: Path, *, busy_timeout_ms: int = 30_000) -> None:
    """A consistent copy of a live SQLite database (any journal mode), as one file in
    rollback-journal mode, checked with ``PRAGMA integrity_check``."""
    src = offline_store.open_read_only(source, timeout_s=busy_timeout_ms / 1000)
    try:
        dst = sqlite3.connect(str(dest))
        try:
            # pages=-1: the whole database in one step, inside one read transaction.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
            result = offline_store.integrity(dst)
            if result != "ok":
                raise ArchiveError(f"snapshot of {source} failed integrity_check: {result}")
        finally:
            dst.close()
    finally:
        src.close()


def database_summary(db_path: Path) -> dict[str, Any]:
    conn = offline_store.open_read_only(db_path)
    try:
        tables = set(offline_store.table_names(conn))
        counts = {
            table: offline_store.row_count(conn, table)
            for table in COUNTED_TABLES
            if table in tables
        }
        return {
            "schema_version": read_schema_version(conn),
            "counts": counts,
            "sequences": sequences(conn),
        }
    finally:
        conn.close()


def _data_files(data_dir: Path, exclude: list[Path]) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(data_dir):
        here = Path(root)
        dirs[:] = sorted(
            d
            for d in dirs
            if (here / d).resolve() not in exclude
            and not (here == data_dir and d.startswith(RESTORE_LEFTOVERS))
        )
        for name in sorted(names):
            path = here / name
            if path == data_dir / "appliance.db" or name.endswith(SKIPPED_SUFFIXES):
                continue
            if path.is_symlink() or not path.is_file():
                continue
            found.append(path)
    return found


def write_backup(
    paths: Paths,
    settings: Settings,
    dest: Path,
    *,
    include_secrets: bool = False,
    encryption: Encryption | None = None,
    now: float | None = None,
) -> BackupResult:
    """Write a backup archive to ``dest`` (mode 0600, written beside it then renamed);
    with ``encryption``, the age-encrypted archive (``ops.crypt``)."""
    now = time.time() if now is None else now
    db_path = settings.database_path
    if not db_path.exists():
        raise ArchiveError(f"no database at {db_path}; start the appliance once first")
    dest = dest.resolve()
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=dest.parent) as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o700)
        staged: list[tuple[str, Path]] = []
        snap = tmp / "appliance.db"
        snapshot_sqlite(db_path, snap, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
        staged.append((DB_MEMBER, snap))
        summary = database_summary(snap)
        exclude = [dest.parent.resolve(), tmp.resolve()]
        media_files = 0
        for index, path in enumerate(_data_files(settings.data_dir, exclude)):
            member = "data/" + path.relative_to(settings.data_dir).as_posix()
            if _is_sqlite(path):
                copy = tmp / f"sqlite-{index}"
                with contextlib.suppress(FileNotFoundError):
                    snapshot_sqlite(path, copy)
                    staged.append((member, copy))
                continue
            if path.is_relative_to(settings.media_dir):
                media_files += 1
            staged.append((member, path))
        if paths.env_file.exists():
            staged.append(("etc/appliance.env", paths.env_file))
        if include_secrets:
            # The previous data key too, during a rotation: values not yet re-encrypted.
            for name in (*SECRET_NAMES, PREVIOUS_DATA_KEY):
                secret = paths.secrets_dir / name
                if secret.exists():
                    staged.append((f"secrets/{name}", secret))
        files: dict[str, dict[str, Any]] = {}
        for member, path in staged:
            try:
                files[member] = {"size": path.stat().st_size, "sha256": _sha256_file(path)}
            except FileNotFoundError:  # a media file retention removed meanwhile
                continue
        staged = [(m, p) for m, p in staged if m in files]
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "created_at": now,
            "created_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "host": socket.gethostname(),
            "appliance_version": __version__,
            "code_schema_version": latest_version(),
            "schema_version": summary["schema_version"],
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "includes_secrets": include_secrets,
            "counts": {**summary["counts"], "media_files": media_files},
            "sequences": summary["sequences"],
            "files": files,
        }
        out_tmp = tmp / "archive.tar.gz"
        fd = os.open(out_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar,
        ):
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(body), int(now), 0o600
            tar.addfile(info, io.BytesIO(body))
            for member, path in staged:
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = files[member]["size"], int(now), 0o600
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(out_tmp, 0o600)
        if encryption is not None and encryption.enabled:
            from appliance.ops.crypt import encrypt

            sealed = tmp / "archive.tar.gz.age"
            encrypt(out_tmp, sealed, encryption)
            out_tmp = sealed
        out_tmp.replace(dest)
    return BackupResult(dest, manifest, dest.stat().st_size)


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ArchiveError(f"archive member {name!r} has an unsafe path")
    if path.parts[0] not in ("data", "etc", "secrets") and name != MANIFEST:
        raise ArchiveError(f"archive member {name!r} is not part of a backup")
    return path


def _check_manifest(manifest: dict[str, Any]) -> None:
    """The fields a restore relies on, with their types (the archive is input)."""
    ok = (
        isinstance(manifest.get("created_at"), int | float)
        and isinstance(manifest.get("created_at_utc"), str)
        and isinstance(manifest.get("schema_version"), int)
        and isinstance(manifest.get("includes_secrets"), bool)
        and isinstance(manifest.get("files"), dict)
        and all(
            isinstance(v, dict)
            and isinstance(v.get("size"), int)
            and isinstance(v.get("sha256"), str)
            for v in manifest["files"].values()
        )
        and isinstance(manifest.get("sequences"), dict)
        and all(
            isinstance(k, str) and isinstance(v, int) and v >= 0
            for k, v in manifest["sequences"].items()
        )
    )
    if not ok:
        raise ArchiveError("the archive's manifest is malformed")


def verify_and_extract(archive: Path, staging: Path) -> dict[str, Any]:
    """Check every file of ``archive`` against its manifest while extracting into
    ``staging`` (a new directory), then the database's integrity and schema version.
    Raises ArchiveError, leaving only ``staging`` to remove, on any mismatch."""
    staging.mkdir(mode=0o700)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise ArchiveError(f"{archive} is not a backup archive (no {MANIFEST} first)")
            fh = tar.extractfile(first)
            assert fh is not None
            manifest = json.loads(fh.read())
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ArchiveError(f"{archive}: unknown archive format")
            _check_manifest(manifest)
            expected: dict[str, dict[str, Any]] = manifest["files"]
            seen: set[str] = set()
            while (member := tar.next()) is not None:
                path = _safe_member(member.name)
                if not member.isfile():
                    raise ArchiveError(f"archive member {member.name!r} is not a regular file")
                if member.name not in expected or member.name in seen:
                    raise ArchiveError(f"archive member {member.name!r} is not in the manifest")
                target = staging.joinpath(*path.parts)
                target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                digest = hashlib.sha256()
                size = 0
                with target.open("xb") as out:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
                want = expected[member.name]
                if size != want["size"] or digest.hexdigest() != want["sha256"]:
                    raise ArchiveError(f"{member.name}: checksum does not match the manifest")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, KeyError) as exc:
        raise ArchiveError(f"{archive} is damaged or truncated: {exc}") from exc
    missing = sorted(set(expected) - seen)
    if missing:
        raise ArchiveError(f"{archive} is incomplete: missing {', '.join(missing[:5])}")
    db = staging / "data" / "appliance.db"
    if not db.exists():
        raise ArchiveError(f"{archive} holds no database")
    try:
        conn = offline_store.open_read_only(db)
        try:
            integrity = offline_store.integrity(conn)
            version = read_schema_version(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ArchiveError(f"the archived database cannot be read: {exc}") from exc
    if integrity != "ok":
        raise ArchiveError(f"the archived database failed integrity_check: {integrity}")
    if version != manifest.get("schema_version"):
        raise ArchiveError("the archived database's schema version differs from the manifest")
    if version > latest_version():
        raise ArchiveError(
            f"the archive is at schema version {version}, newer than this code's "
            f"{latest_version()} (appliance {__version__}); install the newer code first"
        )
    return manifest


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
