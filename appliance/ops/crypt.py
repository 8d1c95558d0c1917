"""Optional encryption of backup archives with age (pyrage): a passphrase (scrypt) or
one or more X25519 recipients (``age1...``; the matching identity file restores).

An encrypted archive is the age file of the whole gzip'd tar, so the manifest is
encrypted too. A passphrase archive is encrypted in memory (age's scrypt mode in
pyrage takes bytes): fine for archives of some GB on a machine with that much RAM;
recipients stream from file to file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage

from appliance.ops.archive import ArchiveError

AGE_HEADER = b"age-encryption.org/v1"


@dataclass(frozen=True, repr=False)
class Encryption:
    passphrase: str | None = None
    recipients: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return "Encryption(<redacted>)"

    @property
    def enabled(self) -> bool:
        return bool(self.passphrase or self.recipients)


@dataclass(frozen=True, repr=False)
class Decryption:
    passphrase: str | None = None
    identity_files: list[Path] = field(default_factory=list)

    def __repr__(self) -> str:
        return "Decryption(<redacted>)"


def is_encrypted(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(len(AGE_HEADER)) == AGE_HEADER


def read_passphrase(source: str) -> str:
    """The first line of a file (``-``: standard input), without its newline."""
    import sys

    text = sys.stdin.readline() if source == "-" else Path(source).read_text()
    passphrase = text.splitlines()[0] if text else ""
    if len(passphrase) < 12:
        raise ArchiveError("the passphrase needs at least 12 characters")
    return passphrase


def encrypt(plain: Path, out: Path, how: Encryption) -> None:
    """Encrypt ``plain`` into ``out`` (created 0600 by the caller's umask rules)."""
    try:
        if how.passphrase:
            data: bytes = pyrage.passphrase.encrypt(plain.read_bytes(), how.passphrase)
            _write_private(out, data)
            return
        recipients: list[Any] = [pyrage.x25519.Recipient.from_str(r) for r in how.recipients]
        _write_private(out, b"")
        pyrage.encrypt_file(str(plain), str(out), recipients)
    except (pyrage.RecipientError, pyrage.EncryptError, ValueError) as exc:
        raise ArchiveError(f"could not encrypt the archive: {exc}") from exc


def decrypt(encrypted: Path, out: Path, how: Decryption) -> None:
    try:
        if how.passphrase:
            data: bytes = pyrage.passphrase.decrypt(encrypted.read_bytes(), how.passphrase)
            _write_private(out, data)
            return
        if not how.identity_files:
            raise ArchiveError(
                "the archive is encrypted: pass --passphrase-file or --identity FILE"
            )
        identities: list[Any] = []
        for path in how.identity_files:
            for line in path.read_text().splitlines():
                if line.startswith("AGE-SECRET-KEY-"):
                    identities.append(pyrage.x25519.Identity.from_str(line.strip()))
        if not identities:
            raise ArchiveError("no AGE-SECRET-KEY- line in the identity file(s)")
        _write_private(out, b"")
        pyrage.decrypt_file(str(encrypted), str(out), identities)
    except (pyrage.DecryptError, pyrage.IdentityError, ValueError, OSError) as exc:
        raise ArchiveError(f"could not decrypt the archive (wrong key?): {exc}") from exc


def _write_private(path: Path, data: bytes) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
