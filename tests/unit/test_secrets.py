"""Unit tests for appliance/secrets.py: file checks and loading."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from appliance.errors import SecretFileError, StartupError
from appliance.secrets import (
    SECRET_NAMES,
    Secrets,
    check_secret_file,
    check_secrets_dir,
    load_secrets,
)

UID = os.geteuid()
OTHER_UID = UID + 4242
VALUES = {
    "session-key": "s" * 43,
    "metrics-token": "metrics-token-value",
    "data-key": "d" * 43,
    "admin-password": "first admin password",
}


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _secret(path: Path, value: str = "value", mode: int = 0o600) -> Path:
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    for name in SECRET_NAMES:
        _secret(directory / name, VALUES[name])
    return directory


def test_good_file_has_no_problems(tmp_path: Path) -> None:
    assert check_secret_file(_secret(tmp_path / "s")) == []
    assert check_secret_file(_secret(tmp_path / "r", mode=0o400)) == []
    assert check_secret_file(tmp_path / "s", uid=UID) == []


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    [problem] = check_secret_file(path)
    assert str(path) in problem and "missing" in problem and "install.sh" in problem


def test_symlink_is_refused_even_to_a_good_file(tmp_path: Path) -> None:
    target = _secret(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    [problem] = check_secret_file(link)
    assert "symbolic link" in problem and str(link) in problem
    assert f"chmod 600 {link}" in problem
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "absent")
    [problem] = check_secret_file(dangling)
    assert "symbolic link" in problem


def test_not_a_regular_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    [problem] = check_secret_file(directory)
    assert "not a regular file" in problem and str(directory) in problem


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o610])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secret(tmp_path / "s", mode=mode)
    [problem] = check_secret_file(path)
    assert f"chmod 600 {path}" in problem
    assert f"{mode:04o}" in problem


def test_wrong_owner(tmp_path: Path) -> None:
    path = _secret(tmp_path / "s")
    [problem] = check_secret_file(path, uid=OTHER_UID)
    assert "owned by" in problem and str(path) in problem
    assert f"chown {_name(OTHER_UID)} {path}" in problem
    assert f"not {_name(OTHER_UID)} " in problem and f"owned by {_name(UID)}," in problem


def test_wrong_owner_and_mode_are_both_reported(tmp_path: Path) -> None:
    path = _secret(tmp_path / "s", mode=0o644)
    problems = check_secret_file(path, uid=OTHER_UID)
    assert len(problems) == 2
    assert any(f"chmod 600 {path}" in p for p in problems)
    assert any("chown" in p for p in problems)


def test_secrets_dir_good(secrets_dir: Path) -> None:
    assert check_secrets_dir(secrets_dir) == []


def test_secrets_dir_open_mode(secrets_dir: Path) -> None:
    secrets_dir.chmod(0o755)
    problems = check_secrets_dir(secrets_dir)
    assert len(problems) == 1
    assert f"chmod 700 {secrets_dir}" in problems[0] and "0755" in problems[0]


def test_secrets_dir_missing(tmp_path: Path) -> None:
    [problem] = check_secrets_dir(tmp_path / "absent")
    assert "missing" in problem


def test_secrets_dir_symlink(secrets_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(secrets_dir)
    problems = check_secrets_dir(link)
    assert any("not a plain directory" in p for p in problems)


def test_secrets_dir_checks_every_file(secrets_dir: Path) -> None:
    (secrets_dir / "data-key").unlink()
    (secrets_dir / "metrics-token").chmod(0o644)
    problems = check_secrets_dir(secrets_dir)
    assert len(problems) == 2
    assert any(str(secrets_dir / "data-key") in p and "missing" in p for p in problems)
    assert any(f"chmod 600 {secrets_dir / 'metrics-token'}" in p for p in problems)
    assert len(check_secrets_dir(secrets_dir, uid=OTHER_UID)) == 2 + 3  # + wrong owner x3


def test_load_secrets_reads_stripped_values(secrets_dir: Path) -> None:
    s = load_secrets(secrets_dir)
    assert s.session_key == VALUES["session-key"].encode()
    assert s.metrics_token == VALUES["metrics-token"]
    assert s.data_key == VALUES["data-key"].encode()
    assert s.admin_password == VALUES["admin-password"]


def test_load_secrets_lists_every_problem(secrets_dir: Path) -> None:
    secrets_dir.chmod(0o750)
    (secrets_dir / "session-key").unlink()
    (secrets_dir / "admin-password").chmod(0o644)
    link = secrets_dir / "data-key"
    link.unlink()
    link.symlink_to(_secret(secrets_dir.parent / "elsewhere"))
    with pytest.raises(SecretFileError) as info:
        load_secrets(secrets_dir)
    assert isinstance(info.value, StartupError)
    msg = str(info.value)
    assert msg.startswith("refusing to start: ")
    assert f"chmod 700 {secrets_dir}" in msg
    assert f"{secrets_dir / 'session-key'} is missing" in msg
    assert f"chmod 600 {secrets_dir / 'admin-password'}" in msg
    assert f"{secrets_dir / 'data-key'} is a symbolic link" in msg
    assert "metrics-token" not in msg  # that one is fine


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_empty_secret_is_refused(secrets_dir: Path, content: str) -> None:
    path = secrets_dir / "metrics-token"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SecretFileError) as info:
        load_secrets(secrets_dir)
    assert "empty" in str(info.value) and str(path) in str(info.value)


def test_secrets_repr_hides_values(secrets_dir: Path) -> None:
    s = load_secrets(secrets_dir)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s]), repr({"s": s})):
        for value in VALUES.values():
            assert value not in text
        assert "redacted" in text


def test_secrets_repr_hides_values_when_built_directly() -> None:
    s = Secrets(session_key=b"k3y", metrics_token="t0ken", data_key=b"d4ta", admin_password="pw")
    assert repr(s) == "Secrets(<redacted>)"
    for value in ("k3y", "t0ken", "d4ta", "pw"):
        assert value not in repr(s)
