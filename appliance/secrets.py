"""Secret files: one per secret under ``<etc>/secrets/``, checked before use.

A secret is refused, with the exact command that fixes it, when its file is a
symbolic link, not a regular file, readable or writable by group or others, or
owned by another user than the one running the process (OpenSSH's rule for keys).
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import SecretFileError

SECRET_NAMES = ("session-key", "metrics-token", "data-key", "admin-password")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_secret_file(path: Path, *, uid: int | None = None) -> list[str]:
    """Return the problems with one secret file, each naming the file and the fix."""
    uid = os.geteuid() if uid is None else uid
    try:
        st = path.lstat()
    except FileNotFoundError:
        return [
            f"secret file {path} is missing; re-run install.sh to create it "
            f"(it never overwrites existing secrets)"
        ]
    if stat.S_ISLNK(st.st_mode):
        return [
            f"secret file {path} is a symbolic link; replace it with the file itself: "
            f'cp --remove-destination "$(readlink -f {path})" {path} && chmod 600 {path}'
        ]
    if not stat.S_ISREG(st.st_mode):
        return [f"secret file {path} is not a regular file; remove it and re-run install.sh"]
    problems = []
    if st.st_mode & 0o077:
        problems.append(
            f"secret file {path} has mode {stat.S_IMODE(st.st_mode):04o}, open to group or "
            f"others; fix: chmod 600 {path}"
        )
    if st.st_uid != uid:
        owner = _user_name(uid)
        problems.append(
            f"secret file {path} is owned by {_user_name(st.st_uid)}, not {owner} who runs "
            f"the appliance; fix: chown {owner} {path}"
        )
    return problems


def check_secrets_dir(directory: Path, *, uid: int | None = None) -> list[str]:
    """Check the directory and every expected secret file in it."""
    uid = os.geteuid() if uid is None else uid
    problems: list[str] = []
    try:
        st = directory.lstat()
    except FileNotFoundError:
        return [f"secrets directory {directory} is missing; re-run install.sh to create it"]
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        problems.append(f"secrets directory {directory} is not a plain directory")
    elif st.st_mode & 0o077:
        problems.append(
            f"secrets directory {directory} has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"fix: chmod 700 {directory}"
        )
    for name in SECRET_NAMES:
        problems.extend(check_secret_file(directory / name, uid=uid))
    return problems


@dataclass(frozen=True, repr=False)
class Secrets:
    """Loaded secret values. repr() never shows them."""

    session_key: bytes
    metrics_token: str
    data_key: bytes
    admin_password: str

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


def load_secrets(directory: Path) -> Secrets:
    """Check, then read, every secret. Raises SecretFileError listing each problem."""
    problems = check_secrets_dir(directory)
    if problems:
        raise SecretFileError("refusing to start: " + "; ".join(problems))

    def read(name: str) -> str:
        # O_NOFOLLOW: a link swapped in after the check is still refused.
        fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as fh:
            value = fh.read().strip()
        if not value:
            raise SecretFileError(
                f"refusing to start: secret file {directory / name} is empty; "
                f"remove it and re-run install.sh to create a new one"
            )
        return value

    return Secrets(
        session_key=read("session-key").encode(),
        metrics_token=read("metrics-token"),
        data_key=read("data-key").encode(),
        admin_password=read("admin-password"),
    )
