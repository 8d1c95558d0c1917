"""Encryption of stored third-party credentials and replayable responses (data key)."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class DataCipher:
    """AES-256-GCM with a key derived from the ``data-key`` secret file."""

    def __init__(self, data_key: bytes) -> None:
        self._aead = AESGCM(hashlib.sha256(b"appliance data key v1\x00" + data_key).digest())

    def encrypt(self, plaintext: bytes, *, context: bytes = b"") -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context)

    def decrypt(self, blob: bytes, *, context: bytes = b"") -> bytes:
        if blob[:1] != _VERSION:
            raise ValueError("unknown ciphertext version")
        return self._aead.decrypt(blob[1:13], blob[13:], context)
