"""install.sh without starting anything: pre-flight failures, uninstall, purge."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port, run_install

pytestmark = pytest.mark.integration


def _install(
    prefix: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "install.sh"), "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _install(tmp_path / "p", "--port", str(port))
    assert result.returncode != 0
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert not (tmp_path / "p/opt/appliance/venv").exists()


def test_refuses_old_python_and_full_disk(tmp_path: Path) -> None:
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\necho 'Python 3.9.2'\nexit 1\n")
    fake.chmod(0o755)
    old = _install(tmp_path / "a", env={"APPLIANCE_PYTHON": str(fake)})
    assert old.returncode != 0 and "Python 3.11 or newer is required" in old.stderr
    full = _install(tmp_path / "b", env={"APPLIANCE_MIN_FREE_MB": str(10**12)})
    assert full.returncode != 0 and "MB free" in full.stderr and "at least" in full.stderr


def test_refuses_bad_options(tmp_path: Path) -> None:
    assert "--port must be" in _install(tmp_path / "c", "--port", "http").stderr
    assert "--bind must be an IP address" in _install(tmp_path / "c", "--bind", "example").stderr
    assert "unknown option" in _install(tmp_path / "c", "--frobnicate").stderr


def test_layout_uninstall_and_purge(tmp_path: Path) -> None:
    prefix = tmp_path / "life"
    run_install(prefix, "--port", str(free_port()), "--no-start")
    etc, data = prefix / "etc/appliance", prefix / "var/lib/appliance"
    assert (prefix / "opt/appliance/venv/bin/appliancectl").exists()
    assert (prefix / "opt/appliance/supervisord.conf").read_text() == (
        REPO / "supervisord.conf"
    ).read_text()
    assert (etc / "secrets").stat().st_mode & 0o777 == 0o700
    for name in ("session-key", "metrics-token", "data-key", "admin-password"):
        secret = etc / "secrets" / name
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) >= 32
    for sub in ("var/log/appliance", "run/appliance", "var/lib/appliance/media"):
        assert (prefix / sub).is_dir()
    (data / "keep.me").write_text("data")

    result = _install(prefix, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (prefix / "opt/appliance").exists()
    assert (data / "keep.me").exists() and (etc / "secrets/data-key").exists()

    (prefix / "var/lib/other").mkdir()  # not install.sh's: --purge leaves it alone
    result = _install(prefix, "--purge")
    assert result.returncode == 0, result.stderr
    assert not data.exists() and not etc.exists()
    # The empty directories install.sh made go too; what holds something else stays.
    assert sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*")) == [
        "var",
        "var/lib",
        "var/lib/other",
    ]
    shutil.rmtree(prefix)
    result = _install(prefix, "--uninstall", "--purge")  # nothing there: nothing made
    assert result.returncode == 0 and "nothing installed" in result.stdout, result.stderr
    assert not prefix.exists()
