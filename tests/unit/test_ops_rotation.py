"""appliancectl rotate: the data key (re-encryption in batches, resumable after a
crash, unreadable values reported), the session key, the metrics token's grace period,
the admin password. On a temporary installation with a migrated database; the
running-appliance case is tests/integration/test_rotation.py."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from appliance import cli
from appliance.auth.passwords import verify_password
from appliance.config import Paths, Settings
from appliance.crypto import DataCipher
from appliance.engines.cloud.settings import CloudConfig
from appliance.ops import rotation
from appliance.ops.stored_secrets import undecryptable
from appliance.secrets import PREVIOUS_DATA_KEY, PREVIOUS_METRICS_TOKEN, load_secrets
from appliance.webhooks.store import decrypt_header, decrypt_secret, encrypt_secret
from tests.unit.test_ops_backup import _install
from tests.unit.test_ops_stored_secrets import _cloud_account, _endpoint

IDEMPOTENT = 60


class FakeControl:
    def __init__(self, running: bool = False) -> None:
        self.is_running = running
        self.calls: list[str] = []

    def running(self) -> bool:
        return self.is_running

    def restart_worker(self) -> None:
        self.calls.append("worker")

    def restart_api(self) -> None:
        self.calls.append("api")


class Crash(Exception):
    pass


def _key(paths: Paths, name: str = "data-key") -> bytes:
    return (paths.secrets_dir / name).read_text().strip().encode()


def _populate(paths: Paths, settings: Settings) -> None:
    cipher = DataCipher(_key(paths))
    conn = sqlite3.connect(settings.database_path)
    with conn:
        _endpoint(conn, cipher, "wh_a")
        _endpoint(conn, cipher, "wh_b")
        conn.execute(
            "UPDATE webhook_endpoints SET previous_secret = ?, previous_expires_at = ? "
            "WHERE id = 'wh_b'",
            (encrypt_secret(cipher, "wh_b", "whsec_old"), time.time() + 3600),
        )
        _cloud_account(conn, cipher, "acc_c")
        now = time.time()
        for i in range(IDEMPOTENT):
            body = cipher.encrypt(f"answer {i}".encode(), context=f"key:1|k{i}".encode())
            conn.execute(
                "INSERT INTO idempotency_keys (principal, key, fingerprint, state, status, "
                "content_type, body, created_at, expires_at) "
                "VALUES ('key:1', ?, 'f', 'done', 200, 'application/json', ?, ?, ?)",
                (f"k{i}", body, now, now + 86400),
            )
    conn.close()


def _plaintexts(conn: sqlite3.Connection, cipher: DataCipher) -> dict[str, str]:
    """Every stored value decrypted with ``cipher``: raises if one does not open."""
    out = {}
    for endpoint_id, secret, previous, headers in conn.execute(
        "SELECT id, secret, previous_secret, headers FROM webhook_endpoints"
    ):
        out[f"{endpoint_id} secret"] = decrypt_secret(cipher, endpoint_id, secret)
        if previous is not None:
            out[f"{endpoint_id} previous"] = decrypt_secret(cipher, endpoint_id, previous)
        for name, value in json.loads(headers).items():
            out[f"{endpoint_id} {name}"] = decrypt_header(cipher, endpoint_id, name, value)
    for account_id, raw in conn.execute("SELECT id, engine_settings FROM accounts"):
        config = CloudConfig.load(json.loads(raw), cipher)
        out[account_id] = config.access_token + config.app_secret
    for key, body in conn.execute("SELECT key, body FROM idempotency_keys"):
        out[key] = cipher.decrypt(body, context=f"key:1|{key}".encode()).decode()
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_rotation_reencrypts_every_value_and_drops_the_old_key(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    _populate(paths, settings)
    old = _key(paths)
    conn = sqlite3.connect(settings.database_path)
    before = _plaintexts(conn, DataCipher(old))
    conn.close()
    lines: list[str] = []
    report = rotation.rotate_data_key(
        paths.secrets_dir,
        settings.database_path,
        FakeControl(),
        actor="test",
        batch=7,
        say=lines.append,
    )
    new = _key(paths)
    assert report.finished and not report.resumed and new != old
    assert report.reencrypted == 2 + 1 + IDEMPOTENT
    assert sum("re-encrypted" in line for line in lines) >= IDEMPOTENT // 7  # in batches
    assert not (paths.secrets_dir / PREVIOUS_DATA_KEY).exists()
    assert _mode(paths.secrets_dir / "data-key") == 0o600
    conn = sqlite3.connect(settings.database_path)
    try:
        assert _plaintexts(conn, DataCipher(new)) == before  # the new key alone opens all
        assert undecryptable(conn, DataCipher(new)) == []
        assert rotation.not_current(conn, new).reencrypted == 0
        with pytest.raises(Exception):  # noqa: B017 - the old key opens nothing any more
            _plaintexts(conn, DataCipher(old))
        row = conn.execute(
            "SELECT secret, old_key_id, new_key_id, finished_at, reencrypted FROM secret_rotations"
        ).fetchone()
    finally:
        conn.close()
    assert row[:3] == ("data-key", report.old_key_id, report.new_key_id) and row[3] is not None
    assert row[4] == report.reencrypted
    assert old.decode() not in json.dumps(row) and new.decode() not in json.dumps(row)
    assert not [p for p in cli.check_installation(paths) if "rotation" in p]


def test_a_crash_in_the_middle_resumes_with_both_keys_valid(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    _populate(paths, settings)
    old = _key(paths)
    conn = sqlite3.connect(settings.database_path)
    before = _plaintexts(conn, DataCipher(old))
    conn.close()
    batches = 0

    def crash_after_three(line: str) -> None:
        nonlocal batches
        if "re-encrypted" in line:
            batches += 1
            if batches == 3:
                raise Crash

    with pytest.raises(Crash):
        rotation.rotate_data_key(
            paths.secrets_dir,
            settings.database_path,
            FakeControl(),
            actor="test",
            batch=10,
            say=crash_after_three,
        )
    new = _key(paths)
    assert (paths.secrets_dir / PREVIOUS_DATA_KEY).exists()
    assert _mode(paths.secrets_dir / PREVIOUS_DATA_KEY) == 0o600
    loaded = load_secrets(paths.secrets_dir)  # what a process started now holds
    assert loaded.data_key == new and loaded.previous_data_keys == (old,)
    conn = sqlite3.connect(settings.database_path)
    try:
        left = rotation.not_current(conn, new).reencrypted
        assert 0 < left < 2 + 2 + 2 + IDEMPOTENT  # some done, some not: the middle
        assert _plaintexts(conn, DataCipher(new, previous=(old,))) == before
    finally:
        conn.close()
    problems = [p for p in cli.check_installation(paths) if "rotation unfinished" in p]
    assert len(problems) == 1 and f"{left} stored value(s)" in problems[0]
    assert not [p for p in cli.check_installation(paths) if "not readable" in p]

    report = rotation.rotate_data_key(
        paths.secrets_dir, settings.database_path, FakeControl(), actor="test", say=print
    )
    assert report.finished and report.resumed and _key(paths) == new
    conn = sqlite3.connect(settings.database_path)
    try:
        assert _plaintexts(conn, DataCipher(new)) == before
        assert conn.execute("SELECT COUNT(*) FROM secret_rotations").fetchone()[0] == 1
    finally:
        conn.close()


def test_a_crash_before_the_key_swap_uses_the_key_it_made(tmp_path: Path) -> None:
    paths, _ = _install(tmp_path / "inst")
    old = _key(paths)
    (paths.secrets_dir / rotation.NEXT_DATA_KEY).write_text("the-next-key-made-before-crash\n")
    os.chmod(paths.secrets_dir / rotation.NEXT_DATA_KEY, 0o600)
    keys = rotation.stage_data_key(paths.secrets_dir)
    assert keys.resumed and keys.new == b"the-next-key-made-before-crash" and keys.old == old
    assert not (paths.secrets_dir / rotation.NEXT_DATA_KEY).exists()
    again = rotation.stage_data_key(paths.secrets_dir)  # repeated: no change
    assert (again.new, again.old) == (keys.new, keys.old)


def test_a_running_appliance_restarts_worker_then_api(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    control = FakeControl(running=True)
    rotation.rotate_data_key(
        paths.secrets_dir, settings.database_path, control, actor="test", say=print
    )
    assert control.calls == ["worker", "api"]


def test_a_value_no_key_opens_stops_the_rotation_until_accepted(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    _populate(paths, settings)
    conn = sqlite3.connect(settings.database_path)
    with conn:
        _endpoint(conn, DataCipher(b"some other installation's key"), "wh_lost")
    conn.close()
    report = rotation.rotate_data_key(
        paths.secrets_dir, settings.database_path, FakeControl(), actor="test", say=print
    )
    assert not report.finished and report.unreadable == ["webhook wh_lost"]
    assert (paths.secrets_dir / PREVIOUS_DATA_KEY).exists()  # both keys stay valid
    report = rotation.rotate_data_key(
        paths.secrets_dir,
        settings.database_path,
        FakeControl(),
        actor="test",
        accept_unreadable=True,
        say=print,
    )
    assert report.finished and not (paths.secrets_dir / PREVIOUS_DATA_KEY).exists()
    text = "\n".join(cli.check_installation(paths))
    assert "webhook wh_lost" in text and "wh_a" not in text


def test_metrics_token_keeps_the_old_one_for_the_grace_period(tmp_path: Path) -> None:
    paths, _ = _install(tmp_path / "inst")
    old = _key(paths, "metrics-token").decode()
    now = time.time()
    rotation.rotate_metrics_token(paths.secrets_dir, grace_s=3600, now=now)
    loaded = load_secrets(paths.secrets_dir)
    assert loaded.metrics_token != old
    assert loaded.metrics_tokens(now + 10) == (loaded.metrics_token, old)
    assert loaded.metrics_tokens(now + 3601) == (loaded.metrics_token,)
    for name in ("metrics-token", PREVIOUS_METRICS_TOKEN):
        assert _mode(paths.secrets_dir / name) == 0o600
    assert old not in repr(loaded)
    rotation.rotate_metrics_token(paths.secrets_dir, grace_s=0, now=now)
    assert not (paths.secrets_dir / PREVIOUS_METRICS_TOKEN).exists()


def _admin_with_session(settings: Settings) -> None:
    conn = sqlite3.connect(settings.database_path)
    with conn:
        now = time.time()
        conn.execute(
            "INSERT INTO users (id, username, password_hash, role, all_accounts, created_at, "
            "updated_at) VALUES (1, 'admin', 'x', 'admin', 1, ?, ?)",
            (now, now),
        )
        conn.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, last_seen_at, "
            "expires_at) VALUES ('h', 1, 'c', ?, ?, ?)",
            (now, now, now + 3600),
        )
    conn.close()


def _count(settings: Settings, sql: str) -> int:
    conn = sqlite3.connect(settings.database_path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_cli_session_key_says_it_signs_everyone_out_and_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, settings = _install(tmp_path / "inst")
    _admin_with_session(settings)
    old = _key(paths, "session-key")
    prefix = ["--prefix", str(paths.prefix)]
    assert cli.main([*prefix, "rotate", "session-key"]) == 1  # stdin is not a terminal
    out, err = capsys.readouterr()
    assert "signs every user out" in err and "--yes" in err
    assert _key(paths, "session-key") == old
    assert _count(settings, "SELECT COUNT(*) FROM sessions") == 1
    assert cli.main([*prefix, "rotate", "session-key", "--yes"]) == 0
    out, _ = capsys.readouterr()
    assert "1 session(s) ended" in out
    assert _key(paths, "session-key") != old
    assert _mode(paths.secrets_dir / "session-key") == 0o600
    assert _count(settings, "SELECT COUNT(*) FROM sessions") == 0
    assert _count(settings, "SELECT COUNT(*) FROM audit_log WHERE action = 'secret.rotate'") == 1


def test_cli_admin_password_sets_the_file_and_the_admin_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, settings = _install(tmp_path / "inst")
    _admin_with_session(settings)
    assert cli.main(["--prefix", str(paths.prefix), "rotate", "admin-password"]) == 0
    out, err = capsys.readouterr()
    password = out.strip()
    assert "shown once" in err and len(password) >= 12
    assert _key(paths, "admin-password").decode() == password
    assert _mode(paths.secrets_dir / "admin-password") == 0o600
    conn = sqlite3.connect(settings.database_path)
    stored = conn.execute("SELECT password_hash FROM users WHERE id = 1").fetchone()[0]
    conn.close()
    assert verify_password(stored, password)
    assert _count(settings, "SELECT COUNT(*) FROM sessions") == 0


def test_a_backup_during_a_rotation_keeps_both_keys(tmp_path: Path) -> None:
    import tarfile

    from appliance.ops.archive import write_backup

    paths, settings = _install(tmp_path / "inst")
    rotation.stage_data_key(paths.secrets_dir)  # a rotation under way
    result = write_backup(paths, settings, tmp_path / "b.tar.gz", include_secrets=True)
    with tarfile.open(result.path) as tar:
        names = set(tar.getnames())
    assert {"secrets/data-key", f"secrets/{PREVIOUS_DATA_KEY}"} <= names
