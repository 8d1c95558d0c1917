"""Restore a backup archive onto this installation, with a way back at every step.

1. Extract into a staging directory beside the data directory (inside it when it is
   a mount point), checking every file against the manifest, then the database's
   ``integrity_check`` and schema version (newer than this code: refused). Nothing
   of the installation is touched yet.
2. Stop the appliance; read the id sequences of the database being replaced.
3. Swap: the data directory becomes ``<data>.rollback-<stamp>`` and the staged one
   takes its place (two renames on one filesystem); a data directory that is a mount
   point of its own is swapped inside itself instead (``DataSwap``). Settings and
   secrets from the archive replace the current ones only when asked, the current
   ones kept beside.
4. Migrate, raise every id sequence to its floor (``ops.ids``) and record the restore
   epoch, then start and wait for ``/readyz``.
5. On any failure after the swap: stop, put the old data (and settings, secrets) back,
   start again if it was running, and raise ``RestoreFailed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.config import Paths, Settings
from appliance.crypto import DataCipher
from appliance.db.database import open_connection
from appliance.db.migrate import migrate
from appliance.errors import ApplianceError, SecretFileError
from appliance.ops import offline_store
from appliance.ops.archive import (
    RESTORE_LEFTOVERS,
    ArchiveError,
    _sha256_file,
    verify_and_extract,
)
from appliance.ops.crypt import Decryption, decrypt, is_encrypted
from appliance.ops.ids import apply_floors, compute_floors
from appliance.ops.offline_store import sequences
from appliance.secrets import (
    PREVIOUS_DATA_KEY,
    SECRET_NAMES,
    check_secrets_dir,
    load_secrets,
)

# Its own epochs are not floored: they count restores.
UNFLOORED = ("restore_epochs",)


class RestoreFailed(ApplianceError):
    """The restore failed after the swap; the previous data was put back."""


class Control(Protocol):
    """How the restore stops and starts this installation (appliancectl provides it)."""

    def running(self) -> bool: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...

    def wait_ready(self, timeout_s: float) -> bool: ...


@dataclass
class RestoreReport:
    manifest: dict[str, Any]
    rollback_dir: Path | None = None
    floors: dict[str, int] = field(default_factory=dict)
    gap: int = 0
    epoch: int = 0
    notes: list[str] = field(default_factory=list)


def is_own_filesystem(data_dir: Path) -> bool:
    """The data directory is a filesystem of its own (a disk mounted there)."""
    if not data_dir.exists():
        return False
    return os.path.ismount(data_dir) or data_dir.stat().st_dev != data_dir.parent.stat().st_dev


def _move_entries(source: Path, dest: Path) -> None:
    """Every top-level entry of ``source`` into ``dest`` (one filesystem: renames),
    leaving a restore's own directories where they are."""
    for entry in sorted(source.iterdir()):
        if not entry.name.startswith(RESTORE_LEFTOVERS):
            entry.rename(dest / entry.name)


class DataSwap:
    """Where a restore stages the archive, keeps the replaced data and puts failed data,
    and how it swaps them, step by step so that any step can be undone.

    A data directory on its parent's filesystem is swapped by renaming it whole. One
    that is a mount point of its own (a disk mounted at /var/lib/appliance) cannot be
    renamed (EBUSY) and nothing can be renamed onto it from outside (EXDEV): then the
    staging, rollback and failed directories are made inside it, and its entries move.
    """

    def __init__(self, data_dir: Path, stamp: str, *, in_place: bool) -> None:
        self.data_dir = data_dir
        self.in_place = in_place
        if in_place:
            self.staging = data_dir / f".restore-{stamp}"
            self.rollback = data_dir / f".rollback-{stamp}"
            self.failed = data_dir / f".failed-{stamp}"
        else:
            self.staging = data_dir.parent / f".{data_dir.name}.restore-{stamp}"
            self.rollback = data_dir.parent / f"{data_dir.name}.rollback-{stamp}"
            self.failed = data_dir.parent / f"{data_dir.name}.failed-{stamp}"
        # "none" -> "moving_out" -> "moved_out" -> "swapped"; what swap_back undoes.
        self.phase = "none"
        self.kept_previous = False

    def swap_in(self, staged: Path) -> None:
        """The staged data becomes the data directory; the previous one is kept."""
        self.phase = "moving_out"
        if self.in_place:
            self.rollback.mkdir(mode=0o700)
            self.kept_previous = True
            _move_entries(self.data_dir, self.rollback)
        elif self.data_dir.exists():
            self.data_dir.rename(self.rollback)
            self.kept_previous = True
        self.phase = "moved_out"
        if self.in_place:
            _move_entries(staged, self.data_dir)
        else:
            staged.rename(self.data_dir)
        self.phase = "swapped"

    def swap_back(self) -> None:
        """Undo ``swap_in`` from wherever it got to: restored data to ``failed``, the
        previous data back in place."""
        if self.phase == "none":
            return
        if self.in_place:
            if self.phase != "moving_out":  # what is in the directory now was staged
                self.failed.mkdir(mode=0o700)
                _move_entries(self.data_dir, self.failed)
            if self.kept_previous:
                _move_entries(self.rollback, self.data_dir)
                self.rollback.rmdir()
        else:
            if self.phase == "swapped":
                self.data_dir.rename(self.failed)
            if self.kept_previous:
                self.rollback.rename(self.data_dir)
        self.phase = "none"


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _read_sequences(db_path: Path) -> dict[str, int]:
    """The sequences of the database about to be replaced; {} when it is unreadable
    (lost or damaged: the time-based floor still covers it)."""
    if not db_path.exists():
        return {}
    try:
        conn = sqlite3.connect(str(db_path), timeout=30)
        try:
            return sequences(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    os.lchown(root, *owner)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(Path(dirpath) / name, *owner)


async def _migrate(db_path: Path, cipher: DataCipher | None) -> list[int]:
    conn = await open_connection(db_path)
    try:
        return await migrate(conn, cipher=cipher)
    finally:
        await conn.close()


def _record_epoch(
    db_path: Path, floors: dict[str, int], gap: int, manifest: dict[str, Any], archive_sha: str
) -> tuple[int, dict[str, int]]:
    conn = sqlite3.connect(str(db_path), timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            after = apply_floors(conn, {k: v for k, v in floors.items() if k not in UNFLOORED})
            epoch = offline_store.record_restore_epoch(
                conn,
                restored_at=time.time(),
                archive_created_at=float(manifest["created_at"]),
                archive_host=str(manifest.get("host", "")),
                archive_sha256=archive_sha,
                gap=gap,
                floors=after,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return epoch, after
    finally:
        conn.close()


def _data_cipher(paths: Paths, owner: tuple[int, int] | None) -> DataCipher:
    """The data key's cipher, for data migrations. Root restoring a system install
    reads the service user's file after checking it as that user would."""
    if owner is None:
        loaded = load_secrets(paths.secrets_dir)
        return DataCipher(loaded.data_key, previous=loaded.previous_data_keys)
    problems = check_secrets_dir(paths.secrets_dir, uid=owner[0])
    if problems:
        raise SecretFileError("; ".join(problems))
    previous_file = paths.secrets_dir / PREVIOUS_DATA_KEY
    previous = (previous_file.read_text().strip().encode(),) if previous_file.exists() else ()
    key = (paths.secrets_dir / "data-key").read_text().strip().encode()
    return DataCipher(key, previous=previous)


def _replace_file(path: Path, content: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".restore-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    tmp.replace(path)


def restore(
    paths: Paths,
    settings: Settings,
    archive: Path,
    control: Control,
    *,
    with_config: bool = False,
    with_secrets: bool = False,
    decryption: Decryption | None = None,
    owner: tuple[int, int] | None = None,
    ready_timeout_s: float = 90.0,
    say: Callable[[str], None] = print,
    now: float | None = None,
) -> RestoreReport:
    now = time.time() if now is None else now
    stamp = _stamp(now)
    data_dir = settings.data_dir
    swap = DataSwap(data_dir, stamp, in_place=is_own_filesystem(data_dir))
    staging = swap.staging
    decrypted = data_dir.parent / f".{data_dir.name}.restore-{stamp}.tar.gz"
    try:
        plain = archive
        if is_encrypted(archive):
            decrypt(archive, decrypted, decryption or Decryption())
            plain = decrypted
        manifest = verify_and_extract(plain, staging)
        if with_secrets and not manifest.get("includes_secrets"):
            raise ArchiveError(
                "--with-secrets: this archive holds no secrets (made without --include-secrets)"
            )
        if with_config and not (staging / "etc" / "appliance.env").exists():
            raise ArchiveError("--with-config: this archive holds no appliance.env")
        archive_sha = _sha256_file(archive)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        decrypted.unlink(missing_ok=True)
    say(
        f"archive ok: schema {manifest['schema_version']}, taken {manifest['created_at_utc']} "
        f"on {manifest.get('host', '?')}, {len(manifest['files'])} files"
    )
    report = RestoreReport(manifest)
    was_running = control.running()
    if was_running:
        say("stopping the appliance")
        try:
            control.stop()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    etc_rollback = paths.etc / f"rollback-{stamp}"
    moved_env = False
    moved_secrets: list[str] = []
    try:
        # After the stop: the replaced database issues no more ids.
        replaced = _read_sequences(settings.database_path)
        floors = compute_floors(
            manifest["sequences"], replaced, backup_created_at=manifest["created_at"], now=now
        )
        if owner is not None:
            _chown_tree(staging / "data", owner)
        swap.swap_in(staging / "data")
        if swap.kept_previous:
            report.rollback_dir = swap.rollback
        archived_env = staging / "etc" / "appliance.env"
        if with_config or with_secrets:
            etc_rollback.mkdir(mode=0o700)
        if with_config:
            shutil.copy2(paths.env_file, etc_rollback / "appliance.env")
            moved_env = True
            _replace_file(paths.env_file, archived_env.read_bytes(), 0o640)
        elif archived_env.exists():
            # Kept for comparison: this installation's own settings stay in force.
            _replace_file(paths.etc / "appliance.env.from-backup", archived_env.read_bytes(), 0o640)
            report.notes.append(
                f"the archive's settings are in {paths.etc / 'appliance.env.from-backup'}"
            )
        if with_secrets:
            for name in (*SECRET_NAMES, PREVIOUS_DATA_KEY):  # mid-rotation: both keys
                source = staging / "secrets" / name
                if not source.exists():
                    continue
                current = paths.secrets_dir / name
                if current.exists():
                    shutil.copy2(current, etc_rollback / name)
                moved_secrets.append(name)
                _replace_file(current, source.read_bytes(), 0o600)
                if owner is not None:
                    os.chown(current, *owner)
        say("migrating and raising the id sequences")
        asyncio.run(_migrate(settings.database_path, _data_cipher(paths, owner)))
        report.epoch, report.floors = _record_epoch(
            settings.database_path, floors.floors, floors.gap, manifest, archive_sha
        )
        report.gap = floors.gap
        if owner is not None:
            _chown_tree(data_dir, owner)
        say("starting the appliance")
        control.start()
        if not control.wait_ready(ready_timeout_s):
            raise RestoreFailed(f"not ready {ready_timeout_s:.0f}s after the restore")
    except BaseException as exc:
        say(f"restore failed ({exc}); putting the previous data back")
        _roll_back(
            paths,
            control,
            swap,
            etc_rollback=etc_rollback,
            moved_env=moved_env,
            moved_secrets=moved_secrets,
            was_running=was_running,
        )
        if isinstance(exc, RestoreFailed):
            raise
        raise RestoreFailed(f"restore failed and was undone: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _roll_back(
    paths: Paths,
    control: Control,
    swap: DataSwap,
    *,
    etc_rollback: Path,
    moved_env: bool,
    moved_secrets: list[str],
    was_running: bool,
) -> None:
    with contextlib.suppress(Exception):  # not running: nothing to stop
        control.stop()
    swap.swap_back()
    if moved_env:
        _replace_file(paths.env_file, (etc_rollback / "appliance.env").read_bytes(), 0o640)
    for name in moved_secrets:
        kept = etc_rollback / name
        if kept.exists():
            _replace_file(paths.secrets_dir / name, kept.read_bytes(), 0o600)
    if was_running:
        control.start()
