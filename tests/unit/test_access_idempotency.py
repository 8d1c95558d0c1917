"""Unit tests for the pure parts of appliance/api/idempotency.py."""

from __future__ import annotations

import re
import uuid

import pytest

from appliance.api.idempotency import HEADER, fingerprint, parse_key
from appliance.errors import ClientError, InvalidInput


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc", "abc"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"abc"', "abc"),
        ("  abc  ", "abc"),  # optional whitespace around a header value
        ("a!#$%&'()*+,-./:;<=>?@[]^_`{|}~z", "a!#$%&'()*+,-./:;<=>?@[]^_`{|}~z"),
        ("x", "x"),
        ("k" * 255, "k" * 255),
        ('"' + "k" * 255 + '"', "k" * 255),
    ],
)
def test_parse_key_accepts_plain_and_quoted(raw: str, key: str) -> None:
    assert parse_key(raw) == key


def test_parse_key_accepts_a_uuid4() -> None:
    value = str(uuid.uuid4())
    assert parse_key(value) == value
    assert parse_key(f'"{value}"') == value


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        '""',
        "k" * 256,
        '"' + "k" * 256 + '"',
        "a b",
        '"a b"',
        "a\tb",
        "a\x00b",
        "a\x1fb",
        "a\x7fb",
        "a\nb",
        'a"b',
        "ключ",  # non-ASCII
        "café",
    ],
)
def test_parse_key_rejects(raw: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_key(raw)
    err = info.value
    assert isinstance(err, ClientError) and err.http_status == 400
    assert HEADER in err.message
    issues = err.extra["issues"]
    assert isinstance(issues, list) and issues and issues[0]["path"] == HEADER


def test_fingerprint_is_stable_sha256_hex() -> None:
    a = fingerprint("POST", "/api/users", b'{"username":"maria"}')
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert a == fingerprint("POST", "/api/users", b'{"username":"maria"}')


def test_fingerprint_differs_by_method_path_and_body() -> None:
    base = fingerprint("POST", "/api/users", b"{}")
    assert fingerprint("PUT", "/api/users", b"{}") != base
    assert fingerprint("POST", "/api/api-keys", b"{}") != base
    assert fingerprint("POST", "/api/users", b"{ }") != base
    assert fingerprint("POST", "/api/users", b"") != base


def test_fingerprint_is_unambiguous_across_field_boundaries() -> None:
    # Plain concatenation would make each pair equal ("/ab/c", "POST/x", ...).
    assert fingerprint("POST", "/a", b"b/c") != fingerprint("POST", "/ab", b"/c")
    assert fingerprint("POST", "/x", b"") != fingerprint("POS", "T/x", b"")
    assert fingerprint("POST", "", b"/x") != fingerprint("POST", "/x", b"")
    assert fingerprint("", "", b"") != fingerprint("", "", b"\x00")


def test_a_claim_whose_request_was_cancelled_is_forgotten_once_it_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The claim is group-committed: a client hanging up while it waits does not stop
    it, so the key it claimed (outcome None) is forgotten, or a retry would get 409."""
    import asyncio

    from appliance.api import idempotency

    forgotten: list[tuple[str, str]] = []

    async def forget(scope: str, key: str) -> None:
        forgotten.append((scope, key))

    monkeypatch.setattr(idempotency, "_forget", forget)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        claimed: asyncio.Future[object] = loop.create_future()
        claimed.set_result(None)  # this request claimed the key
        replayed: asyncio.Future[object] = loop.create_future()
        replayed.set_result(object())  # a record existed: nothing of ours to forget
        failed: asyncio.Future[object] = loop.create_future()
        failed.set_exception(RuntimeError("database closing"))
        cancelled: asyncio.Future[object] = loop.create_future()
        cancelled.cancel()
        for future, key in ((claimed, "k1"), (replayed, "k2"), (failed, "k3"), (cancelled, "k4")):
            idempotency._forget_if_claimed(future, "key:1", key)  # type: ignore[arg-type]
        for _ in range(10):
            await asyncio.sleep(0)
        assert forgotten == [("key:1", "k1")]

    asyncio.run(main())
