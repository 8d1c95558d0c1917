"""The worker raises ``stored_secrets_undecryptable`` naming what the data key cannot
open (never a value), updates it, and resolves it once everything opens again."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.ops import alerts_store
from appliance.ops.secrets_watch import RULE, SecretsWatch
from tests.unit.test_ops_backup import _install
from tests.unit.test_ops_stored_secrets import _cloud_account, _endpoint


def test_alert_names_the_undecryptable_then_resolves(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    ours = DataCipher((paths.secrets_dir / "data-key").read_text().strip().encode())
    theirs = DataCipher(b"the data key of the installation the backup came from")
    conn = sqlite3.connect(settings.database_path)
    with conn:
        _endpoint(conn, ours, "wh_fine")
        _endpoint(conn, theirs, "wh_lost")
        _cloud_account(conn, theirs, "acc_lost")
    conn.close()
    woken: list[int] = []

    async def wake() -> None:
        woken.append(1)

    async def body() -> None:
        db = await Database.open(settings.database_path)
        try:
            watch = SecretsWatch(db, settings, ours, events_written=wake, clock=lambda: 1000.0)
            found = await watch.check_once()
            assert len(found) == 2
            alert = await alerts_store.open_alert(db, RULE, "")
            assert alert is not None
            affected = alert.details["affected"]
            assert affected == [
                "webhook wh_lost: signing secret, header X-Api-Token",
                "account acc_lost (cloud): access token or app secret",
            ]
            rows = await db.fetchall("SELECT data FROM events WHERE type = 'system.alert'")
            assert len(rows) == 1
            data = json.loads(rows[0]["data"])
            assert data["rule"] == RULE and data["state"] == "raised"
            for planted in ("whsec_x", '"tok"', "EAAG", "s" * 32, "verify-me"):
                assert planted not in rows[0]["data"], planted
            assert woken == [1]

            # Once more: the same, no second event.
            await watch.check_once()
            assert len(await db.fetchall("SELECT id FROM events WHERE type = 'system.alert'")) == 1

            # The operator re-creates the webhook and re-enters the account's token.
            async with db.write() as w:
                await w.execute("DELETE FROM webhook_endpoints WHERE id = 'wh_lost'")
                await w.execute("DELETE FROM accounts WHERE id = 'acc_lost'")
            assert await watch.check_once() == []
            assert await alerts_store.open_alert(db, RULE, "") is None
            rows = await db.fetchall("SELECT data FROM events WHERE type = 'system.alert'")
            assert json.loads(rows[-1]["data"])["state"] == "resolved"
        finally:
            await db.close()

    asyncio.run(body())
