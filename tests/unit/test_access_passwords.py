"""Unit tests for appliance/auth/passwords.py (argon2id)."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.auth import passwords
from appliance.auth.passwords import hash_password, needs_rehash, verify_password

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


def test_hash_is_argon2id_and_salted(stored: str) -> None:
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert hash_password(PASSWORD) != stored  # a fresh salt each time
    assert not needs_rehash(stored)


def test_roundtrip(stored: str) -> None:
    assert verify_password(stored, PASSWORD) is True


def test_wrong_password(stored: str) -> None:
    assert verify_password(stored, PASSWORD + "x") is False
    assert verify_password(stored, "") is False
    assert verify_password(stored, PASSWORD.upper()) is False


def test_garbage_hash_is_false_not_an_exception() -> None:
    assert verify_password("not-a-hash", PASSWORD) is False
    assert verify_password("", PASSWORD) is False


def test_unicode_password_roundtrip() -> None:
    pw = "pässwörd ✓ 密码 long enough"
    assert verify_password(hash_password(pw), pw) is True


class _SpyHasher:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.verified: list[str] = []

    def verify(self, hash_: str, password: str) -> bool:
        self.verified.append(hash_)
        return bool(self.real.verify(hash_, password))


def test_no_such_user_is_false_and_still_verifies(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _SpyHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", spy)
    assert verify_password(None, PASSWORD) is False
    # Real work against the dummy hash, so timing does not reveal unknown usernames.
    assert spy.verified == [passwords._DUMMY_HASH]
    assert passwords._DUMMY_HASH.startswith("$argon2id$")


def test_no_such_user_with_the_dummy_password_is_still_false() -> None:
    # The password behind the dummy hash must not log in a non-existent user.
    assert verify_password(None, "appliance: no such user") is False
