"""Talking to supervisord over its XML-RPC Unix socket, and reading its pid file."""

from __future__ import annotations

import contextlib
import os
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport


def proxy(socket_path: Path) -> Any:
    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def supervisord_pid(run_dir: Path) -> int | None:
    """The pid of our running supervisord, or None."""
    try:
        pid = int((run_dir / "supervisord.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by the service user
    return pid


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.1)
    return False


def is_responsive(socket_path: Path) -> bool:
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        state: str = proxy(socket_path).getState()["statename"]
        return state == "RUNNING"
    return False
