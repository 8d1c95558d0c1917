"""The app's JSON provider (orjson) answers the JSON the standard library's did."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import uuid

import pytest
from pydantic import BaseModel
from quart import Quart
from quart_schema import QuartSchema

from appliance.api.json_provider import OrjsonProvider, install_json_provider


class Model(BaseModel):
    name: str
    when: datetime.datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int


def apps() -> tuple[Quart, Quart]:
    old, new = Quart("old"), Quart("new")
    QuartSchema(old)
    QuartSchema(new)
    install_json_provider(new)
    assert isinstance(new.json, OrjsonProvider)
    assert not isinstance(old.json, OrjsonProvider)
    return old, new


def body(app: Quart, value: object) -> bytes:
    async def encode() -> bytes:
        async with app.app_context():
            return await app.json.response(value).get_data()  # type: ignore[no-any-return]

    return asyncio.run(encode())


VALUES = [
    {"status": "ok", "pid": 1234, "b": [1, 2.5, None, True], "a": {"z": 1, "y": "ş ğ ü ç 🙂"}},
    {
        "when": datetime.datetime(2026, 12, 2, 13, 0, tzinfo=datetime.UTC),
        "day": datetime.date(2026, 12, 2),
    },
    {"id": uuid.UUID("12345678-1234-5678-1234-567812345678"), "n": [3, -1.5e300]},
    {"model": Model(name="x", when=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))},
    {"point": Point(1, 2)},
    [],
    "text",
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_the_same_json_as_the_standard_library(value: object) -> None:
    old, new = apps()
    before, after = body(old, value), body(new, value)
    assert after.endswith(b"\n") and before.endswith(b"\n")
    assert json.loads(after) == json.loads(before)
    assert b" " not in after.replace(b"\xc5\x9f \xc4\x9f \xc3\xbc \xc3\xa7 ", b"")  # compact


def test_keys_sorted_and_utf8() -> None:
    _, new = apps()
    assert body(new, {"b": 1, "a": "ç"}) == '{"a":"ç","b":1}\n'.encode()


def test_what_orjson_cannot_encode_falls_back() -> None:
    old, new = apps()
    huge = {"n": 2**70}
    assert json.loads(body(new, huge)) == huge
    errors = []
    for app in (old, new):  # what cannot be encoded fails as it did
        with pytest.raises(Exception) as failure:
            body(app, {"x": object()})
        errors.append(type(failure.value))
    assert errors[0] is errors[1]
