"""Security findings of the outside review (issue 10, section 3) against a real
installation: two API processes, the worker, real sockets."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Appliance, bearer, running_appliance

pytestmark = pytest.mark.integration

# Failed logins of the whole module come from 127.0.0.1: no per-address lockout here.
ENV = "LOGIN_MAX_FAILURES=5\nLOGIN_MAX_FAILURES_PER_ADDR=10000\nREQUEST_BODY_TIMEOUT_S=2\n"


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    with running_appliance(tmp_path_factory, "sec", ENV) as app:
        yield app


def _admin_key(app: Appliance) -> str:
    return app.ctl("api-keys", "create", "sec-admin", "--role", "admin").stdout.strip()


def test_parallel_wrong_logins_across_processes_verify_at_most_the_limit(sec: Appliance) -> None:
    sec.ctl("users", "create", "victim", "--role", "agent")
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(60, timeout=60)

    def guess(i: int) -> None:
        with httpx.Client(base_url=sec.base_url, timeout=60) as c:  # a fresh connection
            start.wait()
            response = c.post("/auth/login", json={"username": "victim", "password": f"w{i}"})
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(statuses) == 60
    assert set(statuses) <= {401, 429}
    assert 1 <= statuses.count(401) <= 5, statuses
    with bearer(sec, _admin_key(sec)) as admin:
        audit = admin.get("/api/audit", params={"limit": 200}).json()["items"]
    failed = [a for a in audit if a["action"] == "login.failed" and "victim" in a["target"]]
    assert len(failed) == statuses.count(401)


MALFORMED = [b'{"username": "\xff", "password": "x"}', b"[" * 1000 + b"]" * 1000, b"\x00"]


def test_malformed_bodies_are_400_without_a_traceback(sec: Appliance) -> None:
    key = _admin_key(sec)
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=sec.base_url, timeout=15) as anon, bearer(sec, key) as admin:
        for body in MALFORMED:
            for client, path in ((anon, "/auth/login"), (admin, "/api/users")):
                response = client.post(path, content=body, headers=headers)
                assert response.status_code == 400, (path, body[:10], response.text)
                data = response.json()
                assert data["requestId"] == response.headers["X-Request-ID"]
                assert data["issues"][0]["code"] == "json_invalid"
    logs = "".join(sec.log_text(name) for name in ("api_00", "api_01"))
    assert "not valid JSON" in logs
    assert "Traceback" not in logs


def test_a_body_that_stops_arriving_answers_408(sec: Appliance) -> None:
    with socket.create_connection(("127.0.0.1", sec.port), timeout=30) as sock:
        sock.sendall(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n"
            b'{"username": '
        )
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)  # the socket timeout bounds the wait
            if not chunk:
                break
            received += chunk
    assert received.startswith(b"HTTP/1.1 408"), received[:200]


def test_headers_that_never_finish_do_not_hold_the_connection(sec: Appliance) -> None:
    """Hypercorn's idle timer (keep_alive_timeout, 5 s) runs until a whole request head
    has arrived: trickling header lines does not reset it."""
    closed = False
    with socket.create_connection(("127.0.0.1", sec.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(1)
        for i in range(60):  # a header line a second, for a minute at most
            try:
                sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset or broken pipe: closed too
                closed = True
                break
    assert closed


def test_a_deleted_admins_key_cannot_make_an_admin(sec: Appliance) -> None:
    sec.ctl("users", "create", "leaver", "--role", "admin")
    leaver_key = sec.ctl(
        "api-keys", "create", "leavers", "--role", "admin", "--user", "leaver"
    ).stdout.strip()
    listed = sec.ctl("api-keys", "list").stdout.splitlines()
    assert listed[0].split("\t")[5] == "OWNER"
    assert any(line.split("\t")[2:6:3] == ["leavers", "leaver"] for line in listed[1:])
    with bearer(sec, _admin_key(sec)) as admin:
        users = admin.get("/api/users", params={"limit": 200}).json()["items"]
        leaver = next(u for u in users if u["username"] == "leaver")
        assert admin.delete(f"/api/users/{leaver['id']}").status_code == 204
    with bearer(sec, leaver_key) as ghost:
        made = ghost.post(
            "/api/users",
            json={"username": "evil", "password": "evil-password-1", "role": "admin"},
        )
    assert made.status_code == 401


def test_user_ids_are_not_reused(sec: Appliance) -> None:
    with bearer(sec, _admin_key(sec)) as admin:
        body = {"username": "once", "password": "once-password-1", "role": "agent"}
        first = admin.post("/api/users", json=body).json()["id"]
        assert admin.delete(f"/api/users/{first}").status_code == 204
        second = admin.post("/api/users", json=body).json()["id"]
    assert second > first


def test_worker_socket_is_private(sec: Appliance) -> None:
    mode = os.stat(sec.run / "worker.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_users_list_from_the_shell(sec: Appliance) -> None:
    lines = sec.ctl("users", "list").stdout.splitlines()
    assert lines[0] == "ID\tUSERNAME\tROLE\tACCOUNTS\tSTATE"
    assert any(line.split("\t")[1] == "admin" for line in lines[1:])
