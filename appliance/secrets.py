"""Secret files: one per secret under ``<etc>/secrets/``, checked before use.

A secret is refused, with the exact command that fixes it, when its file is a
symbolic link, not a regular file, readable or writable by group or others, or
owned by another user than the one running the process (OpenSSH's rule for keys).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import SecretFileError

SECRET_NAMES = ("session-key", "metrics-token", "data-key", "admin-password")
# Present only while a rotation needs them (appliance/ops/rotation.py, runbook/secrets.md):
# the data key being replaced (still decrypts until every value is re-encrypted), and
# the metrics token being replaced with the time its grace period ends.
PREVIOUS_DATA_KEY = "data-key.previous"
PREVIOUS_METRICS_TOKEN = "metrics-token.previous"
OPTIONAL_SECRET_NAMES = (PREVIOUS_DATA_KEY, PREVIOUS_METRICS_TOKEN)


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
    for name in OPTIONAL_SECRET_NAMES:
        if (directory / name).exists() or (directory / name).is_symlink():
            problems.extend(check_secret_file(directory / name, uid=uid))
    return problems


def write_secret(path: Path, value: str) -> None:
    """Replace a secret file atomically: a new 0600 file, synced, renamed over the old
    one, the directory synced; a crash leaves the old value or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, repr=False)
class Secrets:
    """Loaded secret values. repr() never shows them."""

    session_key: bytes
    metrics_token: str
    data_key: bytes
    admin_password: str
    previous_data_keys: tuple[bytes, ...] = ()
    previous_metrics_token: str | None = None
    previous_metrics_token_until: float = 0.0

    def metrics_tokens(self, now: float) -> tuple[str, ...]:
        """The tokens /metrics accepts now: the current one, and the replaced one
        until its grace period ends."""
        if self.previous_metrics_token and now < self.previous_metrics_token_until:
            return (self.metrics_token, self.previous_metrics_token)
        return (self.metrics_token,)

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

    previous_keys: tuple[bytes, ...] = ()
    if (directory / PREVIOUS_DATA_KEY).exists():
        previous_keys = (read(PREVIOUS_DATA_KEY).encode(),)
    previous_token, until = None, 0.0
    if (directory / PREVIOUS_METRICS_TOKEN).exists():
        previous_token, until = parse_previous_token(read(PREVIOUS_METRICS_TOKEN))
    return Secrets(
        session_key=read("session-key").encode(),
        metrics_token=read("metrics-token"),
        data_key=read("data-key").encode(),
        admin_password=read("admin-password"),
        previous_data_keys=previous_keys,
        previous_metrics_token=previous_token,
        previous_metrics_token_until=until,
    )


def parse_previous_token(text: str) -> tuple[str | None, float]:
    """``metrics-token.previous`` holds the old token, then the time it stops working."""
    lines = text.split()
    if len(lines) != 2:
        return None, 0.0
    try:
        return lines[0], float(lines[1])
    except ValueError:
        return None, 0.0
