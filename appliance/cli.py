"""appliancectl: run and inspect one installation of the appliance.

It finds the installation from its own location (<prefix>/opt/appliance/venv) or
from --prefix. Run as root on a system install, it does its work as the service
user (except asking systemd to start or stop the unit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.config import Paths, Settings, load_settings
from appliance.db.migrate import latest_version, read_schema_version, schema_version
from appliance.engines import registry as engines
from appliance.errors import StartupError
from appliance.ops import offline_store
from appliance.secrets import check_secrets_dir
from appliance.supervisor_client import is_responsive, proxy, supervisord_pid, wait_gone

SERVICE_USER = "appliance"
UNIT_NAME = "appliance.service"
# What supervisord.conf reads from its environment: a change needs a new supervisord.
SUPERVISORD_SETTINGS = (
    "APPLIANCE_ETC",
    "APPLIANCE_VENV",
    "APPLIANCE_RUN_DIR",
    "APPLIANCE_LOG_DIR",
    "APPLIANCE_DATA_DIR",
    "APPLIANCE_BIND",
    "APPLIANCE_PORT",
    "APPLIANCE_API_PROCESSES",
    "APPLIANCE_API_STOPWAIT",
    "APPLIANCE_WORKER_STOPWAIT",
)
STARTED_RECORD = "supervisord.json"  # in run/: how the running supervisord was started


def _fail(message: str, code: int = 1) -> int:
    print(f"appliancectl: {message}", file=sys.stderr)
    return code


def _service_uid(paths: Paths) -> int:
    """The user the appliance runs as: the service user for the system install run by
    root; whoever runs appliancectl for a --prefix install (even as root, and even when
    a system install's service user exists on the machine)."""
    account = _service_account(paths)
    return account.pw_uid if account is not None else os.geteuid()


def _systemd_managed(paths: Paths) -> bool:
    return (
        paths.prefix == Path("/")
        and Path("/run/systemd/system").is_dir()
        and Path(f"/etc/systemd/system/{UNIT_NAME}").exists()
    )


def supervisord_environment(paths: Paths, settings: Settings) -> dict[str, str]:
    """The environment supervisord and its children get: paths and sizes, no secrets."""
    passed = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
    env = {key: os.environ[key] for key in passed if key in os.environ}
    env.update(
        {
            "APPLIANCE_ETC": str(paths.etc),
            "APPLIANCE_VENV": str(paths.venv),
            "APPLIANCE_RUN_DIR": str(settings.run_dir),
            "APPLIANCE_LOG_DIR": str(settings.log_dir),
            "APPLIANCE_DATA_DIR": str(settings.data_dir),
            "APPLIANCE_BIND": settings.bind,
            "APPLIANCE_PORT": str(settings.port),
            "APPLIANCE_API_PROCESSES": str(settings.effective_api_processes),
            "APPLIANCE_API_STOPWAIT": str(int(settings.api_graceful_timeout_s) + 10),
            "APPLIANCE_WORKER_STOPWAIT": str(int(settings.worker_drain_timeout_s) + 10),
        }
    )
    # Explicit overrides the operator gave this command carry on to the processes.
    for key, value in os.environ.items():
        if key.startswith("APPLIANCE_") and key not in env:
            env[key] = value
    return env


def _service_account(paths: Paths) -> pwd.struct_passwd | None:
    """The service user, when root runs appliancectl for the system install."""
    if os.geteuid() != 0 or paths.prefix != Path("/"):
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None


def _give_runtime_dirs_to(settings: Settings, account: pwd.struct_passwd) -> None:
    """As root, before dropping to the service user: the run, log and data directories
    exist and belong to it, and run/ holds nothing of root's (it is rebuilt at every
    start; an older appliancectl left run/metrics owned by root there)."""
    owner = (account.pw_uid, account.pw_gid)
    for directory in (settings.run_dir, settings.log_dir, settings.data_dir):
        if not directory.exists():
            directory.mkdir(mode=0o750, parents=True)
            os.chmod(directory, 0o750)
        st = directory.stat()
        if (st.st_uid, st.st_gid) != owner:
            os.chown(directory, *owner)
    for path in settings.run_dir.rglob("*"):
        st = path.lstat()
        if (st.st_uid, st.st_gid) != owner:
            os.lchown(path, *owner)


def _become(account: pwd.struct_passwd) -> None:
    """Drop root for good: groups, gid, uid, and the environment that names the user."""
    os.initgroups(account.pw_name, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    os.chdir("/")  # root's working directory may be closed to the service user


def _prepare_runtime_dirs(settings: Settings) -> None:
    """Run as the user supervisord will run as (never as root on a system install)."""
    for directory in (settings.run_dir, settings.log_dir, settings.data_dir):
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    # Multiprocess metrics files of a previous run would be summed into this one.
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    try:
        settings.metrics_dir.mkdir(mode=0o750)
    except FileExistsError:
        user = pwd.getpwuid(os.geteuid()).pw_name
        raise StartupError(
            f"{settings.metrics_dir} is left from an earlier start and {user} cannot remove "
            f"it; fix: chown -R {user}: {settings.run_dir} (or run appliancectl start as root)"
        ) from None


def _record_start(paths: Paths, env: dict[str, str]) -> None:
    """Note how supervisord is started, so `reload` can tell whether it must restart it."""
    record = {
        "config_sha256": _file_sha256(paths.supervisord_conf),
        "env": {key: env.get(key, "") for key in SUPERVISORD_SETTINGS},
    }
    path = Path(env["APPLIANCE_RUN_DIR"]) / STARTED_RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return ""


def _launch_supervisord(
    paths: Paths, settings: Settings, *, foreground: bool
) -> tuple[list[str], dict[str, str]]:
    """Prepare run/ and return (argv, env) for supervisord; raises StartupError."""
    _prepare_runtime_dirs(settings)
    env = supervisord_environment(paths, settings)
    _record_start(paths, env)
    return _supervisord_argv(paths, foreground), env


def _supervisord_argv(paths: Paths, foreground: bool) -> list[str]:
    argv = [str(paths.venv / "bin" / "supervisord"), "-c", str(paths.supervisord_conf)]
    if foreground:
        argv.append("-n")
    return argv


def _local_url(settings: Settings, path: str) -> str:
    """This machine's own API (https with direct TLS: TLS_CERT_FILE)."""
    host = "127.0.0.1" if settings.bind in ("0.0.0.0", "::") else settings.bind
    return f"{'https' if settings.tls else 'http'}://{host}:{settings.port}{path}"


def _local_context(settings: Settings) -> Any:
    """Asking our own processes over loopback: the certificate names the public host,
    not 127.0.0.1, so it is not verified here (runbook/tls.md)."""
    import ssl

    return ssl._create_unverified_context() if settings.tls else None


def _readyz(settings: Settings, timeout_s: float = 2.0) -> tuple[int, dict[str, Any]]:
    url = _local_url(settings, "/readyz")
    try:
        with urllib.request.urlopen(
            url, timeout=timeout_s, context=_local_context(settings)
        ) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError) as exc:
        return 0, {"error": str(exc)}


def _wait_ready(settings: Settings, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, _ = _readyz(settings)
        if status == 200:
            return True
        time.sleep(0.25)
    return False


# -- commands ---------------------------------------------------------------------------


def cmd_supervisord(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    """Run supervisord (in the foreground for systemd, else daemonised)."""
    try:
        argv, env = _launch_supervisord(paths, settings, foreground=args.foreground)
    except StartupError as exc:
        return _fail(str(exc), 78)
    os.execve(argv[0], argv, env)
    return 0  # not reached


def _systemctl(action: str) -> bool:
    """Ask systemd, which runs the unit; only root may."""
    if subprocess.run(["systemctl", action, UNIT_NAME]).returncode == 0:
        return True
    who = "" if os.geteuid() == 0 else " (as root: sudo appliancectl ...)"
    _fail(f"systemctl {action} {UNIT_NAME} failed{who}; see: journalctl -u {UNIT_NAME}")
    return False


def _running(settings: Settings) -> bool:
    return bool(supervisord_pid(settings.run_dir)) and is_responsive(settings.supervisor_socket)


def _namespec(sup: Any, name: str) -> str:
    """supervisord's name for NAME: `api` (a group of several) means `api:*`."""
    if ":" in name:
        return name
    groups: dict[str, set[str]] = {}
    for info in sup.getAllProcessInfo():
        groups.setdefault(info["group"], set()).add(info["name"])
    if name in groups and name not in groups[name]:
        return f"{name}:*"
    return name


def _each_process(settings: Settings, names: list[str], action: str) -> int:
    """Start or stop the named processes (`worker`, `api:api_00`, `api`), in order."""
    if not _running(settings):
        return _fail("not running; use `appliancectl start`")
    sup = proxy(settings.supervisor_socket)
    for name in names:
        try:
            if action == "start":
                sup.startProcess(_namespec(sup, name), True)
            else:
                sup.stopProcess(_namespec(sup, name), True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == 10:  # BAD_NAME
                infos = _process_infos(settings)
                known = ", ".join(sorted(f"{p['group']}:{p['name']}" for p in infos))
                return _fail(f"no process named {name!r}; known: {known}")
            if fault.faultCode not in (60, 70):  # ALREADY_STARTED, NOT_RUNNING
                return _fail(f"{action} {name}: {fault.faultString}")
        print(f"{'started' if action == 'start' else 'stopped'} {name}")
    return 0


def cmd_start(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    if args.names:
        rc = _each_process(settings, args.names, "start")
        if rc:
            return rc
    elif _systemd_managed(paths):
        if not _systemctl("start"):
            return 1
    elif _running(settings):
        proxy(settings.supervisor_socket).startAllProcesses(True)
    else:
        try:
            argv, env = _launch_supervisord(paths, settings, foreground=False)
        except StartupError as exc:
            return _fail(str(exc), 78)
        result = subprocess.run(argv, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return _fail(f"supervisord did not start: {result.stderr.strip() or result.stdout}")
    if args.wait <= 0:
        return 0
    if _wait_ready(settings, args.wait):
        print(f"ready: {settings.effective_public_url}")
        return 0
    status, body = _readyz(settings)
    return _fail(f"not ready after {args.wait}s (readyz {status}: {json.dumps(body)})")


def cmd_stop(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    if args.names:
        return _each_process(settings, args.names, "stop")
    if _systemd_managed(paths):
        return 0 if _systemctl("stop") else 1
    pid = supervisord_pid(settings.run_dir)
    if pid is None:
        print("not running")
        return 0
    try:
        proxy(settings.supervisor_socket).shutdown()
    except (OSError, xmlrpc.client.Error) as exc:
        return _fail(f"could not ask supervisord (pid {pid}) to stop: {exc}")
    limit = settings.api_graceful_timeout_s + settings.worker_drain_timeout_s + 30
    if not wait_gone(pid, limit):
        return _fail(f"supervisord (pid {pid}) still running after {limit:.0f}s")
    print("stopped")
    return 0


def _process_infos(settings: Settings) -> list[dict[str, Any]]:
    return list(proxy(settings.supervisor_socket).getAllProcessInfo())


def _restart_one(sup: Any, name: str, out: Any) -> None:
    """Stop (when running) and start one process, waiting for each step."""
    try:
        sup.stopProcess(name, True)
    except xmlrpc.client.Fault as fault:
        if fault.faultCode != 70:  # NOT_RUNNING: a stopped process is just started
            raise
    sup.startProcess(name, True)
    print(f"restarted {name}", file=out)


def _wait_serving(settings: Settings, pid: int, timeout_s: float) -> bool:
    """Until API process ``pid`` itself answers /healthz on the shared socket.

    supervisord calls a process RUNNING once it has lived ``startsecs``; on a busy
    machine it may still be importing. Stopping the next one then would leave nobody
    accepting: no connection is refused (supervisord keeps the socket), but they wait.
    """
    url = _local_url(settings, "/healthz")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # A fresh connection each time: the kernel hands it to any accepting process.
        try:
            with urllib.request.urlopen(url, timeout=5, context=_local_context(settings)) as resp:
                if json.loads(resp.read()).get("pid") == pid:
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return False


def rolling_restart_api(
    settings: Settings, *, out: Any = sys.stdout, serve_timeout_s: float = 60.0
) -> None:
    """Restart API processes one at a time; the shared socket keeps accepting, and
    the next one stops only once the restarted one answers."""
    sup = proxy(settings.supervisor_socket)
    infos = _process_infos(settings)
    names = sorted(f"{p['group']}:{p['name']}" for p in infos if p["group"] == "api")
    for name in names:
        _restart_one(sup, name, out)
        pid = int(sup.getProcessInfo(name)["pid"])
        if not _wait_serving(settings, pid, serve_timeout_s):
            print(
                f"warning: {name} (pid {pid}) not answering after {serve_timeout_s:.0f}s", file=out
            )


def rolling_restart(settings: Settings, *, out: Any = sys.stdout) -> None:
    """Every process on new code without refusing a connection: the API processes one
    at a time, then the worker, then the rest (the alerts listener)."""
    rolling_restart_api(settings, out=out)
    sup = proxy(settings.supervisor_socket)
    others = sorted(
        (f"{p['group']}:{p['name']}" for p in _process_infos(settings) if p["group"] != "api"),
        key=lambda name: (name != "worker:worker", name),
    )
    for name in others:
        _restart_one(sup, name, out)


def cmd_restart(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    if supervisord_pid(settings.run_dir) is None:
        return _fail("not running; use `appliancectl start`")
    sup = proxy(settings.supervisor_socket)
    if args.target in ("worker", "all"):
        _restart_one(sup, "worker", sys.stdout)
    if args.target in ("webhooks", "all"):  # webhook dispatching (appliance/webhooks/process.py)
        _restart_one(sup, "webhooks", sys.stdout)
    if args.target in ("api", "all"):
        rolling_restart_api(settings)
    if args.wait > 0 and not _wait_ready(settings, args.wait):
        return _fail(f"not ready {args.wait}s after the restart")
    return 0


def reload_plan(paths: Paths, settings: Settings) -> tuple[str, str]:
    """("rolling" | "full", why) for applying the installed code and settings now.

    Rolling (no refused connection) when the running supervisord was started from the
    same supervisord.conf with the same settings it reads, and the database schema is
    the one this code expects; otherwise supervisord itself must restart (a new port
    needs a new listening socket) or the worker must migrate before the API runs.
    """
    try:
        record = json.loads((settings.run_dir / STARTED_RECORD).read_text())
        started_conf, started_env = record["config_sha256"], record["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return "full", "no record of how the running supervisord was started"
    if started_conf != _file_sha256(paths.supervisord_conf):
        return "full", f"{paths.supervisord_conf} changed"
    env = supervisord_environment(paths, settings)
    changed = [key for key in SUPERVISORD_SETTINGS if started_env.get(key) != env[key]]
    if changed:
        names = ", ".join(key.removeprefix("APPLIANCE_") for key in changed)
        return "full", f"settings supervisord uses changed: {names}"
    version = _schema_version(settings.database_path)
    if version is None:
        return "full", "no database yet"
    if version != latest_version():
        return "full", f"database schema {version} -> {latest_version()}"
    return "rolling", f"same schema ({version}) and supervisord settings"


def cmd_reload(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    """Apply new code and settings: rolling when possible, else stop and start."""
    if not _running(settings):
        return cmd_start(paths, settings, argparse.Namespace(names=[], wait=args.wait))
    plan, why = reload_plan(paths, settings)
    print(f"reload: {'rolling restart' if plan == 'rolling' else 'stop and start'} ({why})")
    if plan == "rolling":
        rolling_restart(settings)
    elif _systemd_managed(paths):
        if not _systemctl("restart"):
            return 1
    else:
        rc = cmd_stop(paths, settings, argparse.Namespace(names=[]))
        if rc:
            return rc
        return cmd_start(paths, settings, argparse.Namespace(names=[], wait=args.wait))
    if args.wait > 0 and not _wait_ready(settings, args.wait):
        return _fail(f"not ready {args.wait}s after the reload")
    if args.wait > 0:
        print(f"ready: {settings.effective_public_url}")
    return 0


def cmd_supervisorctl(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    """supervisorctl with the environment supervisord.conf needs."""
    argv = [
        str(paths.venv / "bin" / "supervisorctl"),
        "-c",
        str(paths.supervisord_conf),
        *args.arguments,
    ]
    os.execve(argv[0], argv, supervisord_environment(paths, settings))
    return 0  # not reached


def cmd_status(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    pid = supervisord_pid(settings.run_dir)
    report: dict[str, Any] = {"supervisord_pid": pid, "processes": [], "ready": False}
    if pid is not None:
        try:
            for info in _process_infos(settings):
                report["processes"].append(
                    {
                        "name": f"{info['group']}:{info['name']}",
                        "state": info["statename"],
                        "pid": info["pid"],
                        "description": info["description"],
                    }
                )
        except (OSError, xmlrpc.client.Error) as exc:
            report["error"] = f"supervisord not answering: {exc}"
        status, body = _readyz(settings)
        report["ready"] = status == 200
        report["readyz"] = body
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if pid is None:
            print("supervisord: not running")
        else:
            print(f"supervisord: running (pid {pid})")
            for proc in report["processes"]:
                print(f"  {proc['name']:<16} {proc['state']:<10} {proc['description']}")
            failing = report.get("readyz", {}).get("failing", [])
            note = f" (failing: {', '.join(failing)})" if failing else ""
            print(f"ready: {'yes' if report['ready'] else 'no'}{note}")
    running = pid is not None and all(p["state"] == "RUNNING" for p in report["processes"])
    return 0 if running and report["ready"] else 3


def cmd_tail(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    logs = sorted(settings.log_dir.glob("*.log"))
    if args.name:
        logs = [p for p in logs if p.stem == args.name or p.stem.startswith(args.name)]
    if not logs:
        return _fail(f"no log files matching {args.name!r} in {settings.log_dir}")
    follow = ["-F"] if args.follow else []
    argv = ["tail", "-n", str(args.lines), *follow, *(str(p) for p in logs)]
    os.execvp("tail", argv)
    return 0


def check_installation(paths: Paths) -> list[str]:
    """Every problem `appliancectl check` knows to look for; empty when healthy."""
    problems: list[str] = []
    try:
        settings = load_settings(paths)
    except StartupError as exc:
        return [str(exc)]
    secret_problems = check_secrets_dir(paths.secrets_dir, uid=_service_uid(paths))
    problems.extend(secret_problems)
    from appliance.ops.tls import tls_problems

    problems.extend(tls_problems(settings, uid=_service_uid(paths)))
    db_path = settings.database_path
    if not db_path.exists():
        problems.append(f"database {db_path} does not exist yet (the worker creates it at start)")
        return problems
    try:
        conn = offline_store.open_read_only(db_path)
        try:
            integrity = offline_store.integrity(conn)
            if integrity != "ok":
                problems.append(f"database {db_path} failed integrity_check: {integrity}")
            version = read_schema_version(conn)
            if not secret_problems:
                problems.extend(_undecryptable(paths, conn))
            if version > latest_version():
                problems.append(
                    f"database schema is at version {version}, newer than this code's "
                    f"{latest_version()} (a downgrade): install the newer code again, or "
                    f"restore a backup taken with this version"
                )
            elif version != latest_version():
                problems.append(
                    f"database schema is at version {version}, this code expects "
                    f"{latest_version()}; start the appliance so the worker migrates it"
                )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        problems.append(f"database {db_path} cannot be read: {exc}")
    return problems


def _undecryptable(paths: Paths, conn: sqlite3.Connection) -> list[str]:
    """Stored ciphertexts this installation's data key cannot open (after a restore
    with other secrets, or a replaced key), each with what to re-enter."""
    from appliance.crypto import DataCipher
    from appliance.ops.stored_secrets import undecryptable
    from appliance.secrets import PREVIOUS_DATA_KEY

    try:
        key = (paths.secrets_dir / "data-key").read_text().strip().encode()
        previous_file = paths.secrets_dir / PREVIOUS_DATA_KEY
        previous = (previous_file.read_text().strip().encode(),) if previous_file.exists() else ()
    except OSError as exc:
        return [f"data-key not readable: {exc}"]
    problems = [
        f"stored secret not readable with this data-key: {item.what}; fix: {item.fix}"
        for item in undecryptable(conn, DataCipher(key, previous=previous))
    ]
    if previous:
        problems.append(_rotation_left(conn, key))
    return problems


def _rotation_left(conn: sqlite3.Connection, key: bytes) -> str:
    from appliance.ops.rotation import not_current

    left = not_current(conn, key).reencrypted
    return (
        f"data-key rotation unfinished: {left} stored value(s) still under the old key "
        f"(both keys open them meanwhile); fix: appliancectl rotate data-key (it resumes)"
    )


def _schema_version(db_path: Path) -> int | None:
    """The database's schema version (0: none yet), None when there is no database."""
    if not db_path.exists():
        return None
    conn = offline_store.open_read_only(db_path)
    try:
        return read_schema_version(conn)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def cmd_check(paths: Paths, settings: Settings | None, args: argparse.Namespace) -> int:
    problems = check_installation(paths)
    if problems:
        for problem in problems:
            print(f"FAIL {problem}")
        return 1
    print(f"OK config {paths.env_file}")
    print(f"OK secrets {paths.secrets_dir}")
    print(f"OK database schema version {latest_version()}, integrity ok")
    for line in storage_report(load_settings(paths)):
        print(f"OK {line}")
    _check_tls_exposure(load_settings(paths))
    restored = _last_restore(load_settings(paths).database_path)
    if restored:
        print(f"OK {restored}")
    return 0


def _check_tls_exposure(settings: Settings) -> None:
    from appliance.ops.tls import exposure_warning

    warning = exposure_warning(settings)
    if warning:
        print(f"WARN {warning}")
    elif settings.tls:
        print(f"OK TLS: HTTPS with {settings.tls_cert_file}")


def _last_restore(db_path: Path) -> str | None:
    """The last restore of a backup (restore_epochs; runbook/restore.md), if any."""
    try:
        conn = offline_store.open_read_only(db_path)
        try:
            last = offline_store.restore_epochs(conn, last_only=True)
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if not last:
        return None
    epoch, restored_at, taken_at, gap = last[0]
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(restored_at))
    taken = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(taken_at))
    return (
        f"last restore: epoch {epoch} at {when} of a backup taken {taken}; "
        f"id sequences raised by {gap}"
    )


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # not reached


def storage_report(settings: Settings) -> list[str]:
    """What the data takes on disk: the database (with its WAL), its largest tables'
    rows, and the media files (retention keeps these in check; runbook/inbox.md)."""
    db_path = settings.database_path
    db_bytes = sum(
        p.stat().st_size for p in (db_path, db_path.with_name(db_path.name + "-wal")) if p.exists()
    )
    lines = [f"database size {_human(db_bytes)} ({db_path}, with its WAL)"]
    try:
        conn = offline_store.open_read_only(db_path)
        try:
            counts = [
                f"{table} {offline_store.row_count(conn, table)}"
                for table in ("messages", "media", "events", "audit_log", "contacts")
            ]
        finally:
            conn.close()
        lines.append("database rows: " + ", ".join(counts))
    except sqlite3.Error as exc:
        lines.append(f"database rows not counted: {exc}")
    files = 0
    media_bytes = 0
    if settings.media_dir.is_dir():
        for root, _, names in os.walk(settings.media_dir):
            for name in names:
                with contextlib.suppress(OSError):
                    media_bytes += (Path(root) / name).lstat().st_size
                    files += 1
    lines.append(f"media size {_human(media_bytes)} in {files} files ({settings.media_dir})")
    return lines


def cmd_version(paths: Paths, settings: Settings | None, args: argparse.Namespace) -> int:
    print(__version__)
    lock = paths.venv.parent / "requirements.lock"  # install.sh copies the one it used
    if lock.is_file():
        print(f"dependencies: requirements.lock sha256 {_file_sha256(lock)}")
    return 0


def _drop_to_service_user(paths: Paths) -> None:
    """Root writing the database would leave root-owned -wal/-shm files behind."""
    account = _service_account(paths)
    if account is not None:
        _become(account)


async def _with_db(settings: Settings, action: Any) -> Any:
    from appliance.db.database import Database

    if not settings.database_path.exists():
        raise StartupError(
            f"database {settings.database_path} does not exist; start the appliance once first"
        )
    db = await Database.open(
        settings.database_path,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )
    try:
        if await schema_version(db) != latest_version():
            raise StartupError("the database schema is not current; start the appliance first")
        return await action(db)
    finally:
        await db.close()


def _cli_actor() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


async def _audit(conn: Any, action: str, target: str, now: float, **details: Any) -> None:
    """The audit row of an appliancectl action: actor ``cli``, by the shell user."""
    from appliance.auth import store

    await store.audit(
        conn,
        action=action,
        now=now,
        actor="cli",
        actor_name=_cli_actor(),
        target=target,
        details=details,
    )


def cmd_api_keys(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    from appliance.auth import store
    from appliance.auth.permissions import Role

    _drop_to_service_user(paths)
    now = time.time()

    async def create(db: Any) -> str | None:
        owner = await store.user_for_login(db, args.user)
        if owner is None or not owner[2]:
            return None
        async with db.write() as conn:
            key_id, key, _ = await store.create_api_key(
                conn,
                name=args.name,
                role=Role(args.role),
                all_accounts=args.all_accounts,
                accounts=args.account or [],
                created_by="cli",
                owner_user_id=owner[0],
                now=now,
            )
            await _audit(
                conn,
                "api_key.create",
                f"key:{key_id}",
                now,
                name=args.name,
                role=args.role,
                accounts=args.account or [],
                owner=f"user:{owner[0]}",
            )
        return key

    async def listing(db: Any) -> list[Any]:
        return await store.list_api_keys(db, after=0, limit=10_000)

    async def revoke(db: Any) -> bool:
        async with db.write() as conn:
            done = await store.revoke_api_key(conn, args.id, now)
            if done:
                await _audit(conn, "api_key.revoke", f"key:{args.id}", now)
        return done

    try:
        if args.keys_command == "create":
            key = asyncio.run(_with_db(settings, create))
            if key is None:
                return _fail(f"no active user named {args.user!r} to own the key (--user)")
            print(key)  # the key alone, for scripts
        elif args.keys_command == "list":
            print("ID\tPREFIX\tNAME\tROLE\tGRANTS\tOWNER\tSTATE")
            for row in asyncio.run(_with_db(settings, listing)):
                state = "revoked" if row.revoked_at else "active"
                grants = "all" if row.all_accounts else (",".join(row.accounts) or "-")
                print(
                    f"{row.id}\t{store.API_KEY_PREFIX}{row.prefix}\t{row.name}\t{row.role.value}"
                    f"\t{grants}\t{row.owner or '-'}\t{state}"
                )
        elif not asyncio.run(_with_db(settings, revoke)):
            return _fail(f"no active API key with id {args.id}")
    except StartupError as exc:
        return _fail(str(exc), 78)
    return 0


def _read_or_generate_password(args: argparse.Namespace) -> tuple[str | None, bool]:
    """(password, generated): read from stdin with --password-stdin, else generated;
    (None, False) when the one read is too short."""
    import secrets as pysecrets

    from appliance.auth.passwords import MIN_PASSWORD_LENGTH

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < MIN_PASSWORD_LENGTH:
            return None, False
        return password, False
    return pysecrets.token_urlsafe(15), True


def cmd_users(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    from appliance.auth import store
    from appliance.auth.passwords import MIN_PASSWORD_LENGTH, hash_password
    from appliance.auth.permissions import Role
    from appliance.errors import Conflict

    _drop_to_service_user(paths)
    now = time.time()
    password, generated = None, False
    if args.users_command in ("create", "reset-password"):
        password, generated = _read_or_generate_password(args)
        if password is None:
            return _fail(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")

    async def reset(db: Any) -> str | None:
        found = await store.user_for_login(db, args.username)
        if found is None:
            return f"no user named {args.username!r}"
        password_hash = hash_password(password or "")
        async with db.write() as conn:
            await store.set_password(conn, found[0], password_hash, now)
            # An admin locked out by deactivation gets back in too.
            await store.update_user(conn, found[0], now=now, active=True)
            ended = await store.delete_user_sessions(conn, found[0])
            await _audit(conn, "password.reset", f"user:{found[0]}", now, ended_sessions=ended)
        return None

    async def create(db: Any) -> str | None:
        password_hash = hash_password(password or "")
        async with db.write() as conn:
            try:
                user_id = await store.create_user(
                    conn,
                    username=args.username,
                    password_hash=password_hash,
                    role=Role(args.role),
                    all_accounts=args.all_accounts,
                    accounts=args.account or [],
                    now=now,
                )
            except Conflict as exc:
                return exc.message
            await _audit(
                conn,
                "user.create",
                f"user:{user_id}",
                now,
                username=args.username,
                role=args.role,
                all_accounts=args.all_accounts,
                accounts=args.account or [],
            )
        return None

    async def listing(db: Any) -> list[Any]:
        return await store.list_users(db, after=0, limit=100_000)

    async def deactivate(db: Any) -> str:
        async with db.write() as conn:
            user_id = await store.user_id_by_name(conn, args.username)
            if user_id is None:
                raise LookupError(f"no user named {args.username!r}")
            user = await store.locked_user(conn, user_id)
            if await store.is_last_active_admin(conn, user):
                raise LookupError("cannot deactivate the last active admin; make another first")
            await store.update_user(conn, user.id, now=now, active=False)
            ended = await store.delete_user_sessions(conn, user.id)
            revoked = await store.revoke_user_keys(conn, user.id, now)
            await _audit(
                conn, "user.update", f"user:{user.id}", now, active=False, ended_sessions=ended
            )
            for key_id in revoked:
                await _audit(
                    conn, "api_key.revoke", f"key:{key_id}", now, reason="owner deactivated"
                )
        return (
            f"deactivated {user.username}: ended {ended} session(s), "
            f"revoked {len(revoked)} API key(s)"
        )

    try:
        if args.users_command == "list":
            print("ID\tUSERNAME\tROLE\tACCOUNTS\tSTATE")
            for user in asyncio.run(_with_db(settings, listing)):
                grants = "all" if user.all_accounts else (",".join(user.accounts) or "-")
                state = "active" if user.active else "inactive"
                print(f"{user.id}\t{user.username}\t{user.role.value}\t{grants}\t{state}")
            return 0
        if args.users_command == "deactivate":
            try:
                print(asyncio.run(_with_db(settings, deactivate)))
            except LookupError as exc:
                return _fail(str(exc))
            return 0
        action = create if args.users_command == "create" else reset
        problem = asyncio.run(_with_db(settings, action))
        if problem:
            return _fail(problem)
    except StartupError as exc:
        return _fail(str(exc), 78)
    if generated:
        print(f"generated a password for {args.username} (shown once):", file=sys.stderr)
        print(password)  # the password alone on stdout, for scripts
    return 0


def cmd_sandbox(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    """Inject a message into a sandbox account's simulated WhatsApp server."""
    from appliance.messaging import store
    from appliance.messaging.models import InboundIn

    _drop_to_service_user(paths)
    try:
        message = InboundIn.model_validate(
            {
                "from": args.sender,
                "type": "text",
                "text": {"body": args.text},
                **({"id": args.id} if args.id else {}),
                **({"name": args.name} if args.name else {}),
            }
        )
    except ValueError as exc:
        return _fail(f"invalid message: {exc}", 2)
    if message.id is None:  # chosen here, so that it can be printed
        message = message.model_copy(update={"id": store.new_message_id()})

    async def inject(db: Any) -> str | None:
        row = await store.account_row(db, args.account)
        if row is None:
            return f"no account {args.account!r}"
        if not engines.capabilities(row.engine).inbound_injection:
            return f"account {args.account!r} uses the {row.engine} engine, not sandbox"
        async with db.write() as conn:
            await store.inject_sandbox_inbound(conn, args.account, message, now=time.time())
        return None

    try:
        problem = asyncio.run(_with_db(settings, inject))
    except StartupError as exc:
        return _fail(str(exc), 78)
    if problem:
        return _fail(problem)
    print(message.id)  # the worker delivers it within a second, as message.received
    return 0


# -- backup, restore, support bundle (appliance/ops; runbook/backup.md) -------------------


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def default_backup_dir(paths: Paths) -> Path:
    return paths.prefix / "var" / "backups" / "appliance"


def cmd_backup(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    """An online backup archive: database snapshot, media, sessions, settings."""
    import socket

    from appliance.ops.archive import ArchiveError, write_backup
    from appliance.ops.crypt import Encryption, read_passphrase

    if args.to:
        dest = Path(args.to)
    else:
        dest = default_backup_dir(paths) / f"appliance-{socket.gethostname()}-{_stamp()}.tar.gz"
    if dest.exists() and not args.force:
        return _fail(f"{dest} exists; choose another --to or pass --force")
    try:
        encryption = Encryption(
            passphrase=read_passphrase(args.passphrase_file) if args.passphrase_file else None,
            recipients=args.recipient or [],
        )
        result = write_backup(
            paths,
            settings,
            dest,
            include_secrets=args.include_secrets,
            encryption=encryption,
        )
    except (ArchiveError, OSError, sqlite3.Error) as exc:
        return _fail(f"backup failed: {exc}")
    manifest = result.manifest
    counts = ", ".join(f"{k} {v}" for k, v in sorted(manifest["counts"].items()))
    secrets_note = "with secrets" if manifest["includes_secrets"] else "without secrets"
    if encryption.enabled:
        secrets_note += ", encrypted with age"
    print(
        f"backup written: {result.path} ({_human(result.size)}, schema "
        f"{manifest['schema_version']}, {secrets_note}; {counts})",
        file=sys.stderr,
    )
    print(result.path)  # the path alone on stdout, for scripts
    return 0


class _CliControl:
    """How a restore stops and starts this installation."""

    def __init__(self, paths: Paths, settings: Settings) -> None:
        self.paths, self.settings = paths, settings

    def running(self) -> bool:
        return _running(self.settings)

    def stop(self) -> None:
        if cmd_stop(self.paths, self.settings, argparse.Namespace(names=[])):
            raise StartupError("could not stop the appliance")

    def start(self) -> None:
        if cmd_start(self.paths, self.settings, argparse.Namespace(names=[], wait=0)):
            raise StartupError("could not start the appliance")

    def wait_ready(self, timeout_s: float) -> bool:
        return _wait_ready(self.settings, timeout_s)


def cmd_restore(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    """Verify an archive, then swap it in with a rollback copy; ids jump past the old."""
    from appliance.ops.archive import ArchiveError
    from appliance.ops.crypt import Decryption, read_passphrase
    from appliance.ops.restore import RestoreFailed, restore

    archive = Path(args.file)
    if not archive.is_file():
        return _fail(f"no archive at {archive}")
    account = _service_account(paths)
    owner = (account.pw_uid, account.pw_gid) if account and os.geteuid() == 0 else None
    try:
        decryption = Decryption(
            passphrase=read_passphrase(args.passphrase_file) if args.passphrase_file else None,
            identity_files=[Path(p) for p in args.identity or []],
        )
        report = restore(
            paths,
            settings,
            archive,
            _CliControl(paths, settings),
            with_config=args.with_config,
            with_secrets=args.with_secrets,
            decryption=decryption,
            owner=owner,
            ready_timeout_s=args.wait,
        )
    except ArchiveError as exc:
        return _fail(f"archive refused, nothing changed: {exc}", 65)
    except RestoreFailed as exc:
        return _fail(str(exc))
    except StartupError as exc:
        return _fail(f"restore not started: {exc}", 78)
    with contextlib.suppress(Exception):
        if account is not None and os.geteuid() == 0:
            _become(account)
        asyncio.run(
            _with_db(
                settings,
                lambda db: _audit_restore(db, archive, report.epoch, report.gap),
            )
        )
    for note in report.notes:
        print(f"note: {note}")
    if report.rollback_dir is not None:
        print(f"the previous data is kept in {report.rollback_dir}; remove it once satisfied")
    print(f"restored (epoch {report.epoch}; id sequences raised by {report.gap}); ready")
    return 0


async def _audit_restore(db: Any, archive: Path, epoch: int, gap: int) -> None:
    async with db.write() as conn:
        await _audit(
            conn, "system.restore", f"archive:{archive.name}", time.time(), epoch=epoch, gap=gap
        )


def cmd_support_bundle(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    """A redacted tarball for support: versions, settings, status, check, sizes, logs."""
    import io

    from appliance.ops.support import write_bundle

    def captured(func: Any, namespace: argparse.Namespace) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                rc = func(paths, settings, namespace)
            except Exception as exc:  # the bundle is wanted most when things fail
                rc = f"error: {type(exc).__name__}: {exc}"
        return f"{out.getvalue()}\n(exit {rc})\n"

    dest = Path(args.to) if args.to else settings.log_dir / f"support-{_stamp()}.tar.gz"
    try:
        result = write_bundle(
            paths,
            settings,
            dest,
            status=lambda: captured(cmd_status, argparse.Namespace(json=True)),
            check=lambda: captured(cmd_check, argparse.Namespace()),
            log_lines=args.lines,
        )
    except OSError as exc:
        return _fail(f"support bundle failed: {exc}")
    print(result.path)
    return 0


class _RotationControl:
    """How a rotation restarts the running processes so they read the new secrets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def running(self) -> bool:
        return supervisord_pid(self.settings.run_dir) is not None

    def restart_worker(self) -> None:
        # The webhooks process decrypts endpoint header values with the data key too:
        # left running, it would hold only the old key once the values move to the new.
        sup = proxy(self.settings.supervisor_socket)
        _restart_one(sup, "worker", sys.stdout)
        _restart_one(sup, "webhooks", sys.stdout)

    def restart_api(self) -> None:
        rolling_restart_api(self.settings)


def _confirm(args: argparse.Namespace, notice: str) -> bool:
    """Say what is about to happen; go on with --yes, or a "yes" typed on a terminal."""
    print(notice, file=sys.stderr)
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print("refusing without --yes (stdin is not a terminal)", file=sys.stderr)
        return False
    return input("type yes to go on: ").strip().lower() == "yes"


def cmd_rotate(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    """Rotate one secret (appliance/ops/rotation.py; runbook/secrets.md)."""
    from appliance.ops import rotation

    secrets_dir, db_path = paths.secrets_dir, settings.database_path
    control = _RotationControl(settings)
    problems = check_secrets_dir(secrets_dir, uid=_service_uid(paths))
    if problems:
        return _fail("secrets need fixing first: " + "; ".join(problems), 78)
    details: dict[str, Any] = {}
    try:
        if args.secret == "data-key":
            report = rotation.rotate_data_key(
                secrets_dir,
                db_path,
                control,
                actor=_cli_actor(),
                batch=args.batch,
                pause_s=args.pause_ms / 1000,
                accept_unreadable=args.accept_unreadable,
            )
            details = {
                "old_key_id": report.old_key_id,
                "new_key_id": report.new_key_id,
                "reencrypted": report.reencrypted,
                "finished": report.finished,
            }
            for item in report.unreadable:
                print(f"not readable with any key (left as it is): {item}", file=sys.stderr)
            if not report.finished:
                hint = (
                    " (add --accept-unreadable to finish anyway; appliancectl check names "
                    "what to re-enter)"
                    if report.unreadable
                    else ""
                )
                print(
                    f"data-key rotation not finished: both keys stay valid; run "
                    f"`appliancectl rotate data-key` again{hint}",
                    file=sys.stderr,
                )
                return 1
            print(
                f"data-key rotated: key {report.old_key_id} -> {report.new_key_id}, "
                f"{report.reencrypted} value(s) re-encrypted; the old key is removed"
            )
        elif args.secret == "session-key":
            if not _confirm(args, "rotating the session key signs every user out of the panel"):
                return 1
            rotation.rotate_session_key(secrets_dir)
            ended = rotation.end_all_sessions(db_path)
            if control.running():
                control.restart_api()
            details = {"ended_sessions": ended}
            print(f"session-key rotated: {ended} session(s) ended; everyone signs in again")
        elif args.secret == "metrics-token":
            grace_s = args.grace_hours * 3600
            rotation.rotate_metrics_token(secrets_dir, grace_s=grace_s, now=time.time())
            if control.running():
                control.restart_api()
            details = {"grace_hours": args.grace_hours}
            print(
                f"metrics-token rotated; the old one works for {args.grace_hours:g} more "
                f"hour(s): copy {secrets_dir / 'metrics-token'} to Prometheus' "
                f"credentials_file now (runbook/alerts.md)"
            )
        else:
            password, generated = _read_or_generate_password(args)
            if password is None:
                return _fail("the password is too short")
            problem = asyncio.run(_with_db(settings, lambda db: _reset_admin(db, password)))
            rotation.rotate_admin_password(secrets_dir, password)
            if problem:
                print(f"note: {problem}", file=sys.stderr)
            if generated:
                print("new admin password (shown once):", file=sys.stderr)
                print(password)
    except (rotation.RotationError, StartupError) as exc:
        return _fail(str(exc), 78)
    with contextlib.suppress(Exception):
        if args.secret != "data-key":
            rotation.record_simple(db_path, args.secret, _cli_actor())
        asyncio.run(_with_db(settings, lambda db: _audit_rotation(db, args.secret, details)))
    return 0


async def _reset_admin(db: Any, password: str) -> str | None:
    """The admin user's password follows the admin-password secret; their sessions end."""
    from appliance.auth import store
    from appliance.auth.passwords import hash_password

    found = await store.user_for_login(db, "admin")
    if found is None:
        return "no user named admin: the file was replaced, no account changed"
    password_hash = await asyncio.to_thread(hash_password, password)
    now = time.time()
    async with db.write() as conn:
        await store.set_password(conn, found[0], password_hash, now)
        ended = await store.delete_user_sessions(conn, found[0])
        await _audit(conn, "password.reset", f"user:{found[0]}", now, ended_sessions=ended)
    return None


async def _audit_rotation(db: Any, secret: str, details: dict[str, Any]) -> None:
    async with db.write() as conn:
        await _audit(conn, "secret.rotate", f"secret:{secret}", time.time(), **details)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliancectl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prefix", help="installation prefix (default: found from this program)")
    sub = parser.add_subparsers(dest="command", required=True)

    names_help = "only these processes: worker, webhooks, api (all API processes), api:api_00, ..."
    p = sub.add_parser(
        "start", help="start supervisord and every stopped process, wait until ready"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help=names_help)
    p.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for /readyz (0: no wait)"
    )
    p.set_defaults(func=cmd_start)
    p = sub.add_parser(
        "stop", help="stop gracefully (API processes first, worker last), or one process"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help=names_help)
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("restart", help="restart processes; API restarts are rolling")
    p.add_argument("target", nargs="?", choices=("api", "worker", "webhooks", "all"), default="all")
    p.add_argument("--wait", type=float, default=60.0)
    p.set_defaults(func=cmd_restart)
    p = sub.add_parser(
        "reload",
        help="apply new code and settings: a rolling restart (API processes one at a time, "
        "then the worker) when the schema and supervisord's settings (PORT, BIND, "
        "API_PROCESSES, ...) are unchanged; otherwise stop and start",
    )
    p.add_argument("--wait", type=float, default=90.0)
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser(
        "supervisorctl",
        help="run supervisorctl on this installation's supervisord (arguments passed on)",
    )
    p.add_argument("arguments", nargs=argparse.REMAINDER, metavar="ARGS")
    p.set_defaults(func=cmd_supervisorctl)
    p = sub.add_parser("status", help="processes and readiness; exit 0 only when all is well")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "tail", help="show log files (worker, webhooks, api_00, alerts, supervisord)"
    )
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_tail)
    p = sub.add_parser(
        "check", help="config, secret file permissions, database integrity and schema"
    )
    p.set_defaults(func=cmd_check, no_settings=True)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version, no_settings=True)
    p = sub.add_parser("api-keys", help="create, list and revoke API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="create a key and print it (the key alone) on stdout")
    k.add_argument("name")
    k.add_argument("--role", required=True, choices=("admin", "manager", "agent"))
    k.add_argument("--account", action="append", help="grant an account id (repeatable)")
    k.add_argument("--all-accounts", action="store_true", help="grant every account")
    k.add_argument(
        "--user",
        default="admin",
        help="the user the key belongs to (default: admin); deactivating or deleting "
        "that user revokes the key",
    )
    k = keys.add_parser(
        "list", help="list keys, with a header row: id, prefix, name, role, grants, owner, state"
    )
    k = keys.add_parser("revoke", help="revoke a key by id")
    k.add_argument("id", type=int)
    p.set_defaults(func=cmd_api_keys)
    p = sub.add_parser("users", help="user administration from the shell")
    users = p.add_subparsers(dest="users_command", required=True)
    users.add_parser("list", help="list users, with a header row: id, name, role, grants, state")
    u = users.add_parser(
        "create",
        help="create a user; prints a generated password (alone, on stdout), or with "
        "--password-stdin reads one from stdin and prints nothing",
    )
    u.add_argument("username")
    u.add_argument("--role", required=True, choices=("admin", "manager", "agent"))
    u.add_argument("--account", action="append", help="grant an account id (repeatable)")
    u.add_argument("--all-accounts", action="store_true", help="grant every account")
    u.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u = users.add_parser(
        "deactivate", help="deactivate a user: ends their sessions, revokes their API keys"
    )
    u.add_argument("username")
    u = users.add_parser(
        "reset-password",
        help="set a new password (printed, or read from stdin), reactivate, end sessions",
    )
    u.add_argument("username")
    u.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=cmd_users)
    p = sub.add_parser("sandbox", help="sandbox engine tools")
    sandbox = p.add_subparsers(dest="sandbox_command", required=True)
    s = sandbox.add_parser("inbound", help="inject a text message as if someone wrote to ACCOUNT")
    s.add_argument("account")
    s.add_argument("--from", dest="sender", required=True, help="E.164 number or chat id")
    s.add_argument("--text", required=True)
    s.add_argument("--id", help="WhatsApp message id (default: generated)")
    s.add_argument("--name", help="sender's profile name")
    p.set_defaults(func=cmd_sandbox)
    p = sub.add_parser(
        "backup",
        help="online backup archive (database snapshot, media, sessions, appliance.env); "
        "prints its path",
    )
    p.add_argument("--to", metavar="FILE", help="archive path (default: var/backups/appliance/)")
    p.add_argument(
        "--include-secrets", action="store_true", help="also the secret files (keep it safe)"
    )
    p.add_argument("--force", action="store_true", help="overwrite --to if it exists")
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="encrypt with age and the passphrase on this file's first line (-: stdin)",
    )
    p.add_argument(
        "--recipient",
        action="append",
        metavar="AGE1...",
        help="encrypt with age to this X25519 public key (repeatable)",
    )
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser(
        "restore",
        help="verify a backup archive, stop, swap it in (old data kept for rollback), "
        "migrate, start; ids issued afterwards never repeat earlier ones",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--with-config", action="store_true", help="also replace appliance.env with the archive's"
    )
    p.add_argument(
        "--with-secrets",
        action="store_true",
        help="also replace the secret files with the archive's (made with --include-secrets)",
    )
    p.add_argument("--wait", type=float, default=90.0, help="seconds to wait for /readyz")
    p.add_argument(
        "--passphrase-file", metavar="FILE", help="an encrypted archive's passphrase (-: stdin)"
    )
    p.add_argument(
        "--identity",
        action="append",
        metavar="FILE",
        help="an age identity file (AGE-SECRET-KEY-...) for an archive made with --recipient",
    )
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser(
        "support-bundle",
        help="a redacted tarball for support (versions, settings, status, check, sizes, logs)",
    )
    p.add_argument("--to", metavar="FILE", help="bundle path (default: the log directory)")
    p.add_argument("-n", "--lines", type=int, default=2000, help="log lines per file")
    p.set_defaults(func=cmd_support_bundle)
    p = sub.add_parser(
        "rotate",
        help="rotate a secret: data-key (re-encrypts stored values, resumable), "
        "session-key (signs everyone out), metrics-token (grace period), admin-password",
    )
    p.add_argument("secret", choices=["data-key", "session-key", "metrics-token", "admin-password"])
    p.add_argument("--batch", type=int, default=200, help="data-key: rows per transaction")
    p.add_argument("--pause-ms", type=float, default=0.0, help="data-key: pause between batches")
    p.add_argument(
        "--accept-unreadable",
        action="store_true",
        help="data-key: finish even though some stored values open with no key",
    )
    p.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        help="metrics-token: hours the old token keeps working",
    )
    p.add_argument("--yes", action="store_true", help="session-key: do not ask")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="admin-password: read it from stdin instead of generating one",
    )
    p.set_defaults(func=cmd_rotate)
    p = sub.add_parser("supervisord", help="run supervisord (used by the systemd unit)")
    p.add_argument("--foreground", action="store_true")
    p.set_defaults(func=cmd_supervisord)
    return parser


# As root on a system install these ask systemd (when it runs the unit) and keep root.
SYSTEMD_COMMANDS = ("start", "stop", "reload", "restore")
# These may start supervisord: root hands it the run, log and data directories first.
STARTING_COMMANDS = ("start", "reload", "supervisord")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths.discover(args.prefix)
    settings = None
    if not getattr(args, "no_settings", False):
        try:
            settings = load_settings(paths)
        except StartupError as exc:
            return _fail(str(exc), 78)
    # Whatever appliancectl creates is the service user's and closed to others, as
    # the processes' own files are (supervisord's umask).
    os.umask(0o027)
    account = _service_account(paths)
    if account is not None and not (args.command in SYSTEMD_COMMANDS and _systemd_managed(paths)):
        if settings is not None and args.command in STARTING_COMMANDS:
            _give_runtime_dirs_to(settings, account)
        _become(account)
    return int(args.func(paths, settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
