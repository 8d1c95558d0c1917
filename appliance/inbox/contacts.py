"""Contacts' display names and typed custom attributes, and the CSV import/export format.

Plain functions, no I/O: the store (``contacts_store``) and the routes call them.

Custom attributes are declared per account (``contact_attribute_defs``: a key and one
of the types ``string``, ``number``, ``boolean``, ``date``); a contact's attributes are
a JSON object of declared keys. Values travel as JSON of their type (a date is the
string ``YYYY-MM-DD``) and are validated against the declaration.

CSV (UTF-8, comma-separated, RFC 4180 quoting, a header line first)::

    phone,name,<attribute key>,...
    +905551112233,Ayşe Öztürk,true,...

``phone`` (E.164) is required; ``name`` is the display name; every other column is a
declared attribute, its cells written as text (``true``/``false``, numbers, dates as
``YYYY-MM-DD``). An empty cell leaves the name or attribute as it is. Export writes the
same format, so an exported file imports again unchanged.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, get_args

import orjson
from pydantic import BaseModel, Field

from appliance.errors import N_, Conflict, InvalidInput

AttributeType = Literal["string", "number", "boolean", "date"]
ATTRIBUTE_TYPES: tuple[str, ...] = get_args(AttributeType)
AttributeValue = str | int | float | bool


class AttributeTypeHeld(Conflict):
    """A declared attribute's type cannot change while contacts hold a value for it.
    The message is the API's (English, unchanged); the facts are kept apart so the
    panel can say the same in the user's language."""

    def __init__(self, key: str, old_type: str, new_type: str, holders: int) -> None:
        super().__init__(
            f"attribute {key!r} is a {old_type} held by {holders} contact(s); "
            f"leave it out first (which removes those values) to make it a {new_type}"
        )
        self.key = key
        self.old_type = old_type
        self.new_type = new_type
        self.holders = holders


KEY_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
_KEY = re.compile(KEY_PATTERN)
RESERVED_KEYS = frozenset({"phone", "name"})
MAX_ATTRIBUTE_DEFS = 50
MAX_STRING_LENGTH = 1024
MAX_DISPLAY_NAME_LENGTH = 256
MAX_IMPORT_ROWS = 100_000
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
# Numbers beyond this lose integer precision in JSON clients (2**53).
MAX_SAFE_INTEGER = 2**53


class AttributeValueError(ValueError):
    """A value that does not fit its attribute's type (the message is for the caller)."""


@dataclass(frozen=True)
class AttributeDef:
    key: str
    type: AttributeType


def check_key(key: str) -> None:
    if not _KEY.match(key):
        raise AttributeValueError(
            N_(
                "an attribute key is 1 to 64 characters: a lower-case letter, then lower-case "
                "letters, digits or _"
            )
        )
    if key in RESERVED_KEYS:
        raise AttributeValueError(
            N_("{key} is a column of its own, not an attribute key", key=repr(key))
        )


def check_defs(defs: Sequence[AttributeDef]) -> None:
    """InvalidInput naming every bad definition (key format, duplicates, too many)."""
    issues: list[dict[str, str]] = []
    seen: set[str] = set()
    if len(defs) > MAX_ATTRIBUTE_DEFS:
        issues.append(
            {
                "path": "items",
                "message": f"at most {MAX_ATTRIBUTE_DEFS} attributes",
                "code": "too_long",
            }
        )
    for i, d in enumerate(defs):
        try:
            check_key(d.key)
        except AttributeValueError as exc:
            issues.append({"path": f"items.{i}.key", "message": str(exc), "code": "invalid_key"})
        if d.key in seen:
            issues.append(
                {"path": f"items.{i}.key", "message": "declared twice", "code": "duplicate"}
            )
        seen.add(d.key)
    if issues:
        raise InvalidInput(N_("invalid attribute definitions; see issues"), issues=issues)


# -- values --------------------------------------------------------------------------------


def _number(value: float | int) -> int | float:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AttributeValueError(N_("must be a finite number"))
        if value.is_integer() and abs(value) < MAX_SAFE_INTEGER:
            return int(value)
    elif abs(value) > MAX_SAFE_INTEGER:
        raise AttributeValueError(
            N_("must be between -{limit} and {limit}", limit=MAX_SAFE_INTEGER)
        )
    return value


def _date(text: str) -> str:
    if not _DATE.match(text):
        raise AttributeValueError(N_("must be a date written YYYY-MM-DD"))
    try:
        date.fromisoformat(text)
    except ValueError:
        raise AttributeValueError(N_("must be a date written YYYY-MM-DD (no such day)")) from None
    return text


def _string(text: str) -> str:
    if len(text) > MAX_STRING_LENGTH:
        raise AttributeValueError(N_("at most {limit} characters", limit=MAX_STRING_LENGTH))
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise AttributeValueError(N_("control characters are not allowed"))
    return text


def coerce_json(type_: str, value: Any) -> AttributeValue:
    """A JSON value (from an API body) as the stored value of an attribute of ``type_``;
    AttributeValueError when it does not fit. No conversions: ``"5"`` is not a number."""
    if type_ == "string":
        if not isinstance(value, str):
            raise AttributeValueError(N_("must be a string"))
        return _string(value)
    if type_ == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AttributeValueError(N_("must be a number"))
        return _number(value)
    if type_ == "boolean":
        if not isinstance(value, bool):
            raise AttributeValueError(N_("must be true or false"))
        return value
    if type_ == "date":
        if not isinstance(value, str):
            raise AttributeValueError(N_("must be a date written YYYY-MM-DD"))
        return _date(value)
    raise AttributeValueError(N_("unknown attribute type {type}", type=repr(type_)))


def parse_cell(type_: str, text: str) -> AttributeValue:
    """A CSV cell (not empty) as the stored value of an attribute of ``type_``."""
    if type_ == "string":
        return _string(text)
    if type_ == "number":
        stripped = text.strip()
        if not _NUMBER.match(stripped):
            raise AttributeValueError(N_("must be a number such as 42 or 4.5"))
        return _number(float(stripped) if any(c in stripped for c in ".eE") else int(stripped))
    if type_ == "boolean":
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise AttributeValueError(N_("must be true or false"))
        return lowered == "true"
    if type_ == "date":
        return _date(text.strip())
    raise AttributeValueError(N_("unknown attribute type {type}", type=repr(type_)))


def format_cell(value: Any) -> str:
    """A stored value as its CSV cell (what ``parse_cell`` reads back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def apply_attributes(
    defs: Mapping[str, str], stored: Mapping[str, Any], changes: Mapping[str, Any]
) -> dict[str, AttributeValue]:
    """``stored`` with ``changes`` applied (a null value removes the key); keys that are
    no longer declared are dropped. InvalidInput naming every bad key or value."""
    issues: list[dict[str, str]] = []
    result: dict[str, AttributeValue] = {k: v for k, v in stored.items() if k in defs}
    for key, value in changes.items():
        path = f"attributes.{key}"
        if key not in defs:
            issues.append(
                {
                    "path": path,
                    "message": "not a declared attribute of this account "
                    "(declare it with PUT .../contact-attributes)",
                    "code": "unknown_attribute",
                }
            )
            continue
        if value is None:
            result.pop(key, None)
            continue
        try:
            result[key] = coerce_json(defs[key], value)
        except AttributeValueError as exc:
            issues.append({"path": path, "message": str(exc), "code": f"invalid_{defs[key]}"})
    if issues:
        raise InvalidInput(N_("invalid attributes; see issues"), issues=issues)
    return result


def clean_display_name(name: str) -> str | None:
    """A display name as stored: trimmed, None when empty; ValueError when unfit."""
    name = name.strip()
    if len(name) > MAX_DISPLAY_NAME_LENGTH:
        raise ValueError(N_("at most {limit} characters", limit=MAX_DISPLAY_NAME_LENGTH))
    if any(ord(c) < 32 for c in name):
        raise ValueError(N_("control characters are not allowed"))
    return name or None


def phone_jid(phone: str) -> str:
    """The WhatsApp jid of an E.164 number; ValueError when it is not one."""
    phone = phone.strip()
    if not _E164.match(phone):
        raise ValueError(N_("must be an E.164 phone number such as +905551112233"))
    return f"{phone[1:]}@s.whatsapp.net"


# -- CSV -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRow:
    line: int
    jid: str
    phone: str
    display_name: str | None  # None: leave as it is
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


def _line_issue(line: int, column: str | None, message: str, code: str) -> dict[str, str]:
    path = f"line {line}" + (f".{column}" if column else "")
    return {"path": path, "message": message, "code": code}


def _malformed(message: str, line: int, code: str = "malformed") -> InvalidInput:
    return InvalidInput(
        f"the file is not a contacts CSV: {message} (line {line}); nothing was imported",
        issues=[_line_issue(line, None, message, code)],
    )


def parse_import(
    data: bytes, defs: Sequence[AttributeDef], *, max_rows: int = MAX_IMPORT_ROWS
) -> list[ImportRow]:
    """Every row of a contacts CSV, validated; InvalidInput when the file is malformed
    (its line) or when any row is bad (every bad line, in order). Nothing is partial:
    the caller imports the rows only when this returns."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _malformed(N_("not UTF-8 text"), line, "encoding") from None
    if "\x00" in text:
        raise _malformed(N_("NUL bytes in the text"), text[: text.index("\x00")].count("\n") + 1)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise _malformed(
            N_("bad CSV quoting ({reason})", reason=exc), reader.line_num or 1
        ) from None
    if header is None or not any(cell.strip() for cell in header):
        raise _malformed(N_("empty file: the first line names the columns (phone,name,...)"), 1)
    columns = [c.strip() for c in header]
    types = {d.key: d.type for d in defs}
    header_issues: list[str] = []
    if "phone" not in columns:
        header_issues.append("no phone column")
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            header_issues.append(f"column {column!r} appears twice")
        seen.add(column)
        if column not in RESERVED_KEYS and column not in types:
            header_issues.append(f"column {column!r} is not phone, name or a declared attribute")
    if header_issues:
        raise _malformed("; ".join(header_issues), 1, "bad_header")

    rows: list[ImportRow] = []
    issues: list[dict[str, str]] = []
    first_line_of: dict[str, int] = {}
    count = 0
    next_line = reader.line_num + 1  # the physical line the next record starts on
    while True:
        start = next_line
        try:
            record = next(reader, None)
        except csv.Error as exc:
            raise _malformed(N_("bad CSV quoting ({reason})", reason=exc), start) from None
        if record is None:
            break
        next_line = reader.line_num + 1
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # a blank line
        count += 1
        if count > max_rows:
            raise _malformed(
                N_("more than {limit} rows; split the file", limit=max_rows), start, "too_many"
            )
        if len(record) != len(columns):
            issues.append(
                _line_issue(
                    start,
                    None,
                    f"{len(record)} cells, the header has {len(columns)}",
                    "cell_count",
                )
            )
            continue
        cells = dict(zip(columns, record, strict=True))
        row_issues: list[dict[str, str]] = []
        phone = cells["phone"].strip()
        jid = ""
        try:
            jid = phone_jid(phone)
        except ValueError as exc:
            row_issues.append(_line_issue(start, "phone", str(exc), "invalid_phone"))
        else:
            if jid in first_line_of:
                row_issues.append(
                    _line_issue(
                        start,
                        "phone",
                        f"{phone} is also on line {first_line_of[jid]}",
                        "duplicate",
                    )
                )
            else:
                first_line_of[jid] = start
        display_name = None
        if "name" in cells:
            try:
                display_name = clean_display_name(cells["name"])
            except ValueError as exc:
                row_issues.append(_line_issue(start, "name", str(exc), "invalid_name"))
        attributes: dict[str, AttributeValue] = {}
        for key, cell in cells.items():
            if key in RESERVED_KEYS or cell == "":
                continue
            try:
                attributes[key] = parse_cell(types[key], cell)
            except AttributeValueError as exc:
                row_issues.append(_line_issue(start, key, str(exc), f"invalid_{types[key]}"))
        if row_issues:
            issues.extend(row_issues)
            continue
        rows.append(ImportRow(start, jid, phone, display_name, attributes))
    if issues:
        lines = sorted({int(i["path"].split(".")[0].removeprefix("line ")) for i in issues})
        shown = ", ".join(str(n) for n in lines[:20]) + (", ..." if len(lines) > 20 else "")
        raise InvalidInput(
            N_(
                "{count} row(s) are invalid, on line(s) {lines}; nothing was imported",
                count=len(lines),
                lines=shown,
            ),
            issues=issues,
        )
    return rows


def export_header(defs: Sequence[AttributeDef]) -> list[str]:
    return ["phone", "name", *(d.key for d in defs)]


def export_cells(
    defs: Sequence[AttributeDef],
    phone: str,
    display_name: str | None,
    attributes: Mapping[str, Any],
) -> list[str]:
    cells = [phone, display_name or ""]
    cells.extend(format_cell(attributes[d.key]) if d.key in attributes else "" for d in defs)
    return cells


def csv_text(rows: Iterable[Sequence[str]]) -> str:
    """Rows as CSV text (RFC 4180: CRLF line ends, quoting where needed)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows(rows)
    return out.getvalue()


# -- the contact as answered and in events ---------------------------------------------------


class ContactOut(BaseModel):
    id: str = Field(description="The contact's jid, e.g. 905551112233@s.whatsapp.net")
    phone: str | None = Field(description="E.164, when the jid is a phone number")
    name: str | None = Field(description="The display name, else the name WhatsApp gave")
    display_name: str | None = Field(description="The name the team gave the contact")
    whatsapp_name: str | None = Field(description="The contact's own WhatsApp (push) name")
    attributes: dict[str, AttributeValue] = Field(
        description="Custom attributes: declared key -> value of the declared type "
        "(a date is a string YYYY-MM-DD)"
    )
    blocked: bool = Field(description="Blocked at WhatsApp through this account")
    updated_at: float


def contact_out(row: Any, defs: Mapping[str, str] | None = None) -> ContactOut:
    """A contacts row as answered; with ``defs``, only declared attributes are shown."""
    attributes = orjson.loads(row["attributes"])
    if defs is not None:
        attributes = {k: v for k, v in attributes.items() if k in defs}
    return ContactOut(
        id=row["jid"],
        phone=row["phone"],
        name=row["display_name"] or row["name"],
        display_name=row["display_name"],
        whatsapp_name=row["name"],
        attributes=attributes,
        blocked=bool(row["blocked"]),
        updated_at=row["updated_at"],
    )
