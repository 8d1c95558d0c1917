"""Unit tests for appliance/crypto.py (AES-256-GCM with the data key)."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from appliance.crypto import DataCipher

KEY = b"d" * 43
CTX = b"user:3|8e03978e-40d5-43e8-bc93-6894a57f9324"


@pytest.fixture
def cipher() -> DataCipher:
    return DataCipher(KEY)


@pytest.mark.parametrize("plaintext", [b"", b"x", b'{"key": "apk_..."}', bytes(range(256)) * 40])
def test_roundtrip(cipher: DataCipher, plaintext: bytes) -> None:
    blob = cipher.encrypt(plaintext, context=CTX)
    assert cipher.decrypt(blob, context=CTX) == plaintext
    assert DataCipher(KEY).decrypt(blob, context=CTX) == plaintext  # same key, new instance
    assert len(blob) == 1 + 12 + len(plaintext) + 16
    if len(plaintext) >= 8:  # shorter ones may occur in random bytes by chance
        assert plaintext not in blob


def test_roundtrip_without_context(cipher: DataCipher) -> None:
    assert cipher.decrypt(cipher.encrypt(b"secret")) == b"secret"


def test_fresh_nonce_each_time(cipher: DataCipher) -> None:
    a, b = cipher.encrypt(b"same", context=CTX), cipher.encrypt(b"same", context=CTX)
    assert a != b and a[1:13] != b[1:13]


def test_wrong_context_fails(cipher: DataCipher) -> None:
    blob = cipher.encrypt(b"secret", context=CTX)
    for other in (b"", b"user:4|" + CTX[7:], CTX + b"x"):
        with pytest.raises(InvalidTag):
            cipher.decrypt(blob, context=other)
    with pytest.raises(InvalidTag):
        cipher.decrypt(cipher.encrypt(b"secret"), context=CTX)


def test_different_key_fails(cipher: DataCipher) -> None:
    blob = cipher.encrypt(b"secret", context=CTX)
    for other in (b"e" * 43, KEY + b"\n", KEY[:-1]):
        with pytest.raises(InvalidTag):
            DataCipher(other).decrypt(blob, context=CTX)


@pytest.mark.parametrize("index", [1, 12, 13, 14, -16, -1])  # nonce, ciphertext, tag
def test_tampered_blob_fails(cipher: DataCipher, index: int) -> None:
    blob = bytearray(cipher.encrypt(b"secret payload", context=CTX))
    blob[index] ^= 0x01
    with pytest.raises(InvalidTag):
        cipher.decrypt(bytes(blob), context=CTX)


def test_truncated_or_extended_blob_fails(cipher: DataCipher) -> None:
    blob = cipher.encrypt(b"secret payload", context=CTX)
    with pytest.raises(InvalidTag):
        cipher.decrypt(blob[:-1], context=CTX)
    with pytest.raises(InvalidTag):
        cipher.decrypt(blob + b"\x00", context=CTX)


def test_unknown_version_fails(cipher: DataCipher) -> None:
    blob = cipher.encrypt(b"secret", context=CTX)
    with pytest.raises(ValueError, match="version"):
        cipher.decrypt(b"\x02" + blob[1:], context=CTX)
    with pytest.raises(ValueError, match="version"):
        cipher.decrypt(b"", context=CTX)
