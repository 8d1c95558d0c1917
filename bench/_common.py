"""Helpers shared by the benchmarks: a throw-away installation, supervisord, /proc.

Only the benchmark scripts import this module (it sits beside them, so running
``python bench/<name>.py`` finds it). It never touches anything outside the temp
directories it creates, and stops only processes the benchmark started.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """One GET to 127.0.0.1 on a new connection; (0, b"") when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def wait_http_ok(port: int, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_get(port, path)[0] == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"http://127.0.0.1:{port}{path} not answering 200 after {timeout_s}s")


def supervisor_proxy(socket_path: Path) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def wait_all_running(socket_path: Path, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    infos: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            infos = list(supervisor_proxy(socket_path).getAllProcessInfo())
            if infos and all(i["statename"] == "RUNNING" for i in infos):
                return infos
        time.sleep(0.1)
    states = {f"{i['group']}:{i['name']}": i["statename"] for i in infos}
    raise RuntimeError(f"supervisord processes not all RUNNING after {timeout_s}s: {states}")


# -- /proc -------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (field 3 is the first)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, found by walking /proc parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(_stat_fields(int(entry))[1])
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its threads included), in seconds."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, its identity."""
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def memory_kb(pid: int) -> dict[str, int | None]:
    """RSS from /proc/<pid>/status; PSS and USS from smaps_rollup when readable."""
    out: dict[str, int | None] = {"rss_kb": None, "pss_kb": None, "uss_kb": None}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
    with contextlib.suppress(OSError):
        rollup = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                rollup[parts[0].rstrip(":")] = int(parts[1])
        if "Pss" in rollup:
            out["pss_kb"] = rollup["Pss"]
            out["uss_kb"] = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return out


def identify(pids: Iterable[int]) -> dict[int, int]:
    """pid -> start time, for the living ones: what ``stop_pids`` checks before a signal."""
    known = {pid: start_time(pid) for pid in pids}
    return {pid: t for pid, t in known.items() if t is not None}


def stop_pids(processes: dict[int, int], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, processes we started that are still alive.

    ``processes`` maps pid -> start time (see ``identify``): a pid reused since by
    some other process has another start time and is left alone.
    """

    def ours(pid: int) -> bool:
        return pid > 1 and pid != os.getpid() and alive(pid) and start_time(pid) == processes[pid]

    pids = [pid for pid in processes if ours(pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(ours(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the appliance, installed into a temp prefix -----------------------------------------------


@dataclass
class Installation:
    """``install.sh --prefix`` into a temp dir; started/stopped with its appliancectl."""

    prefix: Path
    port: int
    base_env: str = ""
    started: dict[int, int] = field(default_factory=dict)  # pid -> start time

    @classmethod
    def create(cls, port: int | None = None) -> Installation:
        # Short path: AF_UNIX socket paths are limited to about 107 bytes.
        prefix = Path(tempfile.mkdtemp(prefix="applb-"))
        inst = cls(prefix, port or free_port())
        try:
            argv = ["bash", str(REPO / "install.sh"), "--prefix", str(prefix)]
            argv += ["--port", str(inst.port), "--no-start"]
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                raise RuntimeError(f"install.sh failed:\n{result.stdout}\n{result.stderr}")
            inst.base_env = inst.env_file.read_text()
        except BaseException:
            shutil.rmtree(prefix, ignore_errors=True)
            raise
        return inst

    @property
    def venv(self) -> Path:
        return self.prefix / "opt/appliance/venv"

    @property
    def env_file(self) -> Path:
        return self.prefix / "etc/appliance/appliance.env"

    @property
    def run_dir(self) -> Path:
        return self.prefix / "run/appliance"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    def supervisord_pid(self) -> int | None:
        try:
            pid = int((self.run_dir / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def configure(self, extra: dict[str, str]) -> None:
        """appliance.env as installed, plus ``extra`` appended (later lines win)."""
        lines = "".join(f"{key}={value}\n" for key, value in extra.items())
        self.env_file.write_text(self.base_env + lines)

    def ctl(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        argv = [str(self.venv / "bin/appliancectl"), "--prefix", str(self.prefix), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def start(self) -> dict[str, int]:
        """Start and wait until ready; returns supervisor name -> pid (and supervisord)."""
        self.ctl("start", "--wait", "60")
        sup = self.supervisord_pid()
        if sup is None:
            raise RuntimeError("supervisord not running after appliancectl start")
        infos = wait_all_running(self.supervisor_socket, 30)
        pids = {"supervisord": sup}
        pids.update({f"{i['group']}:{i['name']}": int(i["pid"]) for i in infos})
        self.started.update(identify(descendants(sup)))
        return pids

    def stop(self) -> None:
        """appliancectl stop; then make sure nothing we started is left running."""
        sup = self.supervisord_pid()
        if sup is not None:
            self.started.update(identify(descendants(sup)))
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.ctl("stop", timeout_s=120)
            stop_pids({sup: self.started[sup]} if sup in self.started else {}, timeout_s=60)
        stop_pids(self.started, timeout_s=10)
        self.started.clear()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)
