"""The event log over real sockets: GET /api/events (pages, long poll) and the
websocket /api/events/ws, against the installed appliance with the sandbox engine."""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import (
    Appliance,
    admin_password,
    bearer,
    login,
    new_api_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FAST_SANDBOX = {"pairing_delay_ms": 50, "delivered_after_ms": 50, "read_after_ms": 100}


@pytest.fixture(scope="module")
def admin_key(appliance: Appliance) -> str:
    return new_api_key(appliance, "events-admin", "admin")


@pytest.fixture(scope="module")
def admin(appliance: Appliance, admin_key: str) -> Iterator[httpx.Client]:
    with bearer(appliance, admin_key) as c:
        yield c


@pytest.fixture(scope="module", autouse=True)
def _delete_accounts_afterwards(admin: httpx.Client) -> Iterator[None]:
    """Sandbox accounts of this module are deleted at its end: a connected account
    keeps writing (receipts, reconnects), which other modules need not see."""
    yield
    for account in _CREATED:
        admin.delete(f"/api/accounts/{account}", params={"confirm": account})
    _CREATED.clear()


_CREATED: list[str] = []


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _ws(app: Appliance, headers: dict[str, str], **params: Any) -> ClientConnection:
    url = f"ws://127.0.0.1:{app.port}/api/events/ws"
    if params:
        url += "?" + urlencode(params)
    return connect(url, additional_headers=headers, open_timeout=10, close_timeout=2)


def _refused(app: Appliance, headers: dict[str, str], **params: Any) -> tuple[int, Any]:
    with pytest.raises(InvalidStatus) as caught, _ws(app, headers, **params):
        pass
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"null")


def _events_from_db(app: Appliance, account: str, type_: str) -> list[int]:
    conn = sqlite3.connect(f"file:{app.db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT id FROM events WHERE account_id = ? AND type = ? ORDER BY id", (account, type_)
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


def _poll(
    c: httpx.Client, want: Callable[[list[dict[str, Any]]], bool], timeout_s: float, **params: Any
) -> list[dict[str, Any]]:
    """GET /api/events with long polls, following ``next``, until ``want(items so far)``."""
    items: list[dict[str, Any]] = []
    after = params.pop("after", 0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        wait = max(0.0, min(5.0, deadline - time.monotonic()))
        response = c.get("/api/events", params={**params, "after": after, "wait": wait})
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        assert int(page["next"]) >= int(after)
        after = page["next"]
        if want(items):
            return items
    raise AssertionError(f"timed out after {timeout_s}s; got {len(items)} events")


def _connect_account(admin: httpx.Client, account: str) -> None:
    response = admin.post(
        "/api/accounts", json={"id": account, "name": account, "engine_settings": FAST_SANDBOX}
    )
    assert response.status_code == 201, response.text
    _CREATED.append(account)

    def connected(items: list[dict[str, Any]]) -> bool:
        return any(e["data"].get("state") == "connected" for e in items)

    items = _poll(admin, connected, 30, account=account, types="account.status")
    states = [e["data"]["state"] for e in items]
    assert states[:3] == ["connecting", "pairing", "connected"], states


def _inject(c: httpx.Client, account: str, text: str) -> str:
    response = c.post(
        f"/api/accounts/{account}/sandbox/inbound",
        json={"from": "+905551112233", "type": "text", "text": {"body": text}},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _read(
    ws: ClientConnection, until: Callable[[list[dict[str, Any]]], bool], timeout_s: float
) -> list[dict[str, Any]]:
    """Event frames (heartbeats skipped) until ``until(frames)``; bounded in time."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while not until(frames):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout_s}s with {len(frames)} events")
        try:
            frame = json.loads(ws.recv(timeout=remaining))
        except TimeoutError:
            continue
        if frame.get("type") == "heartbeat":
            continue
        assert isinstance(frame.get("id"), int), frame
        frames.append(frame)
    return frames


def test_resuming_websocket_client_misses_nothing_and_sees_nothing_twice(
    appliance: Appliance, admin: httpx.Client, admin_key: str
) -> None:
    account, total = "ev_resume", 300
    _connect_account(admin, account)
    injected: list[str] = []
    failure: list[BaseException] = []

    def injector() -> None:
        try:
            with bearer(appliance, admin_key) as c:
                for n in range(total):
                    injected.append(_inject(c, account, f"message {n}"))
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=injector, daemon=True)
    thread.start()
    params = {"account": account, "types": "message.received"}
    union: list[dict[str, Any]] = []
    after = 0
    # Three connections: read part and close cleanly, read more and drop the TCP
    # connection without a close frame, then read the rest.
    for stop_at, abrupt in ((90, False), (200, True), (total, False)):
        with _ws(appliance, _auth(admin_key), after=after, **params) as ws:
            have = len(union)
            union += _read(ws, lambda f, n=stop_at - have: len(f) >= n, 60)
            if abrupt:
                ws.socket.shutdown(socket.SHUT_RDWR)
        after = union[-1]["id"]
    thread.join(60)
    assert not thread.is_alive() and failure == []

    ids = [e["id"] for e in union]
    assert all(a < b for a, b in itertools.pairwise(ids)), "ids strictly increase"
    assert len(ids) == len(set(ids)) == total
    assert ids == _events_from_db(appliance, account, "message.received")
    assert {e["data"]["id"] for e in union} == set(injected)
    assert all(e["account_id"] == account and e["type"] == "message.received" for e in union)
    # The same events over HTTP, in pages.
    pages = _poll(admin, lambda items: len(items) >= total, 30, limit=37, **params)
    assert [e["id"] for e in pages] == ids


def test_a_caller_granted_one_account_never_sees_another(
    appliance: Appliance, admin: httpx.Client
) -> None:
    _connect_account(admin, "ev_a")
    _connect_account(admin, "ev_b")
    agent_key = new_api_key(appliance, "events-agent", "agent", "ev_a")
    for n in range(5):
        _inject(admin, "ev_b", f"b{n}")
        _inject(admin, "ev_a", f"a{n}")

    def received(account: str, count: int) -> Callable[[list[dict[str, Any]]], bool]:
        def enough(items: list[dict[str, Any]]) -> bool:
            matching = [e for e in items if e["account_id"] == account]
            return sum(e["type"] == "message.received" for e in matching) >= count

        return enough

    _poll(admin, received("ev_b", 5), 30, account="ev_b", types="message.received")
    _poll(admin, received("ev_a", 5), 30, account="ev_a", types="message.received")
    # One more for A after all of B's are committed: a stream in id order that
    # delivers it has passed every event of B.
    last_a = _inject(admin, "ev_a", "last")

    def has_last(items: list[dict[str, Any]]) -> bool:
        return any(e["data"].get("id") == last_a for e in items)

    with bearer(appliance, agent_key) as agent:
        seen = _poll(agent, has_last, 30, limit=50)
        assert {e["account_id"] for e in seen} == {"ev_a"}
        assert sum(e["type"] == "message.received" for e in seen) == 6
        refused = agent.get("/api/events", params={"account": "ev_b"})
        assert refused.status_code == 404 and set(refused.json()) == {"error", "requestId"}
        bad = agent.get("/api/events", params={"types": "message.received,nope"})
        assert bad.status_code == 400 and bad.json()["issues"][0]["path"] == "types"

    with _ws(appliance, _auth(agent_key)) as ws:
        frames = _read(ws, has_last, 30)
    assert {e["account_id"] for e in frames} == {"ev_a"}
    assert [e["id"] for e in frames] == [e["id"] for e in seen]
    status, body = _refused(appliance, _auth(agent_key), account="ev_b")
    assert status == 404 and body["error"] == "no such account"


def test_long_poll_answers_when_an_event_arrives(appliance: Appliance, admin: httpx.Client) -> None:
    account = "ev_poll"
    _connect_account(admin, account)
    params = {"account": account, "types": "message.received"}
    position = admin.get("/api/events", params=params).json()["next"]
    injected: list[str] = []
    timer = threading.Timer(1.0, lambda: injected.append(_inject(admin, account, "wake")))
    timer.start()
    started = time.monotonic()
    try:
        response = admin.get(
            "/api/events", params={**params, "after": position, "wait": 20}, timeout=30
        )
    finally:
        timer.join(10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    items = response.json()["items"]
    assert [e["data"]["id"] for e in items] == injected
    assert 0.9 < elapsed < 10, elapsed
    # Nothing new: the long poll times out with an empty page and the same position.
    after = response.json()["next"]
    again = admin.get("/api/events", params={**params, "after": after, "wait": 1}).json()
    assert again == {"items": [], "next": after}


def test_websocket_authentication(appliance: Appliance, admin_key: str) -> None:
    status, body = _refused(appliance, {})
    assert status == 401 and set(body) == {"error", "requestId"}
    status, _ = _refused(appliance, {"Authorization": "Bearer apk_nope"})
    assert status == 401
    status, body = _refused(appliance, _auth(admin_key), types="bogus")
    assert status == 400 and body["issues"][0]["path"] == "types"

    with login(appliance, "admin", admin_password(appliance)) as panel:
        session = panel.cookies.get("appliance_session")
        assert session
        cookie = {"Cookie": f"appliance_session={session}"}
        status, body = _refused(appliance, {**cookie, "Origin": "https://evil.example"})
        assert status == 403
        # From the appliance's own origin the session works; the admin sees the
        # account.status events of the accounts created above (or by other tests).
        origin = {**cookie, "Origin": appliance.base_url}
        before = panel.get("/api/events", params={"limit": 1}).json()["items"]
        with _ws(appliance, origin) as ws:
            if before:
                frames = _read(ws, lambda f: len(f) >= 1, 10)
                assert frames[0]["id"] == before[0]["id"]
        panel.post("/auth/logout")
        status, _ = _refused(appliance, origin)
        assert status == 401


def test_a_client_that_stops_reading_slows_nothing(
    appliance: Appliance, admin: httpx.Client, admin_key: str
) -> None:
    # Streams that nobody reads (their backlog is every event so far), while the API
    # keeps answering promptly. (Closing a stuck stream is covered by unit tests.)
    with _ws(appliance, _auth(admin_key)) as one, _ws(appliance, _auth(admin_key)) as two:
        for _ in range(20):
            started = time.monotonic()
            assert admin.get("/api/events", params={"limit": 1}).status_code == 200
            assert time.monotonic() - started < 2
        assert json.loads(one.recv(timeout=10))["id"] == json.loads(two.recv(timeout=10))["id"]


def test_live_events_arrive_promptly_through_the_notification(
    appliance: Appliance, admin: httpx.Client, admin_key: str
) -> None:
    # Without the worker's notification a stream would still see each event within
    # its 1 s re-read; with it, well before. Median of several, to be robust.
    account = "ev_live"
    _connect_account(admin, account)
    latencies = []
    params = {"account": account, "types": "message.received"}
    with _ws(appliance, _auth(admin_key), **params) as ws:
        for n in range(7):
            time.sleep(0.2 + 0.1 * n)  # land at different points of the 1 s re-read cycle
            started = time.monotonic()
            message_id = _inject(admin, account, f"live {n}")
            frames = _read(ws, lambda f, m=message_id: f and f[-1]["data"]["id"] == m, 10)
            assert len(frames) == 1
            latencies.append(time.monotonic() - started)
    assert sorted(latencies)[3] < 0.3, latencies


def test_streams_resume_across_a_rolling_restart_of_the_api(
    appliance: Appliance, admin: httpx.Client, admin_key: str
) -> None:
    account, total = "ev_restart", 120
    _connect_account(admin, account)
    injected: list[str] = []
    failure: list[BaseException] = []

    def injector() -> None:
        try:
            # A new connection per request: a kept-alive one may be closed by a
            # process that stops, and a POST lost that way would be ambiguous.
            deadline = time.monotonic() + 60
            while len(injected) < total and time.monotonic() < deadline:
                with bearer(appliance, admin_key) as c:
                    injected.append(_inject(c, account, f"r{len(injected)}"))
                time.sleep(0.03)
        except BaseException as exc:
            failure.append(exc)

    restarter = threading.Thread(target=lambda: appliance.ctl("restart", "api"), daemon=True)
    thread = threading.Thread(target=injector, daemon=True)
    params = {"account": account, "types": "message.received"}
    events: list[dict[str, Any]] = []
    closes: list[tuple[int | None, Any]] = []
    after = 0
    deadline = time.monotonic() + 90
    thread.start()
    restarter.start()
    while len(events) < total and time.monotonic() < deadline:
        resume = None
        try:
            with _ws(appliance, _auth(admin_key), after=after, **params) as ws:
                while len(events) < total and time.monotonic() < deadline:
                    try:
                        frame = json.loads(ws.recv(timeout=1))
                    except TimeoutError:
                        continue
                    if frame.get("type") == "resume":
                        resume = frame["after"]
                    elif "id" in frame:
                        events.append(frame)
                        after = frame["id"]
        except ConnectionClosed as exc:
            closes.append((exc.rcvd.code if exc.rcvd else None, resume))
        except (OSError, InvalidStatus):
            time.sleep(0.1)  # between a stop and a start; reconnect
        if resume is not None:
            after = max(after, resume)
    thread.join(60)
    restarter.join(60)
    assert failure == [] and len(injected) == total
    assert [e["data"]["id"] for e in events] == injected[: len(events)]
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) == total, closes
    assert ids == _events_from_db(appliance, account, "message.received")
    # Each process restart ended its streams with "resume" and code 1012.
    assert closes and all(code == 1012 and resume is not None for code, resume in closes), closes
