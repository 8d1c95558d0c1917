"""Which stored ciphertexts the data key cannot open, by name.

After a restore onto an installation with another ``data-key`` (or a replaced key),
every value encrypted with the old key fails to decrypt: webhook secrets and custom
header values, the cloud engine's access token and app secret, stored idempotency
answers. ``appliancectl check`` lists them instead of letting deliveries fail quietly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from appliance.crypto import DataCipher
from appliance.engines.cloud.settings import CloudConfig
from appliance.ops import secrets_store as store
from appliance.webhooks.store import decrypt_header, decrypt_secret


@dataclass(frozen=True)
class Undecryptable:
    what: str  # "webhook wh_x secret", "account acc_1 (cloud) access token and app secret"
    fix: str


def _opens(func: object, *args: object) -> bool:
    try:
        func(*args)  # type: ignore[operator]
    except Exception:
        return False
    return True


def _decrypt_answer(cipher: DataCipher, body: bytes, context: bytes) -> bytes:
    return cipher.decrypt(body, context=context)


def undecryptable(conn: sqlite3.Connection, cipher: DataCipher) -> list[Undecryptable]:
    found: list[Undecryptable] = []
    tables = store.tables(conn)
    now = time.time()
    if "webhook_endpoints" in tables:
        for endpoint_id, secret, previous, expires, headers in store.webhook_secrets(conn):
            bad = []
            if not _opens(decrypt_secret, cipher, endpoint_id, secret):
                bad.append("signing secret")
            if (
                previous is not None
                and (expires or 0) > now
                and not _opens(decrypt_secret, cipher, endpoint_id, previous)
            ):
                bad.append("previous signing secret")
            try:
                stored = json.loads(headers or "{}")
            except ValueError:
                stored = {}
            bad += [
                f"header {name}"
                for name, value in sorted(stored.items())
                if not _opens(decrypt_header, cipher, endpoint_id, name, value)
            ]
            if bad:
                found.append(
                    Undecryptable(
                        f"webhook {endpoint_id}: {', '.join(bad)}",
                        f"re-create webhook {endpoint_id} (DELETE, then POST /api/webhooks) "
                        f"and give the receiver its new secret; runbook/restore.md",
                    )
                )
    if "accounts" in tables:
        for account_id, engine, raw in store.account_engine_settings(conn):
            if engine != "cloud":
                continue
            try:
                stored = json.loads(raw or "{}")
            except ValueError:
                stored = {}
            if not _opens(CloudConfig.load, stored, cipher):
                found.append(
                    Undecryptable(
                        f"account {account_id} (cloud): access token or app secret",
                        f"PATCH /api/accounts/{account_id} with engine_settings.access_token "
                        f"and app_secret entered again",
                    )
                )
    if "idempotency_keys" in tables:
        bad_answers = sum(
            1
            for principal, key, body in store.live_answers(conn, now)
            if not _opens(_decrypt_answer, cipher, body, f"{principal}|{key}".encode())
        )
        if bad_answers:
            found.append(
                Undecryptable(
                    f"{bad_answers} stored idempotency answer(s)",
                    "none needed: a retry with such a key is answered 409/422 until it "
                    "expires (24 h); new keys work",
                )
            )
    return found
