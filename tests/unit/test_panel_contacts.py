"""The panel's Contacts screen in the in-process app: search by name or phone, the CSV
import (all rows or none, bad lines named; managers and admins only) and the export
link."""

from __future__ import annotations

from pathlib import Path

from quart import Quart
from quart.datastructures import FileStorage

from appliance.auth import store as auth_store
from appliance.db.database import Database
from appliance.inbox import contacts_store
from tests.unit.conftest import OpenDb
from tests.unit.test_panel import A, _run, _sign_in


def _csv(text: str) -> dict[str, FileStorage]:
    import io

    return {
        "file": FileStorage(io.BytesIO(text.encode()), filename="c.csv", content_type="text/csv")
    }


def test_contacts_search_import_export(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        page = await (await admin.get("/panel/contacts")).get_data(as_text=True)
        assert f'href="/api/accounts/{A}/contacts.csv"' in page and 'id="import-form"' in page
        # A bad line: nothing imported, the line named.
        bad = await admin.post(
            f"/panel/accounts/{A}/contacts-import",
            form={"csrf_token": csrf},
            files=_csv("phone,name\n+905551230001,Ayla\nnot-a-phone,Bora\n"),
        )
        text = await bad.get_data(as_text=True)
        assert bad.status_code == 400 and "line 3" in text, text
        filters = contacts_store.ContactFilter(q="Ayla", blocked=None)
        rows, _next = await contacts_store.list_contacts(db, A, filters, limit=10)
        assert rows == []
        good = await admin.post(
            f"/panel/accounts/{A}/contacts-import",
            form={"csrf_token": csrf},
            files=_csv("phone,name\n+905551230001,Ayla\n+905551230002,Bora\n"),
        )
        text = await good.get_data(as_text=True)
        assert good.status_code == 200 and "Imported 2 rows: 2 new, 0 updated." in text
        audit = await auth_store.list_audit(db, before=None, limit=1)
        assert audit[0].action == "contacts.import"
        found = await (await admin.get(f"/panel/contacts?account={A}&q=Bora")).get_data(
            as_text=True
        )
        assert "+905551230002" in found and "Ayla" not in found
        by_phone = await (await admin.get(f"/panel/contacts?account={A}&q=230001")).get_data(
            as_text=True
        )
        assert "Ayla" in by_phone
        # Agents read contacts but do not import.
        agent = app.test_client()
        status, _text, agent_csrf = await _sign_in(agent, "agent1")
        page = await (await agent.get("/panel/contacts")).get_data(as_text=True)
        assert "Ayla" in page and 'id="import-form"' not in page
        refused = await agent.post(
            f"/panel/accounts/{A}/contacts-import",
            form={"csrf_token": agent_csrf},
            files=_csv("phone,name\n+905551230003,Cem\n"),
        )
        assert refused.status_code == 403

    _run(open_db, db_path, tmp_path, test)
