# ruff: noqa: RUF001  (Turkish text: the dotless i is meant)
"""The panel's Contacts screen in the in-process app: search by name or phone, the CSV
import (all rows or none, bad lines named; managers and admins only) and the export
link."""

from __future__ import annotations

from pathlib import Path

import orjson
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


def test_contact_attributes_declared_retyped_removed(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    """The declarations screen does what PUT .../contact-attributes does: the API's key
    rules next to the field, a retype refused while contacts hold values (409, next to
    the row), a removal deleting the values; the contact's page then offers a field
    per type and says why a value was refused."""

    async def test(app: Quart, db: Database) -> None:
        admin = app.test_client()
        status, _text, csrf = await _sign_in(admin, "admin1")
        assert status == 303
        page = await (await admin.get(f"/panel/contact-attributes?account={A}")).get_data(
            as_text=True
        )
        assert 'id="no-attributes"' in page and "At most 50 attributes" in page
        url = f"/panel/accounts/{A}/contact-attributes"
        bad = await admin.post(url, form={"csrf_token": csrf, "new_key": "Bad Key"})
        text = await bad.get_data(as_text=True)
        assert bad.status_code == 400 and 'id="f-new-key-error"' in text, text
        assert await contacts_store.attribute_defs(db, A) == []
        made = await admin.post(
            url, form={"csrf_token": csrf, "new_key": "tier", "new_type": "string"}
        )
        assert made.status_code == 303
        assert made.headers["Location"] == f"/panel/contact-attributes?account={A}&saved=1"
        for key, type_ in (("vip", "boolean"), ("since", "date")):
            made = await admin.post(
                url,
                form=(  # a list: keys repeat, as the form sends them
                    [("csrf_token", csrf)]
                    + [
                        (f, v)
                        for d in await contacts_store.attribute_defs(db, A)
                        for f, v in (("key", d.key), ("type", d.type))
                    ]
                    + [("new_key", key), ("new_type", type_)]
                ),
            )
            assert made.status_code == 303
        defs = await contacts_store.attribute_defs(db, A)
        assert [(d.key, d.type) for d in defs] == [
            ("tier", "string"),
            ("vip", "boolean"),
            ("since", "date"),
        ]
        audit = await auth_store.list_audit(db, before=None, limit=1)
        assert audit[0].action == "contact_attributes.update"
        declared = [("key", "tier"), ("type", "string"), ("key", "vip"), ("type", "boolean"),
                    ("key", "since"), ("type", "date")]  # fmt: skip
        twice = await admin.post(url, form=[("csrf_token", csrf), *declared, ("new_key", "vip")])
        text = await twice.get_data(as_text=True)
        assert twice.status_code == 400 and "declared twice" in text
        imported = await admin.post(
            f"/panel/accounts/{A}/contacts-import",
            form={"csrf_token": csrf},
            files=_csv("phone,name,tier\n+905551230001,Ayla,gold\n"),
        )
        assert imported.status_code == 200
        # The contact's page: a field per type; a refused value named next to it.
        jid = "905551230001@s.whatsapp.net"
        edit = f"/panel/accounts/{A}/contacts/{jid}/edit"
        text = await (await admin.get(edit)).get_data(as_text=True)
        assert 'id="f-attr-since" name="attr.since" value="" type="date"' in text
        assert '<select id="f-attr-vip" name="attr.vip"' in text and 'value="gold"' in text
        refused = await admin.post(
            edit,
            form={
                "csrf_token": csrf,
                "display_name": "Ayla",
                "attr.tier": "gold",
                "attr.vip": "maybe",
                "attr.since": "2026-02-30",
            },
        )
        text = await refused.get_data(as_text=True)
        assert refused.status_code == 400
        assert 'id="f-attr-vip-error">must be true or false' in text
        assert 'id="f-attr-since-error">must be a date written YYYY-MM-DD (no such day)' in text
        saved = await admin.post(
            edit,
            form={
                "csrf_token": csrf,
                "display_name": "Ayla",
                "attr.tier": "gold",
                "attr.vip": "true",
                "attr.since": "2026-02-01",
            },
        )
        assert saved.status_code == 303
        row = await contacts_store.contact_row(db, A, jid)
        assert orjson.loads(row["attributes"]) == {
            "tier": "gold",
            "vip": True,
            "since": "2026-02-01",
        }
        listed = await (await admin.get(f"/panel/contacts?account={A}")).get_data(as_text=True)
        assert "<td>Yes</td>" in listed
        # Retyping a held key: 409 next to that row in the catalog's words (the API's
        # facts: the key, its type, how many contacts hold it); nothing changed.
        retyped = [("key", "tier"), ("type", "number"), *declared[2:]]
        conflict = await admin.post(url, form=[("csrf_token", csrf), *retyped])
        text = await conflict.get_data(as_text=True)
        assert conflict.status_code == 409
        assert (
            'id="attr-0-type-error">tier is of type Text and 1 contact holds a value for it: '
            "remove it first (which deletes that value), save, then declare it again as "
            "Number.</p>"
        ) in text
        assert "held by" not in text  # not the JSON API's English message
        assert (await contacts_store.attribute_defs(db, A))[0].type == "string"
        # In Turkish, with the plural of two holders.
        second = await admin.post(
            f"/panel/accounts/{A}/contacts-import",
            form={"csrf_token": csrf},
            files=_csv("phone,name,tier\n+905551230002,Baran,silver\n"),
        )
        assert second.status_code == 200
        turkish = app.test_client()
        tr = {"Accept-Language": "tr"}
        _status, _page, tr_csrf = await _sign_in(turkish, "admin1", **tr)
        conflict = await turkish.post(url, form=[("csrf_token", tr_csrf), *retyped], headers=tr)
        text = await conflict.get_data(as_text=True)
        assert conflict.status_code == 409
        assert (
            'id="attr-0-type-error">tier türü Metin ve 2 kişide değeri var: önce kaldırın '
            "(bu değerler silinir), kaydedin, sonra Sayı olarak yeniden tanımlayın.</p>"
        ) in text, text
        # Removing it deletes the value from every contact, and says so.
        gone = await admin.post(url, form=[("csrf_token", csrf), *declared, ("remove", "tier")])
        assert gone.status_code == 303 and gone.headers["Location"].endswith("removed=tier")
        text = await (await admin.get(gone.headers["Location"])).get_data(as_text=True)
        assert "Removed, with their values on every contact: tier." in text
        row = await contacts_store.contact_row(db, A, jid)
        assert orjson.loads(row["attributes"]) == {"vip": True, "since": "2026-02-01"}
        assert [d.key for d in await contacts_store.attribute_defs(db, A)] == ["vip", "since"]
        # Agents neither see nor change the declarations.
        agent = app.test_client()
        status, _text, agent_csrf = await _sign_in(agent, "agent1")
        assert (await agent.get(f"/panel/contact-attributes?account={A}")).status_code == 403
        refused = await agent.post(url, form={"csrf_token": agent_csrf, "new_key": "x"})
        assert refused.status_code == 403
        page = await (await agent.get(f"/panel/contacts?account={A}")).get_data(as_text=True)
        assert 'id="attributes-link"' not in page

    _run(open_db, db_path, tmp_path, test)
