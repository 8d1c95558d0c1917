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


def exit_on_sigterm() -> None:
    """Turn SIGTERM (e.g. from ``timeout``) into SystemExit, so ``finally`` blocks clean up."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def snapshot_source(dest: Path, source: str | None = None) -> None:
    """Copy the work tree (``source`` None) or export a git revision into ``dest``."""
    if source is None:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            capture_output=True, timeout=60, check=True,
        ).stdout.decode().split("\0")  # fmt: skip
        for name in filter(None, listed):
            src = REPO / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        return
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", source],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, timeout=120, check=True)


def source_revision(source: str | None = None) -> str:
    """The commit of the code under test: ``source`` resolved, or the work tree's HEAD
    with ``+dirty`` when the work tree differs from it."""
    if source is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short=12", source],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()  # fmt: skip
        return source
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "appliance", "install.sh",
             "supervisord.conf", "pyproject.toml"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


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


def parent_pid(pid: int) -> int | None:
    """The parent's pid (None once ``pid`` has exited)."""
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return None


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


def machine_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds from /proc/stat: busy (all processes) and steal."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {
        "busy": (user + nice + system + irq + softirq) / CLK_TCK,
        "steal": steal / CLK_TCK,
    }


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
    def create(cls, port: int | None = None, *, source: str | None = None) -> Installation:
        """Install from a private snapshot of the source: the work tree, or a git revision.

        ``source`` None: a copy of the work tree (tracked and untracked files, without
        git-ignored ones such as ``build/`` and ``.venv``); else a revision such as
        ``HEAD``, exported with ``git archive``. A private copy keeps concurrent installs
        from the same work tree (tests, other benchmarks) from colliding in setuptools'
        in-tree ``build/`` directory, and edits made during the run from leaking in.
        """
        snapshot = Path(tempfile.mkdtemp(prefix="applsrc-"))
        # Short path: AF_UNIX socket paths are limited to about 107 bytes.
        prefix = Path(tempfile.mkdtemp(prefix="applb-"))
        inst = cls(prefix, port or free_port())
        try:
            snapshot_source(snapshot, source)
            argv = ["bash", str(snapshot / "install.sh"), "--prefix", str(prefix)]
            argv += ["--port", str(inst.port), "--no-start"]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"install.sh failed:\n{result.stdout}\n{result.stderr}")
            inst.base_env = inst.env_file.read_text()
        except BaseException:
            shutil.rmtree(prefix, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
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
        self.ctl("start", "--wait", "120")
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
