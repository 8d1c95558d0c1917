"""Backup archives and restore (appliance/ops): consistency, refusal, rollback, id floors."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Paths, Settings, load_settings
from appliance.db.database import open_connection
from appliance.db.migrate import latest_version, migrate
from appliance.ops import ids
from appliance.ops.archive import (
    RESTORE_LEFTOVERS,
    ArchiveError,
    verify_and_extract,
    write_backup,
)
from appliance.ops.restore import DataSwap, RestoreFailed, is_own_filesystem, restore
from appliance.secrets import SECRET_NAMES


def _migrate(db: Path) -> None:
    async def run() -> None:
        conn = await open_connection(db)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(run())


def _install(root: Path, *, data_dir_exists: bool = False) -> tuple[Paths, Settings]:
    paths = Paths(root)
    paths.etc.mkdir(parents=True)
    paths.env_file.write_text("PORT=18080\nAPI_PROCESSES=2\n")
    paths.secrets_dir.mkdir(mode=0o700)
    for name in SECRET_NAMES:
        path = paths.secrets_dir / name
        path.write_text(f"{name}-value-{root.name}-0123456789abcdef\n")
        os.chmod(path, 0o600)
    for directory in (paths.default_run_dir, paths.default_data_dir, paths.default_log_dir):
        directory.mkdir(parents=True, exist_ok=data_dir_exists)
    settings = load_settings(paths, environ={})
    _migrate(settings.database_path)
    settings.media_dir.mkdir()
    (settings.media_dir / "acc_1").mkdir()
    (settings.media_dir / "acc_1" / "med_a").write_bytes(os.urandom(5000))
    (settings.sessions_dir / "acc_1").mkdir(parents=True)
    session = sqlite3.connect(settings.sessions_dir / "acc_1" / "neonize.db")
    session.execute("PRAGMA journal_mode=WAL")
    session.execute("CREATE TABLE keys (k TEXT)")
    session.execute("INSERT INTO keys VALUES ('session-secret')")
    session.commit()
    session.close()
    return paths, settings


def _events(db: Path, n: int, tag: str = "") -> list[int]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        out = []
        for i in range(n):
            with conn:
                cur = conn.execute(
                    "INSERT INTO events (type, account_id, created_at, data) VALUES "
                    "('test', NULL, ?, ?) RETURNING id",
                    (time.time(), json.dumps({"i": i, "tag": tag})),
                )
                out.append(int(cur.fetchone()[0]))
        return out
    finally:
        conn.close()


def _event_ids(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [int(r[0]) for r in conn.execute("SELECT id FROM events ORDER BY id")]
    finally:
        conn.close()


def _tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(("-shm", "-wal", ".writelock")):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def install(tmp_path: Path) -> tuple[Paths, Settings]:
    return _install(tmp_path / "old")


class FakeControl:
    def __init__(self, *, ready: bool = True, running: bool = True) -> None:
        self.ready = ready
        self.is_running = running
        self.calls: list[str] = []

    def running(self) -> bool:
        return self.is_running

    def stop(self) -> None:
        self.calls.append("stop")
        self.is_running = False

    def start(self) -> None:
        self.calls.append("start")
        self.is_running = True

    def wait_ready(self, timeout_s: float) -> bool:
        self.calls.append("wait_ready")
        return self.ready


def test_backup_has_manifest_checksums_mode_0600_and_no_secrets_by_default(
    install: tuple[Paths, Settings], tmp_path: Path
) -> None:
    paths, settings = install
    _events(settings.database_path, 25)
    dest = tmp_path / "out" / "b.tar.gz"
    result = write_backup(paths, settings, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    manifest = result.manifest
    assert manifest["schema_version"] == latest_version()
    assert manifest["counts"]["events"] == 25
    assert manifest["counts"]["media_files"] == 1
    assert manifest["sequences"]["events"] == 25
    assert manifest["includes_secrets"] is False
    with tarfile.open(dest) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        assert "data/appliance.db" in names and "etc/appliance.env" in names
        assert "data/media/acc_1/med_a" in names
        assert "data/sessions/acc_1/neonize.db" in names
        assert not any(n.startswith("secrets/") for n in names)
        assert not any(n.endswith(("-wal", "-shm")) for n in names)
        raw = b"".join(
            tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile()  # type: ignore[union-attr]
        )
    for name in SECRET_NAMES:
        assert (paths.secrets_dir / name).read_text().strip().encode() not in raw
    for member, info in manifest["files"].items():
        assert len(info["sha256"]) == 64, member
    with_secrets = write_backup(paths, settings, tmp_path / "s.tar.gz", include_secrets=True)
    assert with_secrets.manifest["includes_secrets"] is True
    assert {f"secrets/{n}" for n in SECRET_NAMES} <= set(with_secrets.manifest["files"])


def test_backup_is_consistent_while_a_writer_commits(
    install: tuple[Paths, Settings], tmp_path: Path
) -> None:
    """Online: a writer commits events the whole time; the snapshot holds every event
    committed before the backup began, passes integrity_check, and its counts match."""
    paths, settings = install
    before = _events(settings.database_path, 200)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and len(written) < 50_000:
            written.extend(_events(settings.database_path, 5, "during"))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 50 and thread.is_alive():
            time.sleep(0.01)
        result = write_backup(paths, settings, tmp_path / "live.tar.gz")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert written, "the writer committed nothing"
    staging = tmp_path / "staged"
    manifest = verify_and_extract(result.path, staging)
    in_backup = _event_ids(staging / "data" / "appliance.db")
    assert set(before) <= set(in_backup)
    assert manifest["counts"]["events"] == len(in_backup)
    assert in_backup == list(range(1, len(in_backup) + 1))  # a prefix, no gaps


def _damaged(src: Path, dest: Path, how: str) -> Path:
    data = bytearray(src.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":
        data[len(data) // 2] ^= 0xFF
    elif how == "member":  # valid gzip and tar, one file altered: only the checksum tells
        raw = bytearray(gzip.decompress(bytes(data)))
        at = raw.find(b"SQLite format 3")
        raw[at + 5000] ^= 0x01
        data = bytearray(gzip.compress(bytes(raw)))
    dest.write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("how", ["truncated", "flipped", "member"])
def test_damaged_archive_is_refused_and_nothing_changes(
    install: tuple[Paths, Settings], tmp_path: Path, how: str
) -> None:
    paths, settings = install
    _events(settings.database_path, 10)
    good = write_backup(paths, settings, tmp_path / "good.tar.gz").path
    bad = _damaged(good, tmp_path / f"{how}.tar.gz", how)
    _events(settings.database_path, 3)
    before = _tree_digest(paths.prefix)
    control = FakeControl()
    with pytest.raises(ArchiveError):
        restore(paths, settings, bad, control, say=lambda _: None)
    assert control.calls == []  # never stopped
    assert _tree_digest(paths.prefix) == before
    leftovers = [p.name for p in settings.data_dir.parent.iterdir() if p != settings.data_dir]
    assert leftovers == [], leftovers


def test_archive_from_a_newer_schema_is_refused(
    install: tuple[Paths, Settings], tmp_path: Path
) -> None:
    paths, settings = install
    conn = sqlite3.connect(settings.database_path)
    with conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', 0)",
            (latest_version() + 1,),
        )
    conn.close()
    archive = write_backup(paths, settings, tmp_path / "future.tar.gz").path
    with pytest.raises(
        ArchiveError, match=rf"schema version {latest_version() + 1}.*{latest_version()}"
    ):
        verify_and_extract(archive, tmp_path / "staged")


def test_restore_onto_a_fresh_installation_never_reissues_ids(tmp_path: Path) -> None:
    """The old installation keeps issuing ids after the backup, then is lost entirely;
    the new one's ids start above anything it can have issued."""
    old_paths, old = _install(tmp_path / "old")
    committed = _events(old.database_path, 40)
    archive = write_backup(old_paths, old, tmp_path / "b.tar.gz").path
    after_backup = _events(old.database_path, 500)  # seen by clients, then lost
    new_paths, new = _install(tmp_path / "new")
    _events(new.database_path, 3)
    control = FakeControl()
    report = restore(new_paths, new, archive, control, say=lambda _: None)
    assert control.calls == ["stop", "start", "wait_ready"]
    restored = _event_ids(new.database_path)
    assert set(committed) <= set(restored)
    next_ids = _events(new.database_path, 5, "after restore")
    seen = set(committed) | set(after_backup)
    assert min(next_ids) > max(seen) + ids.RESTORE_MARGIN - 1
    assert not seen & set(next_ids)
    assert max(next_ids) < ids.MAX_SAFE_ID
    assert report.epoch == 1 and report.floors["events"] >= 40 + ids.RESTORE_MARGIN
    # Webhook delivery and attempt ids are floored too (AUTOINCREMENT since 0025).
    for table in ("webhook_deliveries", "webhook_attempts", "users", "notes"):
        assert report.floors[table] >= ids.RESTORE_MARGIN, table
    conn = sqlite3.connect(new.database_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        epochs = conn.execute("SELECT epoch, gap FROM restore_epochs").fetchall()
    finally:
        conn.close()
    assert epochs == [(1, report.gap)]
    # The media and engine sessions came along; this installation's settings stayed.
    assert (new.media_dir / "acc_1" / "med_a").read_bytes() == (
        old.media_dir / "acc_1" / "med_a"
    ).read_bytes()
    assert (new.sessions_dir / "acc_1" / "neonize.db").exists()
    assert (new_paths.etc / "appliance.env.from-backup").exists()
    assert report.rollback_dir is not None and (report.rollback_dir / "appliance.db").exists()
    from appliance import cli

    assert "epoch 1 at" in (cli._last_restore(new.database_path) or "")
    assert cli._last_restore(old.database_path) is None


def test_floor_covers_ids_issued_since_the_backup_by_time() -> None:
    floors = ids.compute_floors({"events": 10}, {}, backup_created_at=1000.0, now=1000.0 + 3600)
    assert floors.floors["events"] == 10 + ids.RESTORE_MARGIN + ids.RATE_BOUND * 3600
    # a clock behind the backup's: the margin still applies
    behind = ids.compute_floors({"events": 10}, {"events": 99}, backup_created_at=5000, now=10)
    assert behind.floors["events"] == 99 + ids.RESTORE_MARGIN


def test_failed_restore_puts_the_old_data_back(
    install: tuple[Paths, Settings], tmp_path: Path
) -> None:
    paths, settings = install
    _events(settings.database_path, 7)
    archive = write_backup(paths, settings, tmp_path / "b.tar.gz", include_secrets=True).path
    _events(settings.database_path, 5)
    (paths.secrets_dir / "data-key").write_text("a-new-data-key-0123456789\n")
    before_ids = _event_ids(settings.database_path)
    env_before = paths.env_file.read_text()
    control = FakeControl(ready=False)
    with pytest.raises(RestoreFailed):
        restore(
            paths,
            settings,
            archive,
            control,
            with_secrets=True,
            with_config=True,
            ready_timeout_s=1,
            say=lambda _: None,
        )
    assert control.calls[-1] == "start" and control.is_running
    assert _event_ids(settings.database_path) == before_ids
    assert paths.env_file.read_text() == env_before
    assert (paths.secrets_dir / "data-key").read_text() == "a-new-data-key-0123456789\n"
    failed = [p.name for p in settings.data_dir.parent.iterdir() if ".failed-" in p.name]
    assert len(failed) == 1


def test_with_secrets_needs_an_archive_that_has_them(
    install: tuple[Paths, Settings], tmp_path: Path
) -> None:
    paths, settings = install
    archive = write_backup(paths, settings, tmp_path / "b.tar.gz").path
    control = FakeControl()
    with pytest.raises(ArchiveError, match="holds no secrets"):
        restore(paths, settings, archive, control, with_secrets=True, say=lambda _: None)
    assert control.calls == []


def _rewrite_manifest(src: Path, dest: Path, change: dict[str, object]) -> Path:
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(dest, "w:gz") as out:
        for member, data in members:
            if member.name == "manifest.json":
                data = json.dumps({**json.loads(data), **change}).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dest


@pytest.mark.parametrize(
    "change",
    [{"created_at": "yesterday"}, {"sequences": {"events": -5}}, {"files": []}],
)
def test_malformed_manifest_is_refused_before_anything_stops(
    install: tuple[Paths, Settings], tmp_path: Path, change: dict[str, object]
) -> None:
    paths, settings = install
    good = write_backup(paths, settings, tmp_path / "good.tar.gz").path
    bad = _rewrite_manifest(good, tmp_path / "bad.tar.gz", change)
    control = FakeControl()
    with pytest.raises(ArchiveError, match="malformed"):
        restore(paths, settings, bad, control, say=lambda _: None)
    assert control.calls == []


# -- a data directory that is a mount point of its own ------------------------------------


def _mount_tmpfs(directory: Path) -> None:
    """A real filesystem of its own at ``directory`` (root only); skipped with the
    reason when this machine refuses the mount (tests run as an ordinary user)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"this machine refuses a tmpfs mount: {done.stderr.strip()}")


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Paths, Settings]]:
    """An installation whose data directory is a disk mounted there (here a tmpfs)."""
    root = tmp_path / "mounted"
    data_dir = Paths(root).default_data_dir
    data_dir.mkdir(parents=True)
    _mount_tmpfs(data_dir)
    try:
        yield _install(root, data_dir_exists=True)
    finally:
        subprocess.run(["umount", str(data_dir)], check=True)


def test_restore_into_a_mounted_data_directory_swaps_inside_it(
    mounted: tuple[Paths, Settings], tmp_path: Path
) -> None:
    """A disk mounted at the data directory cannot be renamed (EBUSY) nor renamed onto
    (EXDEV): the restore swaps inside it, and the mount stays."""
    old_paths, old = _install(tmp_path / "old")
    committed = _events(old.database_path, 40)
    archive = write_backup(old_paths, old, tmp_path / "b.tar.gz").path
    paths, settings = mounted
    _events(settings.database_path, 3)
    before = settings.data_dir.stat()
    assert os.path.ismount(settings.data_dir) and is_own_filesystem(settings.data_dir)
    report = restore(paths, settings, archive, FakeControl(), say=lambda _: None)
    after = settings.data_dir.stat()
    assert os.path.ismount(settings.data_dir)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert set(committed) <= set(_event_ids(settings.database_path))
    assert (settings.media_dir / "acc_1" / "med_a").read_bytes() == (
        old.media_dir / "acc_1" / "med_a"
    ).read_bytes()
    rollback = report.rollback_dir
    assert rollback is not None and rollback.parent == settings.data_dir
    assert rollback.name.startswith(".rollback-") and (rollback / "appliance.db").exists()
    assert not [p for p in settings.data_dir.iterdir() if p.name.startswith(".restore-")]
    # The rollback copy inside the data directory is never part of the next backup.
    again = write_backup(paths, settings, tmp_path / "again.tar.gz").path
    with tarfile.open(again) as tar:
        names = tar.getnames()
    assert "data/media/acc_1/med_a" in names
    assert not [n for n in names if ".rollback-" in n]


def test_failed_restore_into_a_mounted_data_directory_puts_the_old_data_back(
    mounted: tuple[Paths, Settings], tmp_path: Path
) -> None:
    paths, settings = mounted
    _events(settings.database_path, 7)
    archive = write_backup(paths, settings, tmp_path / "b.tar.gz").path
    _events(settings.database_path, 5)
    before_ids = _event_ids(settings.database_path)
    control = FakeControl(ready=False)
    with pytest.raises(RestoreFailed):
        restore(paths, settings, archive, control, ready_timeout_s=1, say=lambda _: None)
    assert control.calls[-1] == "start" and os.path.ismount(settings.data_dir)
    assert _event_ids(settings.database_path) == before_ids
    names = [p.name for p in settings.data_dir.iterdir()]
    assert len([n for n in names if n.startswith(".failed-")]) == 1
    assert not [n for n in names if n.startswith((".rollback-", ".restore-"))]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).parts[0].startswith(RESTORE_LEFTOVERS)
    }


@pytest.mark.parametrize("in_place", [True, False])
def test_data_swap_undoes_every_step(tmp_path: Path, in_place: bool) -> None:
    """swap_back puts the previous data back from wherever swap_in got to: done, or
    stopped halfway through moving the previous data out."""
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    (data / "appliance.db").write_bytes(b"old db")
    (data / "media" / "m").write_bytes(b"old media")
    previous = _tree(data)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "appliance.db").write_bytes(b"new db")
    swap = DataSwap(data, "STAMP", in_place=in_place)
    swap.swap_in(staged)
    assert (data / "appliance.db").read_bytes() == b"new db"
    assert _tree(swap.rollback) == previous
    swap.swap_back()
    assert _tree(data) == previous
    assert _tree(swap.failed) == {"appliance.db": b"new db"}
    assert not swap.rollback.exists()
    if in_place:  # halfway: one entry moved out when the next rename failed
        halfway = DataSwap(data, "HALF", in_place=True)
        halfway.phase = "moving_out"
        halfway.rollback.mkdir()
        halfway.kept_previous = True
        (data / "media").rename(halfway.rollback / "media")
        halfway.swap_back()
        assert _tree(data) == previous and not halfway.failed.exists()
