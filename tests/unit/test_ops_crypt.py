"""Backup archives encrypted with age: a passphrase or X25519 recipients."""

from __future__ import annotations

import stat
from pathlib import Path

import pyrage
import pytest

from appliance.ops.archive import ArchiveError, write_backup
from appliance.ops.crypt import Decryption, Encryption, is_encrypted
from appliance.ops.restore import restore
from tests.unit.test_ops_backup import FakeControl, _event_ids, _events, _install, _tree_digest

PASSPHRASE = "correct horse battery staple"


def test_passphrase_archive_restores_and_a_wrong_one_changes_nothing(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    ids = _events(settings.database_path, 12)
    archive = write_backup(
        paths,
        settings,
        tmp_path / "b.tar.gz.age",
        include_secrets=True,
        encryption=Encryption(passphrase=PASSPHRASE),
    ).path
    assert is_encrypted(archive) and stat.S_IMODE(archive.stat().st_mode) == 0o600
    raw = archive.read_bytes()
    secret = (paths.secrets_dir / "data-key").read_text().strip().encode()
    assert b"manifest.json" not in raw and secret not in raw
    _events(settings.database_path, 4)
    before = _tree_digest(paths.prefix)
    for wrong in (Decryption(passphrase="not the passphrase at all"), Decryption()):
        control = FakeControl()
        with pytest.raises(ArchiveError):
            restore(paths, settings, archive, control, decryption=wrong, say=lambda _: None)
        assert control.calls == [] and _tree_digest(paths.prefix) == before
    restore(
        paths,
        settings,
        archive,
        FakeControl(),
        decryption=Decryption(passphrase=PASSPHRASE),
        say=lambda _: None,
    )
    assert _event_ids(settings.database_path) == ids


def test_recipient_archive_needs_the_identity(tmp_path: Path) -> None:
    paths, settings = _install(tmp_path / "inst")
    ids = _events(settings.database_path, 5)
    identity = pyrage.x25519.Identity.generate()
    other = pyrage.x25519.Identity.generate()
    archive = write_backup(
        paths,
        settings,
        tmp_path / "b.age",
        encryption=Encryption(recipients=[str(identity.to_public())]),
    ).path
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# created: now\n{identity}\n")
    wrong_file = tmp_path / "other.txt"
    wrong_file.write_text(f"{other}\n")
    with pytest.raises(ArchiveError, match="decrypt"):
        restore(
            paths,
            settings,
            archive,
            FakeControl(),
            decryption=Decryption(identity_files=[wrong_file]),
            say=lambda _: None,
        )
    restore(
        paths,
        settings,
        archive,
        FakeControl(),
        decryption=Decryption(identity_files=[key_file]),
        say=lambda _: None,
    )
    assert _event_ids(settings.database_path) == ids


def test_cli_backup_encrypts_with_a_passphrase_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance import cli

    paths, _ = _install(tmp_path / "inst")
    pass_file = tmp_path / "pass"
    pass_file.write_text(PASSPHRASE + "\n")
    dest = tmp_path / "out.age"
    argv = ["--prefix", str(paths.prefix), "backup", "--to", str(dest)]
    assert cli.main([*argv, "--passphrase-file", str(pass_file)]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert is_encrypted(dest) and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert cli.main(argv) == 1  # never overwrites without --force
    short = tmp_path / "short"
    short.write_text("too short\n")
    assert cli.main([*argv, "--force", "--passphrase-file", str(short)]) == 1
    assert "12 characters" in capsys.readouterr().err
    assert is_encrypted(dest)  # the failed run left the earlier archive alone
