"""appliancectl: run and inspect one installation of the appliance.

It finds the installation from its own location (``<prefix>/opt/appliance/venv``)
or from ``--prefix``.
"""

from __future__ import annotations

import argparse
import asyncio
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
from appliance.db.migrate import latest_version
from appliance.errors import StartupError
from appliance.secrets import check_secrets_dir
from appliance.supervisor_client import is_responsive, proxy, supervisord_pid, wait_gone

SERVICE_USER = "appliance"
UNIT_NAME = "appliance.service"


def _fail(message: str, code: int = 1) -> int:
    print(f"appliancectl: {message}", file=sys.stderr)
    return code


def _service_uid() -> int:
    """The user the appliance runs as: the service user when we are root."""
    if os.geteuid() == 0:
        try:
            return pwd.getpwnam(SERVICE_USER).pw_uid
        except KeyError:
            return 0
    return os.geteuid()


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


def _prepare_runtime_dirs(settings: Settings) -> None:
    for directory in (settings.run_dir, settings.log_dir, settings.data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    # Multiprocess metrics files of a previous run would be summed into this one.
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(mode=0o750)


def _supervisord_argv(paths: Paths, foreground: bool) -> list[str]:
    argv = [str(paths.venv / "bin" / "supervisord"), "-c", str(paths.supervisord_conf)]
    if foreground:
        argv.append("-n")
    return argv


def _readyz(settings: Settings, timeout_s: float = 2.0) -> tuple[int, dict[str, Any]]:
    host = "127.0.0.1" if settings.bind in ("0.0.0.0", "::") else settings.bind
    url = f"http://{host}:{settings.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
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
    _prepare_runtime_dirs(settings)
    env = supervisord_environment(paths, settings)
    argv = _supervisord_argv(paths, args.foreground)
    os.execve(argv[0], argv, env)
    return 0  # not reached


def cmd_start(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    if _systemd_managed(paths):
        subprocess.run(["systemctl", "start", UNIT_NAME], check=True)
    elif supervisord_pid(settings.run_dir) and is_responsive(settings.supervisor_socket):
        proxy(settings.supervisor_socket).startAllProcesses(True)
    else:
        _prepare_runtime_dirs(settings)
        env = supervisord_environment(paths, settings)
        argv = _supervisord_argv(paths, foreground=False)
        if os.geteuid() == 0 and paths.prefix == Path("/"):
            argv = ["runuser", "-u", SERVICE_USER, "--", *argv]
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
    if _systemd_managed(paths):
        subprocess.run(["systemctl", "stop", UNIT_NAME], check=True)
        return 0
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


def rolling_restart_api(settings: Settings, *, out: Any = sys.stdout) -> None:
    """Restart API processes one at a time; the shared socket keeps accepting."""
    sup = proxy(settings.supervisor_socket)
    infos = _process_infos(settings)
    names = sorted(f"{p['group']}:{p['name']}" for p in infos if p["group"] == "api")
    for name in names:
        sup.stopProcess(name, True)
        sup.startProcess(name, True)
        print(f"restarted {name}", file=out)


def cmd_restart(paths: Paths, settings: Settings, args: argparse.Namespace) -> int:
    if supervisord_pid(settings.run_dir) is None:
        return _fail("not running; use `appliancectl start`")
    sup = proxy(settings.supervisor_socket)
    if args.target in ("worker", "all"):
        sup.stopProcess("worker", True)
        sup.startProcess("worker", True)
        print("restarted worker")
    if args.target in ("api", "all"):
        rolling_restart_api(settings)
    if args.wait > 0 and not _wait_ready(settings, args.wait):
        return _fail(f"not ready {args.wait}s after the restart")
    return 0


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
    problems.extend(check_secrets_dir(paths.secrets_dir, uid=_service_uid()))
    db_path = settings.database_path
    if not db_path.exists():
        problems.append(f"database {db_path} does not exist yet (the worker creates it at start)")
        return problems
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if integrity != "ok":
                problems.append(f"database {db_path} failed integrity_check: {integrity}")
            try:
                version = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                ).fetchone()[0]
            except sqlite3.OperationalError:
                version = 0
            if version != latest_version():
                problems.append(
                    f"database schema is at version {version}, this code expects "
                    f"{latest_version()}; start the appliance so the worker migrates it"
                )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        problems.append(f"database {db_path} cannot be read: {exc}")
    return problems


def cmd_check(paths: Paths, settings: Settings | None, args: argparse.Namespace) -> int:
    problems = check_installation(paths)
    if problems:
        for problem in problems:
            print(f"FAIL {problem}")
        return 1
    print(f"OK config {paths.env_file}")
    print(f"OK secrets {paths.secrets_dir}")
    print(f"OK database schema version {latest_version()}, integrity ok")
    return 0


def cmd_version(paths: Paths, settings: Settings | None, args: argparse.Namespace) -> int:
    print(__version__)
    return 0


def _drop_to_service_user(paths: Paths) -> None:
    """Root writing the database would leave root-owned -wal/-shm files behind."""
    if os.geteuid() != 0 or paths.prefix != Path("/"):
        return
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


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
        if await db.scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") != (
            latest_version()
        ):
            raise StartupError("the database schema is not current; start the appliance first")
        return await action(db)
    finally:
        await db.close()


def _cli_actor() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


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
            await store.audit(
                conn,
                action="api_key.create",
                now=now,
                actor="cli",
                actor_name=_cli_actor(),
                target=f"key:{key_id}",
                details={
                    "name": args.name,
                    "role": args.role,
                    "accounts": args.account or [],
                    "owner": f"user:{owner[0]}",
                },
            )
        return key

    async def listing(db: Any) -> list[Any]:
        return await store.list_api_keys(db, after=0, limit=10_000)

    async def revoke(db: Any) -> bool:
        async with db.write() as conn:
            done = await store.revoke_api_key(conn, args.id, now)
            if done:
                await store.audit(
                    conn, action="api_key.revoke", now=now, actor="cli", target=f"key:{args.id}"
                )
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
            await store.audit(
                conn,
                action="password.reset",
                now=now,
                actor="cli",
                actor_name=_cli_actor(),
                target=f"user:{found[0]}",
                details={"ended_sessions": ended},
            )
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
            await store.audit(
                conn,
                action="user.create",
                now=now,
                actor="cli",
                actor_name=_cli_actor(),
                target=f"user:{user_id}",
                details={
                    "username": args.username,
                    "role": args.role,
                    "all_accounts": args.all_accounts,
                    "accounts": args.account or [],
                },
            )
        return None

    async def listing(db: Any) -> list[Any]:
        return await store.list_users(db, after=0, limit=100_000)

    async def deactivate(db: Any) -> str:
        async with db.write() as conn:
            async with conn.execute(
                "SELECT id FROM users WHERE username = ?", (args.username,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise LookupError(f"no user named {args.username!r}")
            user = await store.locked_user(conn, row[0])
            if (
                user.role == Role.ADMIN
                and user.active
                and not await store.other_active_admins(conn, user.id)
            ):
                raise LookupError("cannot deactivate the last active admin; make another first")
            await store.update_user(conn, user.id, now=now, active=False)
            ended = await store.delete_user_sessions(conn, user.id)
            revoked = await store.revoke_user_keys(conn, user.id, now)
            actor = {"actor": "cli", "actor_name": _cli_actor(), "now": now}
            await store.audit(
                conn,
                action="user.update",
                target=f"user:{user.id}",
                details={"active": False, "ended_sessions": ended},
                **actor,
            )
            for key_id in revoked:
                await store.audit(
                    conn,
                    action="api_key.revoke",
                    target=f"key:{key_id}",
                    details={"reason": "owner deactivated"},
                    **actor,
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
    import orjson

    from appliance.messaging import store
    from appliance.messaging.models import InboundIn, recipient_jid

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
    message_id = message.id or store.new_message_id()
    content = message.model_dump(mode="json", exclude_none=True, exclude={"from_", "id", "name"})
    if message.name:
        content["_name"] = message.name

    async def inject(db: Any) -> str | None:
        row = await store.account_row(db, args.account)
        if row is None:
            return f"no account {args.account!r}"
        if row["engine"] != "sandbox":
            return f"account {args.account!r} uses the {row['engine']} engine, not sandbox"
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO sandbox_server_inbox (account_id, message_id, from_jid, content, "
                "injected_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, message_id) "
                "DO NOTHING",
                (
                    args.account,
                    message_id,
                    recipient_jid(message.from_),
                    orjson.dumps(content).decode(),
                    time.time(),
                ),
            )
        return None

    try:
        problem = asyncio.run(_with_db(settings, inject))
    except StartupError as exc:
        return _fail(str(exc), 78)
    if problem:
        return _fail(problem)
    print(message_id)  # the worker delivers it within a second, as message.received
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliancectl", description=__doc__)
    parser.add_argument("--prefix", help="installation prefix (default: found from this program)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("start", help="start supervisord and every process, wait until ready")
    p.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for /readyz (0: no wait)"
    )
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("stop", help="stop gracefully: API processes first, worker last")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("restart", help="restart processes; API restarts are rolling")
    p.add_argument("target", nargs="?", choices=("api", "worker", "all"), default="all")
    p.add_argument("--wait", type=float, default=60.0)
    p.set_defaults(func=cmd_restart)
    p = sub.add_parser("status", help="processes and readiness; exit 0 only when all is well")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("tail", help="show log files (worker, api_00, alerts, supervisord)")
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
    p = sub.add_parser("supervisord", help="run supervisord (used by the systemd unit)")
    p.add_argument("--foreground", action="store_true")
    p.set_defaults(func=cmd_supervisord)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths.discover(args.prefix)
    settings = None
    if not getattr(args, "no_settings", False):
        try:
            settings = load_settings(paths)
        except StartupError as exc:
            return _fail(str(exc), 78)
    return int(args.func(paths, settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
