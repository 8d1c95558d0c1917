"""Encryption of stored third-party credentials and replayable responses (data key).

Ciphertexts name the key that made them: ``0x02 | key id (4 bytes) | nonce | sealed``.
The key id is a digest of the key, so it says nothing about the key itself. A cipher
holds the current key (it encrypts) and, while a rotation runs, the previous ones
(they only decrypt): ``appliancectl rotate data-key`` re-encrypts every stored value
under the new key, then drops the old one (runbook/secrets.md). Values written before
key ids (``0x01 | nonce | sealed``) open with whichever key made them.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_V1 = b"\x01"  # before key ids: version, nonce, sealed
_V2 = b"\x02"  # version, key id, nonce, sealed
KEY_ID_BYTES = 4


class UnknownDataKey(InvalidTag):
    """A ciphertext made with a data key this cipher does not hold."""


def key_id(data_key: bytes) -> str:
    """The public name of a data key: 8 hex digits of a digest, not of the key."""
    return hashlib.sha256(b"appliance data key id\x00" + data_key).digest()[:KEY_ID_BYTES].hex()


def _aead(data_key: bytes) -> AESGCM:
    return AESGCM(hashlib.sha256(b"appliance data key v1\x00" + data_key).digest())


def blob_key_id(blob: bytes) -> str | None:
    """The key id a ciphertext names; None for one made before key ids."""
    if blob[:1] == _V2 and len(blob) > 1 + KEY_ID_BYTES:
        return blob[1 : 1 + KEY_ID_BYTES].hex()
    return None


class DataCipher:
    """AES-256-GCM with keys derived from the ``data-key`` secret file.

    ``previous``: older data keys, still accepted for decryption (a rotation in
    progress); encryption always uses ``data_key``.
    """

    def __init__(self, data_key: bytes, *, previous: tuple[bytes, ...] = ()) -> None:
        self.key_id = key_id(data_key)
        self._current = _aead(data_key)
        self._keys: dict[str, AESGCM] = {}
        for key in (data_key, *previous):
            self._keys.setdefault(key_id(key), _aead(key))
        self._id_bytes = bytes.fromhex(self.key_id)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this cipher opens, the current one first."""
        return tuple(self._keys)

    def encrypt(self, plaintext: bytes, *, context: bytes = b"") -> bytes:
        nonce = os.urandom(12)
        return _V2 + self._id_bytes + nonce + self._current.encrypt(nonce, plaintext, context)

    def is_current(self, blob: bytes) -> bool:
        """Whether ``blob`` names the current key (it needs no re-encryption)."""
        return blob_key_id(blob) == self.key_id

    def decrypt(self, blob: bytes, *, context: bytes = b"") -> bytes:
        version = blob[:1]
        if version == _V2:
            kid = blob_key_id(blob)
            aead = self._keys.get(kid or "")
            if aead is None:
                raise UnknownDataKey(
                    f"made with data key id {kid}, which this appliance does not hold "
                    f"(it holds {', '.join(self._keys)})"
                )
            start = 1 + KEY_ID_BYTES
            return aead.decrypt(blob[start : start + 12], blob[start + 12 :], context)
        if version == _V1:
            for aead in self._keys.values():
                try:
                    return aead.decrypt(blob[1:13], blob[13:], context)
                except InvalidTag:
                    continue
            raise InvalidTag
        raise ValueError("unknown ciphertext version")
