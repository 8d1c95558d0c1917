"""The built-in alerts' store (ops/alerts_store.py) and the dead-letter count the
worker's monitor reads (webhooks/store.count_dead)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.ops import alerts_store
from appliance.webhooks import store as webhooks_store
from tests.unit.conftest import OpenDb


def test_raise_update_and_resolve_one_open_alert_per_rule_and_subject(
    tmp_path: Path, open_db: OpenDb
) -> None:
    async def main() -> None:
        async with open_db(tmp_path / "appliance.db") as db:
            async with db.write() as conn:
                alert_id = await alerts_store.raise_alert(
                    conn,
                    rule="disk_low",
                    subject="",
                    severity="warning",
                    summary="disk",
                    details={"free": 1},
                    at=10.0,
                )
                await alerts_store.set_details(conn, alert_id, {"free": 2})
            found = await alerts_store.open_alert(db, "disk_low", "")
            assert found == alerts_store.AlertRow(alert_id, "disk_low", "", 10.0, {"free": 2})
            assert await alerts_store.open_alerts(db) == [found]
            with pytest.raises(Exception, match="UNIQUE"):  # one open alert per rule, subject
                async with db.write() as conn:
                    await alerts_store.raise_alert(
                        conn,
                        rule="disk_low",
                        subject="",
                        severity="warning",
                        summary="disk",
                        details={},
                        at=11.0,
                    )
            async with db.write() as conn:
                await alerts_store.resolve_alert(conn, "disk_low", "", 20.0, {"free": 9})
            assert await alerts_store.open_alerts(db) == []
            row = await db.fetchone("SELECT resolved_at, details FROM system_alerts")
            assert row is not None and (row[0], row[1]) == (20.0, '{"free": 9}')

    asyncio.run(main())


def test_dead_letters_in_all_and_since(tmp_path: Path, open_db: OpenDb) -> None:
    async def main() -> None:
        async with open_db(tmp_path / "appliance.db") as db:
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO webhook_endpoints (id, url, event_types, secret, created_at,"
                    " updated_at)"
                    " VALUES ('ep', 'https://example.com/', '[\"*\"]', x'00', 0, 0)"
                )
                for event_id, state, at in (
                    (1, "dead", 5.0),
                    (2, "dead", 50.0),
                    (3, "pending", 60),
                ):
                    await conn.execute(
                        "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type,"
                        " state, created_at, updated_at) VALUES ('ep', ?, 't', ?, ?, ?)",
                        (event_id, state, at, at),
                    )
            assert await webhooks_store.count_dead(db) == 2
            assert await webhooks_store.count_dead(db, since=50.0) == 1

    asyncio.run(main())
