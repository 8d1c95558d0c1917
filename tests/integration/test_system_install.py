"""The production install: `sudo ./install.sh` without --prefix, as root.

One test walks the whole life of a system install on a port no other test uses:
install and start (supervisord started by appliancectl), then supervisord started by
the generated systemd unit's ExecStart run as the service user (no systemd needed),
appliancectl run as root and as the service user, an upgrade (re-run of install.sh)
probed for refused connections, a port change applied with `appliancectl reload`,
and `--uninstall --purge`, after which nothing may be left. Owners and modes are
checked against the table in runbook/operations.md after every step.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO, free_port, probing_healthz

pytestmark = [
    pytest.mark.integration,
    # Two venv builds (install, upgrade) and many starts and stops on a busy machine.
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="the system install (install.sh without --prefix) needs root; CI runs as root",
    ),
]

USER = "appliance"
OPT = Path("/opt/appliance")
ETC = Path("/etc/appliance")
DATA = Path("/var/lib/appliance")
LOGS = Path("/var/log/appliance")
RUN = Path("/run/appliance")
UNIT = Path("/etc/systemd/system/appliance.service")
UNIT_WANTS = Path("/etc/systemd/system/multi-user.target.wants/appliance.service")
CTL = OPT / "venv/bin/appliancectl"
EVERYTHING = (OPT, ETC, DATA, LOGS, RUN, UNIT, UNIT_WANTS)


def _install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd="/",
    )


def _installed(*args: str) -> str:
    result = _install(*args)
    assert result.returncode == 0, f"install.sh {args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _user_exists(name: str) -> bool:
    return subprocess.run(["getent", "passwd", name], capture_output=True).returncode == 0


def _group_exists(name: str) -> bool:
    return subprocess.run(["getent", "group", name], capture_output=True).returncode == 0


def _as_service_user(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--", *argv]


def _service_env() -> dict[str, str]:
    entry = pwd.getpwnam(USER)
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": entry.pw_dir,
        "USER": USER,
        "LOGNAME": USER,
    }


def ctl(*args: str, service: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """appliancectl as root (from /root's usual environment) or as the service user."""
    argv = [str(CTL), *args]
    env = {**os.environ}
    if service:
        argv, env = _as_service_user(argv), _service_env()
    cwd = "/" if service else "/root"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    if check and result.returncode != 0:
        who = USER if service else "root"
        raise AssertionError(
            f"appliancectl {' '.join(args)} as {who} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def readyz(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def wait_ready(port: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if readyz(port) == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"/readyz on port {port} not 200 after {timeout_s}s")


def wait_status_ok(service: bool, timeout_s: float = 60) -> str:
    """`appliancectl status` exits 3 until every program is RUNNING, which comes up to
    `startsecs` after /readyz already answers 200; wait for that, bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = ctl("status", service=service, check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            assert result.returncode == 0, f"status still {result.returncode}:\n{result.stdout}"
            return result.stdout
        time.sleep(0.5)


def refused(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except httpx.ConnectError:
        return True
    return False


def supervisord_pid() -> int:
    return int((RUN / "supervisord.pid").read_text().strip())


def process_pids() -> dict[str, int]:
    report = json.loads(ctl("status", "--json", check=False).stdout)
    return {p["name"]: p["pid"] for p in report["processes"]}


def _proc_ids(pid: int) -> tuple[int, list[int]]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    uids = {int(v) for v in fields["Uid"].split()}
    assert len(uids) == 1, f"pid {pid} has mixed uids {uids}"
    return uids.pop(), [int(g) for g in fields["Groups"].split()]


def check_processes_run_as_service_user() -> None:
    entry = pwd.getpwnam(USER)
    pids = [supervisord_pid(), *process_pids().values()]
    assert len(pids) >= 4, pids  # supervisord, alerts, worker, 2+ API processes
    for pid in pids:
        uid, groups = _proc_ids(pid)
        assert uid == entry.pw_uid, f"pid {pid} runs as uid {uid}, not {USER}"
        assert 0 not in groups, f"pid {pid} kept root's supplementary group: {groups}"


def layout_problems() -> list[str]:
    """Owner and mode of every installed path, as runbook/operations.md documents."""
    entry = pwd.getpwnam(USER)
    uid, gid = entry.pw_uid, entry.pw_gid
    problems: list[str] = []

    def expect(path: Path, owner: int, group: int, mode: int) -> None:
        st = path.lstat()
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (owner, group, mode):
            problems.append(
                f"{path}: {st.st_uid}:{st.st_gid} {stat.S_IMODE(st.st_mode):04o}, "
                f"want {owner}:{group} {mode:04o}"
            )

    # Code: root's, readable and executable by everyone, writable by root only.
    for path in [OPT, *OPT.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != 0 or mode & 0o022 or not mode & 0o004:
            problems.append(f"{path}: uid {st.st_uid} mode {mode:04o}, want root, o+r, go-w")
        if stat.S_ISDIR(st.st_mode) and not mode & 0o001:
            problems.append(f"{path}: directory mode {mode:04o}, want o+x")
    expect(OPT / "supervisord.conf", 0, 0, 0o644)
    # Settings and secrets.
    expect(ETC, 0, 0, 0o755)
    expect(ETC / "appliance.env", 0, gid, 0o640)
    expect(ETC / "secrets", uid, gid, 0o700)
    secrets = sorted(p.name for p in (ETC / "secrets").iterdir())
    assert secrets == ["admin-password", "data-key", "metrics-token", "session-key"], secrets
    for name in secrets:
        expect(ETC / "secrets" / name, uid, gid, 0o600)
    # State: the service user's alone, nothing for others.
    for top in (DATA, LOGS, RUN):
        expect(top, uid, gid, 0o750)
        for path in top.rglob("*"):
            st = path.lstat()
            if (st.st_uid, st.st_gid) != (uid, gid) or st.st_mode & 0o007:
                problems.append(
                    f"{path}: {st.st_uid}:{st.st_gid} {stat.S_IMODE(st.st_mode):04o}, "
                    f"want {USER}:{USER}, nothing for others"
                )
    expect(RUN / "metrics", uid, gid, 0o750)
    expect(UNIT, 0, 0, 0o644)
    return problems


def leftovers() -> list[str]:
    left = [str(p) for p in EVERYTHING if p.exists() or p.is_symlink()]
    if _user_exists(USER):
        left.append(f"user {USER}")
    if _group_exists(USER):
        left.append(f"group {USER}")
    return left


def _service_user_pids() -> list[int]:
    try:
        uid = pwd.getpwnam(USER).pw_uid
    except KeyError:
        return []
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if _proc_ids(int(status.parent.name))[0] == uid:
                pids.append(int(status.parent.name))
        except (OSError, AssertionError, KeyError, ValueError):
            continue
    return pids


def force_cleanup() -> None:
    """Only when --purge failed: end the service user's processes (all started by this
    test), then remove what is left, so the next run starts clean."""
    for pid in _service_user_pids():
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    for path in (OPT, ETC, DATA, LOGS, RUN):
        shutil.rmtree(path, ignore_errors=True)
    for path in (UNIT, UNIT_WANTS):
        path.unlink(missing_ok=True)
    if _user_exists(USER):
        subprocess.run(["userdel", USER], capture_output=True)
    if _group_exists(USER):
        subprocess.run(["groupdel", USER], capture_output=True)


@contextmanager
def unit_exec_start() -> Iterator[subprocess.Popen]:
    """Run the unit's ExecStart= as its User=, with its UMask=, as systemd would."""
    unit = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line)
    assert unit["User"] == USER and unit["Group"] == USER, unit
    assert "ExecStop" not in unit, "ExecStop would ask systemd to stop the unit it stops"
    umask = int(unit["UMask"], 8)
    argv = _as_service_user(shlex.split(unit["ExecStart"]))
    process = subprocess.Popen(
        argv,
        env=_service_env(),
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.umask(umask),
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def exercise_ctl(port: int, *, service: bool) -> None:
    """status, restart, stop NAME, supervisorctl, stop, start: as root or as the service user."""
    assert "ready: yes" in wait_status_ok(service=service)
    worker_before = process_pids()["worker:worker"]
    ctl("restart", service=service)
    assert process_pids()["worker:worker"] != worker_before
    wait_ready(port)

    ctl("stop", "worker", service=service)
    states = ctl("supervisorctl", "status", service=service, check=False).stdout
    assert "worker" in states and "STOPPED" in states, states
    assert ctl("status", service=service, check=False).returncode == 3
    api = sorted(n for n in process_pids() if n.startswith("api:"))[0]
    ctl("stop", api, service=service)
    assert "STOPPED" in ctl("supervisorctl", "status", api, service=service, check=False).stdout
    ctl("start", service=service)  # starts what was stopped, waits until ready
    wait_ready(port)

    ctl("stop", service=service)
    assert refused(port)
    assert not (RUN / "supervisord.pid").exists() or ctl("status", check=False).returncode == 3
    ctl("start", service=service)
    wait_ready(port)
    check_processes_run_as_service_user()
    # Commands that open the database or read the secrets leave nothing of root's.
    assert "OK secrets" in ctl("check", service=service).stdout
    ctl("api-keys", "list", service=service)
    assert layout_problems() == []


def lifecycle(port: int) -> None:
    # 1. The README's first command, with a non-default port.
    out = _installed("--port", str(port), "--bind", "127.0.0.1")
    assert f"http://127.0.0.1:{port}/" in out
    wait_ready(port)
    check_processes_run_as_service_user()
    assert layout_problems() == []
    assert _user_exists(USER) and UNIT.exists()

    # 2. appliancectl from root's shell and from the service user.
    exercise_ctl(port, service=False)
    exercise_ctl(port, service=True)

    # 3. supervisord through the systemd unit's ExecStart, run as the service user.
    ctl("stop")
    with unit_exec_start() as service:
        wait_ready(port)
        assert supervisord_pid() == service.pid  # appliancectl execs supervisord
        check_processes_run_as_service_user()
        assert layout_problems() == []
        for as_service in (False, True):
            assert "ready: yes" in wait_status_ok(service=as_service)
            ctl("restart", "api", service=as_service)
            wait_ready(port)
        ctl("stop", "worker")
        ctl("start")
        wait_ready(port)
        # What systemd does to stop it (no ExecStop): SIGTERM to the main process.
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=120) == 0
    assert refused(port)
    assert layout_problems() == []

    # 4. Upgrade: re-run install.sh while traffic flows. Same schema, same settings:
    # a rolling restart, no refused connection. --port differs from appliance.env's,
    # so install.sh says how to apply a port change (and applies nothing).
    ctl("start")
    wait_ready(port)
    supervisord_before = supervisord_pid()
    before = process_pids()
    other_port = free_port()
    with probing_healthz(port) as tally:
        out = _installed("--port", str(other_port), "--bind", "127.0.0.1")
    print(f"\nupgrade probe: {tally}")
    assert tally.get("ok", 0) > 50 and "exhausted" not in tally, tally
    assert tally.get("refused", 0) == 0, f"upgrade refused connections: {tally}"
    assert set(tally) == {"ok"}, tally
    assert supervisord_pid() == supervisord_before, "the upgrade restarted supervisord"
    after = process_pids()
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before), (before, after)
    assert f"PORT={port}" in (ETC / "appliance.env").read_text()
    assert "appliancectl reload" in out and f"PORT={other_port}" in out, out
    wait_ready(port)
    assert layout_problems() == []

    # 5. The printed way to apply a port change works: edit appliance.env, reload.
    env_file = ETC / "appliance.env"
    env_file.write_text(env_file.read_text().replace(f"PORT={port}\n", f"PORT={other_port}\n"))
    ctl("reload", service=True)
    wait_ready(other_port)
    assert refused(port)
    assert layout_problems() == []


def test_system_install_lifecycle_as_root() -> None:
    left = leftovers()
    assert not left, f"this machine already has a system install; not touching it: {left}"
    port = free_port()
    purge = None
    try:
        lifecycle(port)
    finally:
        purge = _install("--uninstall", "--purge")
        left = leftovers()
        pids = _service_user_pids()
        if left or pids or purge.returncode != 0:
            force_cleanup()
    assert purge.returncode == 0, f"--uninstall --purge failed:\n{purge.stdout}\n{purge.stderr}"
    assert pids == [], f"processes of {USER} still running after --purge: {pids}"
    assert left == [], f"--purge left behind: {left}"
