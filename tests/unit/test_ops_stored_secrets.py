"""`appliancectl check` names the stored secrets the data key cannot open."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from appliance import cli
from appliance.crypto import DataCipher
from appliance.engines.cloud.settings import store_settings
from appliance.webhooks.store import encrypt_header, encrypt_secret
from tests.unit.test_ops_backup import _install


def _endpoint(conn: sqlite3.Connection, cipher: DataCipher, endpoint_id: str) -> None:
    now = time.time()
    headers = {"X-Api-Token": encrypt_header(cipher, endpoint_id, "X-Api-Token", "tok")}
    conn.execute(
        "INSERT INTO webhook_endpoints (id, url, event_types, headers, secret, created_at, "
        "updated_at) VALUES (?, 'http://127.0.0.1:9/h', '[\"*\"]', ?, ?, ?, ?)",
        (
            endpoint_id,
            json.dumps(headers),
            encrypt_secret(cipher, endpoint_id, "whsec_x"),
            now,
            now,
        ),
    )


def _cloud_account(conn: sqlite3.Connection, cipher: DataCipher, account_id: str) -> None:
    stored = store_settings(
        {
            "phone_number_id": "123456",
            "access_token": "EAAG" + "x" * 40,
            "app_secret": "s" * 32,
            "verify_token": "verify-me",
        },
        cipher,
    )
    now = time.time()
    conn.execute(
        "INSERT INTO accounts (id, name, engine, engine_settings, state, created_at, updated_at) "
        "VALUES (?, ?, 'cloud', ?, 'connected', ?, ?)",
        (account_id, account_id, json.dumps(stored), now, now),
    )


def test_check_names_what_another_data_key_encrypted(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    ours = DataCipher((paths.secrets_dir / "data-key").read_text().strip().encode())
    theirs = DataCipher(b"the data key of the installation the backup came from")
    conn = sqlite3.connect(settings.database_path)
    with conn:
        _endpoint(conn, ours, "wh_fine")
        _endpoint(conn, theirs, "wh_lost")
        _cloud_account(conn, ours, "acc_fine")
        _cloud_account(conn, theirs, "acc_lost")
    conn.close()
    problems = [p for p in cli.check_installation(paths) if "not readable" in p]
    text = "\n".join(problems)
    assert len(problems) == 2, text
    assert "webhook wh_lost: signing secret, header X-Api-Token" in text
    assert "account acc_lost (cloud)" in text
    assert "wh_fine" not in text and "acc_fine" not in text
