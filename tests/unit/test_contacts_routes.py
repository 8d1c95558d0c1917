"""The contacts and retention routes in the in-process app (never served, no worker):
permissions, refusals before anything reaches the worker, audit rows, the spec."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from appliance.auth.permissions import Role
from appliance.db.database import Database
from appliance.messaging import store
from tests.unit.conftest import OpenDb
from tests.unit.test_read_api import _inbound, _key, _served

SANDBOX, CLOUD = "acc_sb", "acc_cl"
ALICE = "905551110001@s.whatsapp.net"


async def _accounts(db: Database) -> None:
    async with db.write() as conn:
        for account_id, engine in ((SANDBOX, "sandbox"), (CLOUD, "cloud")):
            await store.create_account(
                conn,
                account_id=account_id,
                name=account_id,
                engine=engine,
                engine_settings={},
                settings={},
                now=1.0,
            )


def _run(open_db: OpenDb, db_path: Path, body: Any) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await _accounts(db)
            await body(db)

    asyncio.run(main())


def test_contact_routes(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        await _inbound(db, SANDBOX, ALICE, "hi", name="Alice WA")
        await _inbound(db, CLOUD, ALICE, "hi", name="Alice WA")
        admin = {"Authorization": f"Bearer {await _key(db, Role.ADMIN)}"}
        manager = {"Authorization": f"Bearer {await _key(db, Role.MANAGER, SANDBOX, CLOUD)}"}
        agent = {"Authorization": f"Bearer {await _key(db, Role.AGENT, SANDBOX)}"}
        async with _served(tmp_path, db) as app:
            client = app.test_client()

            async def call(method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
                response = await client.open(path, method=method, headers=headers, **kw)
                return response.status_code, await response.get_json()

            base = f"/api/accounts/{SANDBOX}"
            # Declaring attributes is a manager's; agents edit contacts.
            defs = {"items": [{"key": "vip", "type": "boolean"}, {"key": "since", "type": "date"}]}
            status, _ = await call("PUT", f"{base}/contact-attributes", agent, json=defs)
            assert status == 403
            status, got = await call("PUT", f"{base}/contact-attributes", manager, json=defs)
            assert status == 200 and got == defs
            status, got = await call(
                "PATCH",
                f"{base}/contacts/+905551110001",
                agent,
                json={"display_name": " Alice ", "attributes": {"vip": True}},
            )
            assert status == 200, got
            assert got["name"] == "Alice" and got["whatsapp_name"] == "Alice WA"
            assert got["attributes"] == {"vip": True} and got["id"] == ALICE
            status, got = await call(
                "PATCH",
                f"{base}/contacts/{ALICE}",
                agent,
                json={"attributes": {"vip": "yes", "since": "2024-13-01", "nope": 1}},
            )
            assert status == 400
            assert {i["path"] for i in got["issues"]} == {
                "attributes.vip",
                "attributes.since",
                "attributes.nope",
            }
            status, _ = await call(
                "PATCH", f"{base}/contacts/+905559999999", agent, json={"display_name": "x"}
            )
            assert status == 404
            status, page = await call("GET", f"{base}/contacts", agent, query_string={"q": "ali"})
            assert status == 200 and [c["id"] for c in page["items"]] == [ALICE]
            # Out of the agent's grants: 404 as if absent.
            status, _ = await call("GET", f"/api/accounts/{CLOUD}/contacts", agent)
            assert status == 404

            # An engine that cannot block: a 4xx naming it, before the worker is asked.
            status, got = await call(
                "POST", f"/api/accounts/{CLOUD}/contacts/{ALICE}/block", manager
            )
            assert status == 409 and "cloud engine cannot block" in got["error"]
            status, _ = await call("POST", f"{base}/contacts/{ALICE}/block", agent)
            assert status == 403

            # Import: a manager's, all or nothing, audited.
            csv = b"phone,name,vip\r\n+905551110002,Bob,true\r\n+90555,Bad,maybe\r\n"
            headers = {**manager, "Content-Type": "text/csv"}
            status, got = await call("POST", f"{base}/contacts.csv", headers, data=csv)
            assert status == 400 and "line(s) 3" in got["error"]
            assert [i["path"] for i in got["issues"]] == ["line 3.phone", "line 3.vip"]
            status, got = await call(
                "POST", f"{base}/contacts.csv", {**agent, "Content-Type": "text/csv"}, data=csv
            )
            assert status == 403
            status, got = await call(
                "POST",
                f"{base}/contacts.csv",
                {**manager, "Content-Type": "application/json"},
                data=b"{}",
            )
            assert status == 415
            status, got = await call(
                "POST", f"{base}/contacts.csv", headers, data=csv.split(b"+90555,")[0]
            )
            assert status == 200 and got == {"rows": 1, "created": 1, "updated": 0}
            response = await client.get(f"{base}/contacts.csv", headers=agent)
            assert response.status_code == 200
            assert response.content_type.startswith("text/csv")
            text = (await response.get_data()).decode()
            assert text.splitlines() == [
                "phone,name,vip,since",
                "+905551110001,Alice,true,",
                "+905551110002,Bob,true,",
            ]
            actions = [
                r["action"] for r in await db.fetchall("SELECT action FROM audit_log ORDER BY id")
            ]
            assert actions == ["contact_attributes.update", "contacts.import"]
            status, _ = await call("GET", f"{base}/contacts", admin)
            assert status == 200

    _run(open_db, db_path, body)


def test_retention_routes_permissions_and_audit(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        admin = {"Authorization": f"Bearer {await _key(db, Role.ADMIN)}"}
        manager = {"Authorization": f"Bearer {await _key(db, Role.MANAGER, SANDBOX)}"}
        agent = {"Authorization": f"Bearer {await _key(db, Role.AGENT, SANDBOX)}"}
        async with _served(tmp_path, db) as app:
            client = app.test_client()

            async def call(method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
                response = await client.open(path, method=method, headers=headers, **kw)
                return response.status_code, await response.get_json()

            account = f"/api/accounts/{SANDBOX}/retention"
            status, got = await call("GET", account, agent)
            assert status == 200 and got["message_days"] is None
            # Agents change no retention; managers their accounts' only.
            assert (await call("PUT", account, agent, json={"message_days": 30}))[0] == 403
            assert (await call("PUT", "/api/retention", agent, json={}))[0] == 403
            assert (await call("GET", "/api/retention", manager))[0] == 403
            body_ = {"events_days": 30, "audit_days": None}
            assert (await call("PUT", "/api/retention", manager, json=body_))[0] == 403
            assert (await call("POST", "/api/retention/run", agent))[0] == 403
            status, got = await call("PUT", account, manager, json={"message_days": 30})
            assert status == 200 and got["message_days"] == 30
            for bad in ({"message_days": 0}, {"message_days": "30"}, {"message_days": 1.5}, {}):
                assert (await call("PUT", account, manager, json=bad))[0] == 400, bad
            status, got = await call("GET", "/api/retention", admin)
            assert status == 200 and (got["events_days"], got["audit_days"]) == (90, 365)
            status, got = await call("PUT", "/api/retention", admin, json=body_)
            assert status == 200 and (got["events_days"], got["audit_days"]) == (30, None)
            status, page = await call("GET", "/api/retention/runs", admin)
            assert status == 200 and page == {"items": [], "next": None}
            rows = await db.fetchall("SELECT action, target, details FROM audit_log ORDER BY id")
            assert [(r["action"], r["target"]) for r in rows] == [
                ("retention.account_update", f"account:{SANDBOX}"),
                ("retention.update", "retention"),
            ]

    _run(open_db, db_path, body)
