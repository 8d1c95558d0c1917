"""Unit tests for appliance/crypto.py (AES-256-GCM with the data key)."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from appliance.crypto import DataCipher, UnknownDataKey, blob_key_id, key_id

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
    assert len(blob) == 1 + 4 + 12 + len(plaintext) + 16  # version, key id, nonce, tag
    if len(plaintext) >= 8:  # shorter ones may occur in random bytes by chance
        assert plaintext not in blob


def test_roundtrip_without_context(cipher: DataCipher) -> None:
    assert cipher.decrypt(cipher.encrypt(b"secret")) == b"secret"


def test_fresh_nonce_each_time(cipher: DataCipher) -> None:
    a, b = cipher.encrypt(b"same", context=CTX), cipher.encrypt(b"same", context=CTX)
    assert a != b and a[5:17] != b[5:17]


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


@pytest.mark.parametrize("index", [1, 4, 5, 16, 17, 18, -16, -1])  # key id, nonce, sealed, tag
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
        cipher.decrypt(b"\x03" + blob[1:], context=CTX)
    with pytest.raises(ValueError, match="version"):
        cipher.decrypt(b"", context=CTX)


def _v1(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """A value stored before key ids: version 1, nonce, sealed."""
    import hashlib
    import os

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(hashlib.sha256(b"appliance data key v1\x00" + key).digest())
    nonce = os.urandom(12)
    return b"\x01" + nonce + aead.encrypt(nonce, plaintext, context)


def test_ciphertexts_name_their_key_and_the_previous_key_still_opens() -> None:
    old, new = DataCipher(KEY), DataCipher(b"n" * 43, previous=(KEY,))
    assert old.key_id != new.key_id and new.key_ids == (new.key_id, old.key_id)
    assert key_id(KEY) == old.key_id and KEY.hex() not in old.key_id
    blob = old.encrypt(b"secret", context=CTX)
    assert blob_key_id(blob) == old.key_id
    assert new.decrypt(blob, context=CTX) == b"secret"  # during a rotation
    assert not new.is_current(blob) and old.is_current(blob)
    fresh = new.encrypt(b"secret", context=CTX)
    assert new.is_current(fresh) and blob_key_id(fresh) == new.key_id
    with pytest.raises(UnknownDataKey, match=new.key_id):  # the old key alone cannot
        old.decrypt(fresh, context=CTX)
    with pytest.raises(UnknownDataKey):  # after the rotation, the old key is gone
        DataCipher(b"n" * 43).decrypt(blob, context=CTX)


def test_values_from_before_key_ids_open_with_either_key() -> None:
    blob = _v1(KEY, b"old value", CTX)
    assert blob_key_id(blob) is None
    assert DataCipher(KEY).decrypt(blob, context=CTX) == b"old value"
    assert DataCipher(b"n" * 43, previous=(KEY,)).decrypt(blob, context=CTX) == b"old value"
    assert not DataCipher(KEY).is_current(blob)
    with pytest.raises(InvalidTag):
        DataCipher(b"n" * 43).decrypt(blob, context=CTX)
