"""The reports' HTTP side in the in-process app (no worker): JSON and CSV of every
report, who may read which figures (managers everything, agents their own, 404 outside
the grants), bad input as 400 or 422 in the error shape, and the spec."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

from quart import Quart

from appliance.api.app import create_app
from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.db.database import Database
from appliance.inbox import store as inbox
from appliance.messaging import store
from appliance.reports import service
from appliance.secrets import Secrets
from tests.unit.conftest import OpenDb

A, B = "acc_a", "acc_b"
ALICE = "905551110001@s.whatsapp.net"
DAY = "2024-06-03"


def _app(tmp_path: Path) -> Quart:
    paths = Paths(tmp_path)
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    return create_app(load_settings(paths, environ={}), secrets)


async def _person(db: Database, name: str, role: Role) -> tuple[int, dict[str, str]]:
    async with db.write() as conn:
        user_id = await auth_store.create_user(
            conn,
            username=name,
            password_hash="x",
            role=role,
            all_accounts=False,
            accounts=[A],
            now=1.0,
        )
        _, key, _ = await auth_store.create_api_key(
            conn,
            name=f"{name}-key",
            role=role,
            all_accounts=False,
            accounts=[A],
            created_by="test",
            owner_user_id=user_id,
            now=time.time(),
        )
    return user_id, {"Authorization": f"Bearer {key}"}


async def _data(db: Database, ann: int) -> None:
    at = dt.datetime(2024, 6, 3, 9, tzinfo=dt.UTC).timestamp()
    async with db.write() as conn:
        for account in (A, B):
            await store.create_account(
                conn,
                account_id=account,
                name=account,
                engine="sandbox",
                engine_settings={},
                settings={"timezone": "Europe/Istanbul"},
                now=1.0,
            )
        await store.insert_inbound(
            conn,
            account_id=A,
            message_id="I1",
            chat_jid=ALICE,
            sender_jid=ALICE,
            sender_name="=cmd|' /C calc'!A0",
            type_="text",
            body="hi",
            content={"type": "text", "text": {"body": "hi"}},
            reply_to=None,
            media_id=None,
            wa_timestamp=at,
            now=at,
        )
        await inbox.on_inbound(conn, A, ALICE, "I1", now=at)
        await inbox.change_chat(
            conn, A, ALICE, by=inbox.Actor("user", ann, ann), assigns_others=True, now=at,
            assignee_id=ann,
        )  # fmt: skip
        await store.insert_outbound(
            conn,
            account_id=A,
            message_id="O1",
            chat_jid=ALICE,
            type_="text",
            body="ok",
            content={"type": "text", "text": {"body": "ok"}},
            reply_to=None,
            media_id=None,
            client_key=None,
            now=at + 120,
        )
        await conn.execute("UPDATE chats SET name = ? WHERE jid = ?", ("=cmd|' /C calc'!A0", ALICE))


def test_report_routes(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_db(db_path) as db:
            ann_id, ann = await _person(db, "ann", Role.AGENT)
            ben_id, ben = await _person(db, "ben", Role.AGENT)
            _, boss = await _person(db, "boss", Role.MANAGER)
            await _data(db, ann_id)
            app = _app(tmp_path / "etc-root")
            state_of(app).db = db
            client = app.test_client()

            async def get(path: str, who: dict[str, str], **params: Any) -> Any:
                qs = {"start": DAY, "end": DAY} | params
                response = await client.get(path, headers=who, query_string=qs)
                if response.mimetype == "text/csv":
                    return response.status_code, await response.get_data(as_text=True)
                return response.status_code, await response.get_json()

            base = f"/api/reports/accounts/{A}"
            # A manager reads every report, JSON and CSV.
            for name in service.KINDS:
                status, report = await get(f"{base}/{name}", boss)
                assert status == 200, (name, report)
                assert report["scope"]["timezone"] == "Europe/Istanbul"  # the account's
                status, csv = await get(f"{base}/{name}.csv", boss)
                assert status == 200 and csv.count("\r\n") >= 1, name
            status, msgs = await get(f"{base}/messages", boss)
            assert msgs["totals"] == {
                "received": 1, "sent_api": 1, "sent_phone": 0, "sent_automation": 0
            }  # fmt: skip
            noon = next(h for h in msgs["hours"] if h["hour"] == 12)  # 09:00 UTC = 12:00 +03
            assert noon["received"] == 1
            status, times = await get(f"{base}/response_times", boss)
            assert times["first_response"] == {"count": 1, "median_s": 120.0, "p90_s": 120.0}
            assert times["agents"][0]["username"] == "ann"
            status, csv = await get(f"{base}/top_chats.csv", boss)
            assert "'=cmd" in csv  # a chat name is never a spreadsheet formula
            status, utc = await get(f"{base}/messages", boss, tz="UTC")
            assert utc["scope"]["timezone"] == "UTC"
            assert next(h for h in utc["hours"] if h["hour"] == 9)["received"] == 1
            status, only_ben = await get(f"{base}/conversations", boss, agent=str(ben_id))
            assert (
                status == 200 and only_ben["new"] == 0 and only_ben["scope"]["agent_id"] == ben_id
            )

            # An agent: their own per-agent figures only.
            status, mine = await get(f"{base}/conversations", ann)
            assert status == 200 and mine["new"] == 1 and mine["scope"]["agent_id"] == ann_id
            status, theirs = await get(f"{base}/response_times", ben, agent="me")
            assert status == 200 and theirs["first_response"]["count"] == 0
            status, error = await get(f"{base}/response_times", ben, agent=str(ann_id))
            assert status == 403 and "reports.read" in error["error"]
            status, error = await get(f"{base}/messages", ann)
            assert status == 403 and "reports.read" in error["error"]
            status, error = await get(f"{base}/messages.csv", ann)
            assert status == 403

            # Outside the grants: 404, as for an account that does not exist.
            for account in (B, "nope"):
                status, error = await get(f"/api/reports/accounts/{account}/messages", boss)
                assert status == 404 and error["error"] == "no such account"

            # Bad input: 400 with issues where the schema says no, 422 for what it cannot
            # say (the timezone database, rules between fields); never a traceback.
            for params in ({"start": "yesterday"}, {"limit": "0"}, {"agent": "ann"}):
                status, error = await get(f"{base}/top_chats", boss, **params)
                assert status == 400 and error["issues"], (params, error)
            for params, path in (
                ({"start": "2024-06-05", "end": "2024-06-01"}, "end"),
                ({"start": "2023-01-01", "end": "2024-12-31"}, "end"),
                ({"tz": "Mars/Olympus"}, "tz"),
                ({"tz": "0"}, "tz"),
            ):
                status, error = await get(f"{base}/top_chats", boss, **params)
                assert status == 422 and error["issues"][0]["path"] == path, (params, error)
            status, error = await get(f"{base}/messages", boss, agent="me")
            assert status == 422 and error["issues"][0]["path"] == "agent"
            response = await client.get(f"{base}/messages", headers=boss)
            assert response.status_code == 400  # start and end are required

            # The spec: every report, JSON and CSV, tagged, with its refusals.
            spec = await (await client.get("/openapi.json")).get_json()
            for name in service.KINDS:
                op = spec["paths"][f"/api/reports/accounts/{{account}}/{name}"]["get"]
                assert op["tags"] == ["reports"]
                assert {"200", "400", "401", "403", "404", "422"} <= set(op["responses"])
                csv_op = spec["paths"][f"/api/reports/accounts/{{account}}/{name}.csv"]["get"]
                assert "text/csv" in csv_op["responses"]["200"]["content"]

    asyncio.run(body())
