"""One real installation per test session: install.sh --prefix into a temp dir,
supervisord with two API processes and the worker, real sockets, real SQLite."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance.supervisor_client import proxy

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Appliance:
    prefix: Path
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def etc(self) -> Path:
        return self.prefix / "etc" / "appliance"

    @property
    def secrets(self) -> Path:
        return self.etc / "secrets"

    @property
    def data(self) -> Path:
        return self.prefix / "var" / "lib" / "appliance"

    @property
    def logs(self) -> Path:
        return self.prefix / "var" / "log" / "appliance"

    @property
    def run(self) -> Path:
        return self.prefix / "run" / "appliance"

    @property
    def db_path(self) -> Path:
        return self.data / "appliance.db"

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        argv = [
            str(self.prefix / "opt/appliance/venv/bin/appliancectl"),
            "--prefix",
            str(self.prefix),
            *args,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{argv} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    @property
    def supervisor(self):
        return proxy(self.run / "supervisor.sock")

    def pid_of(self, name: str) -> int:
        return int(self.supervisor.getProcessInfo(name)["pid"])

    def api_names(self) -> list[str]:
        infos = self.supervisor.getAllProcessInfo()
        return sorted(f"{p['group']}:{p['name']}" for p in infos if p["group"] == "api")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10, **kwargs)

    def readyz(self) -> httpx.Response:
        with httpx.Client(base_url=self.base_url, timeout=5) as c:
            return c.get("/readyz")

    def wait_ready(self, timeout_s: float = 30, consecutive: int = 1) -> None:
        """Until /readyz answers 200 ``consecutive`` times in a row (fresh connections)."""
        deadline = time.monotonic() + timeout_s
        last = None
        streak = 0
        while time.monotonic() < deadline:
            try:
                last = self.readyz()
                streak = streak + 1 if last.status_code == 200 else 0
                if streak >= consecutive:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout_s}s: {getattr(last, 'text', last)}")

    def wait_running(self, name: str, timeout_s: float = 30, *, replacing: int = 0) -> int:
        """The pid of ``name`` once RUNNING; with ``replacing``, of a process other than
        that one: right after a kill, supervisord may not have reaped it yet and still
        reports the dead pid as RUNNING."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.supervisor.getProcessInfo(name)
            if info["statename"] == "RUNNING" and int(info["pid"]) != replacing:
                return int(info["pid"])
            time.sleep(0.1)
        raise AssertionError(f"{name} not RUNNING (as a new process) after {timeout_s}s")

    def metrics_token(self) -> str:
        return (self.secrets / "metrics-token").read_text().strip()

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def run_install(prefix: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", str(REPO / "install.sh"), "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise AssertionError(f"install.sh failed:\n{result.stdout}\n{result.stderr}")
    return result


def install_appliance(
    prefix: Path,
    extra_env: str = "",
    *,
    before_start: Callable[[Path], None] | None = None,
    start_env: dict[str, str] | None = None,
) -> Appliance:
    """Install with install.sh --no-start, append settings, then start and wait ready.

    ``before_start(prefix)`` runs between install and start; ``start_env`` is given to
    ``appliancectl start``, which hands APPLIANCE_* variables on to every process.
    """
    port = free_port()
    run_install(prefix, "--port", str(port), "--no-start")
    env_file = prefix / "etc/appliance/appliance.env"
    with env_file.open("a") as fh:
        fh.write("API_PROCESSES=2\nENABLE_TEST_ROUTES=true\nAPI_GRACEFUL_TIMEOUT_S=10\n")
        fh.write(extra_env)
    if before_start is not None:
        before_start(prefix)
    app = Appliance(prefix, port)
    with pytest.MonkeyPatch.context() as env:
        for key, value in (start_env or {}).items():
            env.setenv(key, value)
        app.ctl("start", "--wait", "60")
    app.wait_ready()
    return app


@contextmanager
def running_appliance(
    factory: pytest.TempPathFactory,
    name: str,
    extra_env: str = "",
    *,
    before_start: Callable[[Path], None] | None = None,
    start_env: dict[str, str] | None = None,
) -> Iterator[Appliance]:
    # Short path: AF_UNIX socket paths are limited to about 107 bytes.
    prefix = Path(factory.mktemp(name))
    app = None
    try:
        app = install_appliance(prefix, extra_env, before_start=before_start, start_env=start_env)
        yield app
    finally:
        subprocess.run(
            [str(prefix / "opt/appliance/venv/bin/appliancectl"), "--prefix", str(prefix), "stop"],
            capture_output=True,
            timeout=120,
        )
        if os.environ.get("KEEP_APPLIANCE") is None:
            shutil.rmtree(prefix, ignore_errors=True)


# The session's shared installation, fixture ``appliance``, is in tests/conftest.py:
# tests/browser uses the same one.


def admin_password(app: Appliance) -> str:
    return (app.secrets / "admin-password").read_text().strip()


def login(app: Appliance, username: str, password: str) -> httpx.Client:
    """A client holding a session cookie and sending its CSRF token."""
    with httpx.Client(base_url=app.base_url, timeout=15) as once:
        response = once.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    # A client not yet opened, so callers may use it in a with block.
    return httpx.Client(
        base_url=app.base_url,
        timeout=15,
        cookies=response.cookies,
        headers={"X-CSRF-Token": response.json()["csrf_token"]},
    )


def new_api_key(app: Appliance, name: str, role: str, *accounts: str) -> str:
    args = ["api-keys", "create", name, "--role", role]
    for account in accounts:
        args += ["--account", account]
    return app.ctl(*args).stdout.strip()


def bearer(app: Appliance, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=app.base_url, timeout=15, headers={"Authorization": f"Bearer {key}"}
    )


def fault_text(exc: BaseException) -> str:
    if isinstance(exc, xmlrpc.client.Fault):
        return exc.faultString
    return str(exc)


@contextmanager
def probing_healthz(
    port: int, *, threads: int = 2, max_requests: int = 100_000, limit_s: float = 900
) -> Iterator[dict[str, int]]:
    """Hit /healthz on fresh connections until the block ends; yields the tally.

    Keys: ``ok``, ``refused``, ``5xx``, ``status_NNN``, ``error_<Exception>``, and
    ``exhausted`` (1 when a probe hit its request or time limit before the block ended,
    so part of the block went unprobed). Bounded: ``max_requests`` per thread and
    ``limit_s`` overall.
    """
    stop = threading.Event()
    lock = threading.Lock()
    tally: dict[str, int] = {}
    deadline = time.monotonic() + limit_s

    def count(key: str) -> None:
        with lock:
            tally[key] = tally.get(key, 0) + 1

    def loop() -> None:
        sent = 0
        while not stop.is_set():
            if sent >= max_requests or time.monotonic() >= deadline:
                count("exhausted")
                return
            sent += 1
            # A fresh TCP connection per request: every connect is a chance to be refused.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/healthz", headers={"Connection": "close"})
                status = conn.getresponse().status
                count("5xx" if status >= 500 else "ok" if status == 200 else f"status_{status}")
            except ConnectionRefusedError:
                count("refused")
            except OSError as exc:
                count(f"error_{type(exc).__name__}")
            finally:
                conn.close()

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield tally
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
