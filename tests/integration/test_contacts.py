"""Contacts against real processes (the session's installation, sandbox engine): CSV
import of 10,000 contacts all-or-nothing, export round trip, edits and search, block
and unblock through the worker."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.integration.conftest import Appliance, bearer, new_api_key

pytestmark = pytest.mark.integration

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}
ATTRIBUTES = {
    "items": [
        {"key": "vip", "type": "boolean"},
        {"key": "score", "type": "number"},
        {"key": "joined", "type": "date"},
        {"key": "city", "type": "string"},
    ]
}
ROWS = 10_000


def _query(app: Appliance, sql: str, *params: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _wait(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="module")
def admin(appliance: Appliance) -> Iterator[httpx.Client]:
    with bearer(appliance, new_api_key(appliance, "contacts-admin", "admin")) as c:
        c.timeout = 60
        yield c


def _account(appliance: Appliance, admin: httpx.Client, account_id: str) -> None:
    response = admin.post(
        "/api/accounts",
        json={"id": account_id, "name": account_id, "engine_settings": FAST_SANDBOX},
    )
    assert response.status_code == 201, response.text
    assert admin.put(f"/api/accounts/{account_id}/contact-attributes", json=ATTRIBUTES).is_success
    _wait(
        lambda: _query(
            appliance, "SELECT 1 FROM accounts WHERE id = ? AND state = 'connected'", account_id
        ),
        30,
        "the account connected",
    )


def _rows() -> list[list[str]]:
    """10,000 contacts in the export's own canonical form and order (by jid)."""
    cities = ["İstanbul", "Ankara", 'Quote "Q", Town', "", "multi\nline"]
    return [
        [
            f"+9055{i:08d}",
            f"Contact {i}" if i % 7 else "",
            ("true" if i % 2 else "false") if i % 5 else "",
            str(i * 3) if i % 3 else "2.5",
            f"20{i % 30:02d}-{i % 12 + 1:02d}-{i % 28 + 1:02d}",
            cities[i % len(cities)],
        ]
        for i in range(ROWS)
    ]


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["phone", "name", "vip", "score", "joined", "city"])
    writer.writerows(rows)
    return out.getvalue().encode()


def _import(admin: httpx.Client, account: str, data: bytes) -> httpx.Response:
    return admin.post(
        f"/api/accounts/{account}/contacts.csv",
        content=data,
        headers={"Content-Type": "text/csv"},
    )


def _contacts(app: Appliance, account: str) -> int:
    return int(_query(app, "SELECT COUNT(*) FROM contacts WHERE account_id = ?", account)[0][0])


def test_import_of_10000_contacts_is_all_or_nothing_and_export_round_trips(
    appliance: Appliance, admin: httpx.Client
) -> None:
    _account(appliance, admin, "csv1")
    _account(appliance, admin, "csv2")
    good = _rows()
    data_good = _csv(good)
    lines_of = _line_numbers(data_good)
    # Three bad rows; multi-line cells make their line numbers differ from row numbers.
    broken = {
        lines_of[99]: (99, 0, "9055000000099"),  # the phone lacks its +
        lines_of[5000]: (5000, 2, "maybe"),  # vip is a boolean
        lines_of[9999]: (9999, 4, "2024-02-30"),  # no such day
    }
    bad = [list(r) for r in good]
    for row, column, value in broken.values():
        bad[row][column] = value
    refused = _import(admin, "csv1", _csv(bad))
    assert refused.status_code == 400, refused.text
    body = refused.json()
    bad_lines = sorted({int(i["path"].split(".")[0].split()[1]) for i in body["issues"]})
    assert bad_lines == sorted(broken)
    for line in broken:
        assert str(line) in body["error"]
    assert "nothing was imported" in body["error"]
    assert _contacts(appliance, "csv1") == 0

    imported = _import(admin, "csv1", data_good)
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"rows": ROWS, "created": ROWS, "updated": 0}
    assert _contacts(appliance, "csv1") == ROWS
    events = _query(
        appliance,
        "SELECT data FROM events WHERE account_id = 'csv1' AND type = 'contacts.imported'",
    )
    assert len(events) == 1 and orjson.loads(events[0]["data"])["created"] == ROWS
    audit = _query(
        appliance,
        "SELECT details FROM audit_log WHERE action = 'contacts.import' "
        "AND target = 'account:csv1'",
    )
    assert len(audit) == 1

    # Export streams the same file back; imported elsewhere, it exports identically.
    with admin.stream("GET", "/api/accounts/csv1/contacts.csv") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        exported = b"".join(response.iter_bytes())
    assert exported == data_good
    again = _import(admin, "csv2", exported)
    assert again.status_code == 200 and again.json()["created"] == ROWS
    assert admin.get("/api/accounts/csv2/contacts.csv").content == exported
    # Importing the same file again creates nothing and changes nothing.
    assert _import(admin, "csv1", data_good).json() == {
        "rows": ROWS,
        "created": 0,
        "updated": ROWS,
    }
    assert admin.get("/api/accounts/csv1/contacts.csv").content == exported

    # Search by name and by phone digits, pages by jid.
    found = admin.get("/api/accounts/csv1/contacts", params={"q": "contact 9999"}).json()
    assert [c["phone"] for c in found["items"]] == ["+905500009999"]
    found = admin.get("/api/accounts/csv1/contacts", params={"q": "+90 5500 000 123"}).json()
    assert [c["phone"] for c in found["items"]] == ["+905500000123"]
    page = admin.get("/api/accounts/csv1/contacts", params={"limit": 200}).json()
    assert len(page["items"]) == 200 and page["next"]
    assert page["items"][1]["attributes"] == {
        "vip": True,
        "score": 3,
        "joined": "2001-02-02",
        "city": "Ankara",
    }


def _line_numbers(data: bytes) -> list[int]:
    """The line each data row of ``data`` starts on."""
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    next(reader)
    starts = []
    line = 2
    for _ in reader:
        starts.append(line)
        line = reader.line_num + 1
    return starts


def test_edit_search_block_and_unblock(appliance: Appliance, admin: httpx.Client) -> None:
    _account(appliance, admin, "blk")
    sent = admin.post(
        "/api/accounts/blk/sandbox/inbound",
        json={"from": "+905551234567", "type": "text", "text": {"body": "hi"}, "name": "Zeynep"},
    )
    assert sent.status_code == 202, sent.text
    _wait(lambda: _contacts(appliance, "blk") == 1, 30, "the sender stored as a contact")
    agent_key = new_api_key(appliance, "contacts-agent", "agent", "blk")
    with bearer(appliance, agent_key) as agent:
        edited = agent.patch(
            "/api/accounts/blk/contacts/+905551234567",
            json={"display_name": "Zeynep K.", "attributes": {"vip": True, "joined": "2023-05-01"}},
        )
        assert edited.status_code == 200, edited.text
        assert edited.json()["name"] == "Zeynep K." and edited.json()["whatsapp_name"] == "Zeynep"
        bad = agent.patch(
            "/api/accounts/blk/contacts/+905551234567", json={"attributes": {"score": "10"}}
        )
        assert bad.status_code == 400 and bad.json()["issues"][0]["path"] == "attributes.score"
        assert agent.get("/api/accounts/blk/contacts", params={"q": "zeynep k"}).json()["items"]
        # Blocking is a manager's.
        assert agent.post("/api/accounts/blk/contacts/+905551234567/block").status_code == 403

    blocked = admin.post("/api/accounts/blk/contacts/+905551234567/block")
    assert blocked.status_code == 200, blocked.text
    assert blocked.json()["blocked"] is True
    assert _query(appliance, "SELECT 1 FROM sandbox_server_blocked WHERE account_id = 'blk'")
    listed = admin.get("/api/accounts/blk/contacts", params={"blocked": "true"}).json()["items"]
    assert [c["phone"] for c in listed] == ["+905551234567"]
    # A number never seen before can be blocked too.
    assert admin.post("/api/accounts/blk/contacts/+905550000001/block").json()["blocked"]
    unblocked = admin.post("/api/accounts/blk/contacts/+905551234567/unblock")
    assert unblocked.status_code == 200 and unblocked.json()["blocked"] is False
    assert (
        len(_query(appliance, "SELECT 1 FROM sandbox_server_blocked WHERE account_id = 'blk'")) == 1
    )
    events = [
        orjson.loads(r["data"])
        for r in _query(
            appliance,
            "SELECT data FROM events WHERE account_id = 'blk' AND type = 'contact.updated' "
            "ORDER BY id",
        )
    ]
    assert [e["changes"] for e in events] == [
        ["display_name", "attributes"],
        ["blocked"],
        ["blocked"],
        ["blocked"],
    ]
    assert events[0]["by"]["name"] == "contacts-agent"
    assert events[1]["by"]["name"] == "contacts-admin" and events[1]["blocked"] is True
    # Disconnected: the worker cannot reach WhatsApp, a clear 409.
    assert admin.post("/api/accounts/blk/logout").status_code == 202
    _wait(
        lambda: _query(
            appliance, "SELECT 1 FROM accounts WHERE id = 'blk' AND state = 'logged_out'"
        ),
        30,
        "logged out",
    )
    refused = admin.post("/api/accounts/blk/contacts/+905551234567/block")
    assert refused.status_code == 409 and "not connected" in refused.json()["error"]
