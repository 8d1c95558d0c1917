"""The worker's JSON-RPC socket admits only its own user and root (SO_PEERCRED), mode 0600."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import orjson
import pytest

from appliance.ipc.server import RpcServer, peer_allowed


def test_peer_allowed_only_for_the_same_uid_and_root() -> None:
    me = os.geteuid()
    assert peer_allowed(me, server_uid=me)
    assert peer_allowed(0, server_uid=me)
    assert not peer_allowed(me + 1, server_uid=me)
    assert not peer_allowed(65534, server_uid=1000)


def _call(path: Path) -> bytes:
    """One subscribe call over the socket; the answer line, or b"" if the server hung up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        request = {"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"topics": []}}
        try:
            sock.sendall(orjson.dumps(request) + b"\n")
            return sock.makefile("rb").readline()
        except OSError:
            return b""


def test_socket_mode_is_0600_and_the_same_user_is_served(tmp_path: Path) -> None:
    async def body() -> None:
        server = RpcServer(tmp_path / "w.sock")
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o600
            answer = await asyncio.to_thread(_call, server.socket_path)
            assert orjson.loads(answer)["result"] == {"subscribed": []}
        finally:
            await server.drain(1.0)

    asyncio.run(body())


def test_a_connection_from_another_uid_is_refused(tmp_path: Path) -> None:
    """As root, a forked child drops to nobody and connects (the mode is opened up for
    it, so only the credential check can refuse it); otherwise the server is told it
    runs as another uid, so this process is the stranger."""
    as_root = os.geteuid() == 0

    # As root the stranger must reach the socket: a directory nobody may traverse
    # (pytest's tmp_path is under a 0700 directory).
    where = Path(tempfile.mkdtemp(prefix="peercred-")) if as_root else tmp_path

    async def body() -> None:
        server = RpcServer(where / "w.sock")
        if not as_root:
            server.server_uid = os.geteuid() + 1  # and this process is not root either
        await server.start()
        try:
            if as_root:
                os.chmod(where, 0o755)
                os.chmod(server.socket_path, 0o666)
                nobody = pwd.getpwnam("nobody").pw_uid
                answer = await asyncio.to_thread(_call_as, nobody, server.socket_path)
            else:
                answer = await asyncio.to_thread(_call, server.socket_path)
            assert answer == b""  # no answer: the connection was closed at once
            assert server.refused_peers == 1
        finally:
            await server.drain(1.0)

    try:
        asyncio.run(body())
    finally:
        if as_root:
            shutil.rmtree(where, ignore_errors=True)


def _call_as(uid: int, path: Path) -> bytes:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, b"answer:" + _call(path))
        except BaseException as exc:
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    if not out.startswith(b"answer:"):
        pytest.fail(f"the child did not get to call: {out!r}")
    return out[len(b"answer:") :]
