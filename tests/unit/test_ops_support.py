"""The support bundle: useful contents, and none of the planted secrets, tokens, phone
numbers or message bodies."""

from __future__ import annotations

import json
import sqlite3
import stat
import tarfile
import time
from pathlib import Path

from appliance.ops.redact import Known, Redactor
from appliance.ops.support import write_bundle
from appliance.secrets import SECRET_NAMES
from tests.unit.test_ops_backup import _install

PHONE = "+49 1512 3456789"
PHONE_DIGITS = "4915123456789"
OTHER_PHONE = "905321234567"
BODY = "meet me at the blue door at nine"
JSON_BODY = "the parcel code is K7-ZEBRA"
API_KEY = "apk_Zq8xV2nR4tW6yB1cD3eF5gH7jK9mL0pQ"
BEARER = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.sig"
WEBHOOK_SECRET = "whsec_ZmFrZS13ZWJob29rLXNlY3JldC1mb3ItdGVzdA"
CONTACT_NAME = "Zeynep Kaya-Lindqvist"


def _plant(root: Path) -> tuple[object, object, list[str]]:
    paths, settings = _install(root)
    conn = sqlite3.connect(settings.database_path)
    now = time.time()
    with conn:
        conn.execute(
            "INSERT INTO accounts (id, name, engine, state, created_at, updated_at) "
            "VALUES ('acc_1', 'Shop', 'sandbox', 'connected', ?, ?)",
            (now, now),
        )
        conn.execute(
            "INSERT INTO contacts (account_id, jid, phone, name, updated_at) "
            "VALUES ('acc_1', ?, ?, ?, ?)",
            (f"{OTHER_PHONE}@s.whatsapp.net", f"+{OTHER_PHONE}", CONTACT_NAME, now),
        )
        conn.execute(
            "INSERT INTO messages (account_id, id, chat_jid, direction, type, body, content, "
            "status, created_at, updated_at) VALUES ('acc_1', '3EB0AA', ?, 'in', 'text', ?, "
            "'{}', 'received', ?, ?)",
            (f"{OTHER_PHONE}@s.whatsapp.net", BODY, now, now),
        )
    conn.close()
    secrets = [(paths.secrets_dir / n).read_text().strip() for n in SECRET_NAMES]
    lines = [
        json.dumps({"level": "INFO", "msg": f"received from {PHONE}: {BODY}", "role": "worker"}),
        json.dumps({"level": "INFO", "msg": "inbound", "text": {"body": JSON_BODY}}),
        json.dumps({"level": "INFO", "msg": "send", "to": PHONE_DIGITS, "chat": "x"}),
        f"GET /api/messages Authorization: Bearer {BEARER} key={API_KEY}",
        f"webhook secret={WEBHOOK_SECRET} for {OTHER_PHONE}@s.whatsapp.net",
        f"metrics token {secrets[1]} data key {secrets[2]}",
        json.dumps({"msg": "contact", "detail": f"{CONTACT_NAME} wrote"}),
        "https://user:hunter2pass@example.invalid/hook answered 200",
        "plain line that must stay: worker started",
    ]
    (settings.log_dir / "worker.log").write_text("\n".join(lines) + "\n")
    with paths.env_file.open("a") as fh:
        fh.write(f"CLOUD_VERIFY_TOKEN={WEBHOOK_SECRET}\n")
    planted = [
        PHONE,
        PHONE_DIGITS,
        OTHER_PHONE,
        BODY,
        JSON_BODY,
        API_KEY,
        BEARER,
        WEBHOOK_SECRET,
        CONTACT_NAME,
        "hunter2pass",
        *secrets,
    ]
    return paths, settings, planted


def test_support_bundle_has_what_support_needs_and_none_of_the_planted_values(
    tmp_path: Path,
) -> None:
    paths, settings, planted = _plant(tmp_path / "inst")
    dest = tmp_path / "bundle.tar.gz"
    result = write_bundle(
        paths,  # type: ignore[arg-type]
        settings,  # type: ignore[arg-type]
        dest,
        status=lambda: json.dumps({"ready": False, "note": f"token {planted[-1]}"}),
        check=lambda: "OK config\n",
    )
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    with tarfile.open(dest) as tar:
        files = {
            m.name.removeprefix("support/"): tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
    assert set(result.members) == set(files)
    for name in (
        "versions.json",
        "settings.json",
        "status.json",
        "check.txt",
        "database.json",
        "logs/worker.log",
        "appliance.env",
        "secrets.txt",
    ):
        assert name in files, name
    everything = "\n".join(files.values())
    for value in planted:
        assert value not in everything, value
    database = json.loads(files["database.json"])
    assert database["tables"]["messages"] == 1 and database["tables"]["contacts"] == 1
    assert "plain line that must stay: worker started" in files["logs/worker.log"]
    assert json.loads(files["versions.json"])["schema_version"] is not None
    assert "PORT=18080" in files["appliance.env"]


def test_redactor_patterns() -> None:
    redactor = Redactor(Known(secrets=["s3cr3t-value-xyz"], contents=["hello there"]))
    line = redactor.line("x s3cr3t-value-xyz y hello there z +1 (415) 555-0100 pid 42")
    assert "s3cr3t" not in line and "hello there" not in line and "555-0100" not in line
    assert line.endswith("pid 42")
    structured = json.loads(redactor.line(json.dumps({"msg": "m", "caption": "Secret caption"})))
    assert structured == {"msg": "m", "caption": "[REDACTED:body]"}
