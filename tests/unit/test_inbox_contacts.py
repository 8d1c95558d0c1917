"""Contacts' logic (appliance/inbox/contacts.py) and SQL (appliance/inbox/contacts_store.py):
typed attribute validation, the CSV format (every bad line named, nothing partial),
search, import and export against a real migrated SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from appliance.db.database import Database
from appliance.errors import Conflict, InvalidInput
from appliance.inbox import contacts as logic
from appliance.inbox import contacts_store as store
from appliance.inbox.contacts import AttributeDef, AttributeValueError
from appliance.messaging import store as messaging_store
from tests.unit.conftest import OpenDb

DEFS = [
    AttributeDef("vip", "boolean"),
    AttributeDef("score", "number"),
    AttributeDef("birthday", "date"),
    AttributeDef("city", "string"),
]
TYPES = {d.key: d.type for d in DEFS}
BY = store.actor("user:1", "alice")


# -- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "value", "stored"),
    [
        ("string", "İstanbul", "İstanbul"),
        ("number", 42, 42),
        ("number", 4.5, 4.5),
        ("number", 3.0, 3),
        ("boolean", False, False),
        ("date", "2024-02-29", "2024-02-29"),
    ],
)
def test_json_values_of_each_type(type_: str, value: Any, stored: Any) -> None:
    assert logic.coerce_json(type_, value) == stored


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        ("string", 5),
        ("string", "a\x00b"),
        ("string", "x" * 1025),
        ("number", "5"),
        ("number", True),
        ("number", float("nan")),
        ("number", 2**60),
        ("boolean", "true"),
        ("boolean", 1),
        ("date", "2023-02-29"),
        ("date", "2024-1-5"),
        ("date", 20240105),
    ],
)
def test_json_values_that_do_not_fit_are_refused(type_: str, value: Any) -> None:
    with pytest.raises(AttributeValueError):
        logic.coerce_json(type_, value)


@pytest.mark.parametrize(
    ("type_", "cell", "value"),
    [
        ("number", " 42 ", 42),
        ("number", "-4.5", -4.5),
        ("number", "1e3", 1000),
        ("boolean", "TRUE", True),
        ("boolean", "false", False),
        ("date", "1990-12-31", "1990-12-31"),
        ("string", " kept as is ", " kept as is "),
    ],
)
def test_cells_parse_and_format_back(type_: str, cell: str, value: Any) -> None:
    parsed = logic.parse_cell(type_, cell)
    assert parsed == value and type(parsed) is type(value)
    assert logic.parse_cell(type_, logic.format_cell(parsed)) == parsed


@pytest.mark.parametrize(
    ("type_", "cell"),
    [("number", "12abc"), ("number", "inf"), ("boolean", "yes"), ("date", "31/12/1990")],
)
def test_bad_cells_are_refused(type_: str, cell: str) -> None:
    with pytest.raises(AttributeValueError):
        logic.parse_cell(type_, cell)


def test_apply_attributes_merges_removes_and_names_every_bad_key() -> None:
    stored = {"vip": True, "city": "Ankara", "gone": "undeclared now"}
    merged = logic.apply_attributes(TYPES, stored, {"score": 7, "city": None})
    assert merged == {"vip": True, "score": 7}
    with pytest.raises(InvalidInput) as refused:
        logic.apply_attributes(TYPES, stored, {"vip": "yes", "nope": 1, "birthday": "soon"})
    paths = {i["path"]: i["code"] for i in refused.value.extra["issues"]}  # type: ignore[union-attr]
    assert paths == {
        "attributes.vip": "invalid_boolean",
        "attributes.nope": "unknown_attribute",
        "attributes.birthday": "invalid_date",
    }


def test_attribute_definitions_are_checked() -> None:
    logic.check_defs(DEFS)
    with pytest.raises(InvalidInput) as refused:
        logic.check_defs([AttributeDef("phone", "string"), AttributeDef("Bad", "string")] * 2)
    codes = [i["code"] for i in refused.value.extra["issues"]]  # type: ignore[union-attr]
    assert codes.count("invalid_key") == 4 and codes.count("duplicate") == 2


# -- CSV -----------------------------------------------------------------------------------


def _csv(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def _issue_lines(exc: InvalidInput) -> list[str]:
    return [i["path"] for i in exc.extra["issues"]]  # type: ignore[union-attr]


def test_a_good_file_parses_every_row() -> None:
    data = _csv(
        "phone,name,vip,score,birthday,city",
        "+905551110001,Ayşe,true,10,1990-01-02,İzmir",
        '+905551110002,"Doe, John",,,,"two\nlines"',
        "",
        "+905551110003,,false,,,",
    )
    rows = logic.parse_import(data, DEFS)
    assert [(r.line, r.jid, r.display_name) for r in rows] == [
        (2, "905551110001@s.whatsapp.net", "Ayşe"),
        (3, "905551110002@s.whatsapp.net", "Doe, John"),
        (6, "905551110003@s.whatsapp.net", None),
    ]
    assert rows[0].attributes == {
        "vip": True,
        "score": 10,
        "birthday": "1990-01-02",
        "city": "İzmir",
    }
    assert rows[1].attributes == {"city": "two\nlines"}
    assert rows[2].attributes == {"vip": False}


def test_every_bad_row_is_named_by_its_line() -> None:
    data = _csv(
        "phone,name,vip,score",
        "+905551110001,A,true,1",
        "905551110002,B,,",  # no +
        "+905551110003,C,maybe,",  # not a boolean
        "+905551110004,D,,",
        "+905551110001,E,,",  # duplicate of line 2
        "+905551110005,F,,1,extra",  # cell count
        "+905551110006,G,,x",  # not a number
    )
    with pytest.raises(InvalidInput) as refused:
        logic.parse_import(data, DEFS)
    assert _issue_lines(refused.value) == [
        "line 3.phone",
        "line 4.vip",
        "line 6.phone",
        "line 7",
        "line 8.score",
    ]
    assert "line(s) 3, 4, 6, 7, 8" in refused.value.message
    assert "nothing was imported" in refused.value.message


@pytest.mark.parametrize(
    ("data", "line", "words"),
    [
        (b"", 1, "empty file"),
        (b"name,vip\r\nA,true\r\n", 1, "no phone column"),
        (b"phone,colour\r\n+905551110001,red\r\n", 1, "'colour'"),
        (b"phone,phone\r\n", 1, "twice"),
        (b"phone,name\r\n+905551110001,ok\r\n+905551110002,\xff\xfe\r\n", 3, "UTF-8"),
        (b'phone,name\r\n+905551110001,"open\r\n+905551110002,x\r\n', 2, "quoting"),
        (b"phone,name\r\n+905551110001,a\x00b\r\n", 2, "NUL"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_line(data: bytes, line: int, words: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        logic.parse_import(data, DEFS)
    assert _issue_lines(refused.value) == [f"line {line}"]
    assert words in refused.value.message and "nothing was imported" in refused.value.message


def test_too_many_rows_is_malformed() -> None:
    lines = ["phone"] + [f"+9055511{i:05d}" for i in range(11)]
    with pytest.raises(InvalidInput, match="more than 10 rows"):
        logic.parse_import(_csv(*lines), DEFS, max_rows=10)
    assert len(logic.parse_import(_csv(*lines[:11]), DEFS, max_rows=10)) == 10


def test_export_cells_read_back_by_the_import() -> None:
    attributes = {"vip": False, "score": 2.5, "birthday": "2000-01-01", "city": 'a "quoted", b'}
    text = logic.csv_text(
        [
            logic.export_header(DEFS),
            logic.export_cells(DEFS, "+905551110001", "Ayşe, K.", attributes),
            logic.export_cells(DEFS, "+905551110002", None, {}),
        ]
    )
    rows = logic.parse_import(text.encode(), DEFS)
    assert rows[0].display_name == "Ayşe, K." and rows[0].attributes == attributes
    assert rows[1].display_name is None and rows[1].attributes == {}


# -- the store -----------------------------------------------------------------------------


def _run(open_db: OpenDb, db_path: Path, body: Any) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            async with db.write() as conn:
                await messaging_store.create_account(
                    conn,
                    account_id="a1",
                    name="a1",
                    engine="sandbox",
                    engine_settings={},
                    settings={},
                    now=1.0,
                )
                await store.replace_attribute_defs(conn, "a1", DEFS, 1.0)
            await body(db)

    asyncio.run(main())


async def _import(db: Database, data: bytes) -> tuple[int, int]:
    rows = logic.parse_import(data, await store.attribute_defs(db, "a1"))
    async with db.write() as conn:
        return await store.import_rows(conn, "a1", rows, by=BY, now=2.0)


def test_import_search_update_and_events(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        created = await _import(
            db,
            _csv(
                "phone,name,vip,city",
                "+905551110001,Ayşe Öztürk,true,İzmir",
                "+905551110002,Bob,,",
                "+14155550100,,false,",
            ),
        )
        assert created == (3, 0)
        # A second import updates, keeps what its empty cells leave out.
        assert await _import(db, _csv("phone,name,city", "+905551110002,,Ankara")) == (0, 1)
        bob = await store.contact_row(db, "a1", "905551110002@s.whatsapp.net")
        assert bob["display_name"] == "Bob" and orjson.loads(bob["attributes"]) == {
            "city": "Ankara"
        }

        async def search(**filters: Any) -> list[str]:
            rows, _ = await store.list_contacts(db, "a1", store.ContactFilter(**filters), limit=50)
            return [r["phone"] for r in rows]

        assert await search(q="ztürk") == ["+905551110001"]
        assert await search(q="bo") == ["+905551110002"]
        assert await search(q="555 0100") == ["+14155550100"]
        assert await search(q="+90 555") == ["+905551110001", "+905551110002"]
        assert await search(q="%") == []  # LIKE wildcards are plain text

        async with db.write() as conn:
            await store.update_contact(
                conn,
                "a1",
                "14155550100@s.whatsapp.net",
                display_name="Carol",
                set_display_name=True,
                attributes={"score": 3},
                by=BY,
                now=3.0,
            )
            await store.set_blocked(conn, "a1", "14155550100@s.whatsapp.net", True, by=BY, now=4.0)
        assert await search(blocked=True) == ["+14155550100"]
        events = await db.fetchall("SELECT type, data FROM events ORDER BY id")
        assert [e["type"] for e in events] == [
            "contacts.imported",
            "contacts.imported",
            "contact.updated",
            "contact.updated",
        ]
        last = orjson.loads(events[-1]["data"])
        assert last["changes"] == ["blocked"] and last["blocked"] is True
        assert last["by"] == BY and last["name"] == "Carol"

    _run(open_db, db_path, body)


def test_attribute_declarations_remove_values_and_refuse_type_changes(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        await _import(db, _csv("phone,vip,city", "+905551110001,true,Bursa"))
        async with db.write() as conn:
            with pytest.raises(Conflict, match="'vip' is a boolean held by 1"):
                await store.replace_attribute_defs(conn, "a1", [AttributeDef("vip", "string")], 5.0)
        async with db.write() as conn:
            removed = await store.replace_attribute_defs(
                conn, "a1", [AttributeDef("city", "string"), AttributeDef("score", "string")], 5.0
            )
        assert sorted(removed) == ["birthday", "vip"]
        row = await store.contact_row(db, "a1", "905551110001@s.whatsapp.net")
        assert orjson.loads(row["attributes"]) == {"city": "Bursa"}
        # score held no values: its type may change.
        async with db.write() as conn:
            await store.replace_attribute_defs(conn, "a1", [AttributeDef("score", "number")], 6.0)
        assert await store.attribute_defs(db, "a1") == [AttributeDef("score", "number")]

    _run(open_db, db_path, body)
