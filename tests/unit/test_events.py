"""The event log readers of appliance/api/live.py against a temporary SQLite: filters,
paging and ``next``, the bell, and the websocket stream loop with a fake client."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing.connections import WebsocketResponseError

from appliance.api import live
from appliance.api.app import create_app
from appliance.api.live import EventBell, Scope, poll_page, read_page, stream_events
from appliance.api.state import state_of
from appliance.auth import store as auth_store
from appliance.auth.permissions import Role
from appliance.config import Paths, load_settings
from appliance.db.database import Database
from appliance.messaging import store
from appliance.messaging.models import EVENT_TYPES
from appliance.secrets import Secrets
from tests.unit.conftest import OpenDb, key_owner

ALL = Scope(accounts=None, unassigned=True)


async def _append(db: Database, *events: tuple[str, str | None]) -> list[int]:
    ids = []
    async with db.write() as conn:
        for type_, account in events:
            ids.append(await store.append_event(conn, type_, account, {"n": len(ids)}, 1.0))
    return ids


def _run(open_db: OpenDb, db_path: Path, body: Callable[[Database], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_db(db_path) as db:
            await asyncio.wait_for(body(db), 30)

    asyncio.run(main())


# -- read_page: filters ------------------------------------------------------------------


def test_scope_filters_accounts_types_and_unassigned(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        a1, b1, n1, a2, b2 = await _append(
            db,
            ("message.received", "A"),
            ("message.received", "B"),
            ("account.status", None),
            ("account.status", "A"),
            ("message.sent", "B"),
        )

        async def ids(scope: Scope, after: int = 0) -> list[int]:
            return [e.id for e in (await read_page(db, scope, after, 100)).items]

        assert await ids(ALL) == [a1, b1, n1, a2, b2]  # an admin
        # all_accounts but not admin: no events without an account
        assert await ids(Scope(accounts=None, unassigned=False)) == [a1, b1, a2, b2]
        assert await ids(Scope(accounts=frozenset({"A"}), unassigned=False)) == [a1, a2]
        assert await ids(Scope(accounts=frozenset({"A"}), unassigned=True)) == [a1, n1, a2]
        assert await ids(Scope(accounts=frozenset(), unassigned=True)) == [n1]
        assert await ids(Scope(accounts=frozenset(), unassigned=False)) == []
        assert await ids(Scope(accounts=frozenset({"C"}), unassigned=False)) == []
        status = frozenset({"account.status"})
        assert await ids(Scope(accounts=None, unassigned=True, types=status)) == [n1, a2]
        assert await ids(Scope(accounts=frozenset({"B"}), unassigned=False, types=status)) == []
        assert await ids(Scope(accounts=None, unassigned=True, types=frozenset())) == []
        assert await ids(ALL, after=n1) == [a2, b2]
        assert await ids(ALL, after=b2) == []

    _run(open_db, db_path, body)


def test_event_shape_is_the_event_out_model(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        async with db.write() as conn:
            id_ = await store.append_event(
                conn, "message.received", "A", {"message": {"id": "x", "text": "ü"}}, 12.5
            )
        page = await read_page(db, ALL, 0, 10)
        assert page.items[0].model_dump() == {
            "id": id_,
            "type": "message.received",
            "account_id": "A",
            "created_at": 12.5,
            "data": {"message": {"id": "x", "text": "ü"}},
        }

    _run(open_db, db_path, body)


# -- read_page: next ---------------------------------------------------------------------


def test_next_is_the_last_item_of_a_full_page(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        ids = await _append(db, *[("message.received", "A")] * 5)
        page = await read_page(db, ALL, 0, 3)
        assert [e.id for e in page.items] == ids[:3]
        assert page.full and page.next == ids[2] and page.newest == ids[4]
        page = await read_page(db, ALL, page.next, 3)
        assert [e.id for e in page.items] == ids[3:]
        assert not page.full and page.next == ids[4]
        page = await read_page(db, ALL, page.next, 3)
        assert page.items == [] and page.next == ids[4]  # nothing new: stays

    _run(open_db, db_path, body)


def test_next_moves_past_events_the_filter_skips(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        only_a = Scope(accounts=frozenset({"A"}), unassigned=False)
        (a1,) = await _append(db, ("message.received", "A"))
        others = await _append(db, *[("message.received", "B")] * 4)
        page = await read_page(db, only_a, 0, 10)
        assert [e.id for e in page.items] == [a1]
        assert page.next == others[-1]  # beyond the last item: B's events were scanned
        nothing = await read_page(db, Scope(accounts=frozenset(), unassigned=False), 0, 10)
        assert nothing.items == [] and nothing.next == others[-1]
        (a2,) = await _append(db, ("message.received", "A"))
        page = await read_page(db, only_a, page.next, 10)
        assert [e.id for e in page.items] == [a2]

    _run(open_db, db_path, body)


def test_next_never_goes_back_before_after(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        assert (await read_page(db, ALL, 0, 10)).next == 0  # empty log
        await _append(db, ("message.received", "A"))
        page = await read_page(db, ALL, 1000, 10)
        assert page.items == [] and page.next == 1000

    _run(open_db, db_path, body)


def test_paging_with_filters_sees_every_matching_event_once(open_db: OpenDb, db_path: Path) -> None:
    rng = random.Random(7)

    async def body(db: Database) -> None:
        accounts = ["A", "B", "C", None]
        events = [(rng.choice(EVENT_TYPES), rng.choice(accounts)) for _ in range(400)]
        ids = await _append(db, *events)
        scope = Scope(
            accounts=frozenset({"A", "C"}),
            unassigned=False,
            types=frozenset({"message.received", "account.status"}),
        )
        expected = [
            i
            for i, (type_, account) in zip(ids, events, strict=True)
            if account in scope.accounts and type_ in scope.types  # type: ignore[operator]
        ]
        for limit in (1, 7, 50, 1000):
            seen: list[int] = []
            after = 0
            for _ in range(1000):
                page = await read_page(db, scope, after, limit)
                seen += [e.id for e in page.items]
                assert page.next >= after
                after = page.next
                if not page.full:
                    break
            assert seen == expected, limit

    _run(open_db, db_path, body)


def test_parse_types() -> None:
    assert live.parse_types(None, EVENT_TYPES) is None
    assert live.parse_types(" ", EVENT_TYPES) is None
    assert live.parse_types("message.read, account.status,", EVENT_TYPES) == {
        "message.read",
        "account.status",
    }
    with pytest.raises(ValueError, match=r"unknown event type\(s\) nope"):
        live.parse_types("message.read,nope", EVENT_TYPES)


# -- the bell ----------------------------------------------------------------------------


def test_bell_wakes_waiters_and_keeps_rings_between_ticket_and_wait() -> None:
    async def body() -> None:
        bell = EventBell()
        ticket = bell.ticket()
        assert await bell.wait(ticket, 0.01) is False
        waiter = asyncio.create_task(bell.wait(bell.ticket(), 5))
        await asyncio.sleep(0)
        bell.on_notification("events", {"last_id": 9}, {})
        assert await asyncio.wait_for(waiter, 1) is True
        assert bell.last_id == 9
        # A ring after the ticket was taken but before the wait: not lost.
        ticket = bell.ticket()
        bell.ring(3)
        assert await bell.wait(ticket, 0) is True
        assert bell.last_id == 9  # never goes back
        # Other topics and odd params are harmless.
        rings = bell.rings
        bell.on_notification("other", {"last_id": 100}, {})
        assert bell.rings == rings
        bell.on_notification("events", "junk", {})
        bell.on_notification("events", {"last_id": True}, {})
        assert bell.rings == rings + 2 and bell.last_id == 9

    asyncio.run(body())


def test_poll_page_waits_for_the_bell_or_the_poll_interval(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        bell = EventBell()
        loop = asyncio.get_running_loop()
        # Nothing new, no wait: answers at once.
        page = await poll_page(db, bell, ALL, 0, 10, wait_s=0)
        assert page.items == []

        # Woken by the bell.
        async def later() -> None:
            await asyncio.sleep(0.1)
            ids = await _append(db, ("message.received", "A"))
            bell.ring(ids[-1])

        started = loop.time()
        task = asyncio.create_task(later())
        page = await poll_page(db, bell, ALL, 0, 10, wait_s=10, poll_s=5)
        await task
        assert len(page.items) == 1 and loop.time() - started < 2

        # No notification at all: found by the periodic re-read.
        async def silent() -> None:
            await asyncio.sleep(0.1)
            await _append(db, ("message.received", "A"))

        started = loop.time()
        task = asyncio.create_task(silent())
        page = await poll_page(db, bell, ALL, page.next, 10, wait_s=10, poll_s=0.2)
        await task
        assert len(page.items) == 1 and loop.time() - started < 2

        # Times out with an empty page; stops early when the server shuts down.
        started = loop.time()
        page = await poll_page(db, bell, ALL, page.next, 10, wait_s=0.3, poll_s=0.1)
        assert page.items == [] and 0.25 < loop.time() - started < 2
        started = loop.time()
        page = await poll_page(db, bell, ALL, page.next, 10, wait_s=10, stopping=lambda: True)
        assert page.items == [] and loop.time() - started < 1

    _run(open_db, db_path, body)


# -- the stream --------------------------------------------------------------------------


class FakeClient:
    """Collects frames; can be made slow, and stop (disconnect) after some frames."""

    def __init__(self, *, delay_s: float = 0.0, hang_after: int | None = None) -> None:
        self.frames: list[dict[str, Any]] = []
        self.delay_s = delay_s
        self.hang_after = hang_after

    async def send(self, frame: str) -> None:
        if self.hang_after is not None and len(self.frames) >= self.hang_after:
            await asyncio.sleep(3600)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.frames.append(json.loads(frame))

    def event_ids(self) -> list[int]:
        return [f["id"] for f in self.frames if "id" in f]

    async def wait_for(self, count: int, timeout_s: float = 10) -> None:
        for _ in range(int(timeout_s / 0.01)):
            if len(self.event_ids()) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(self.event_ids())} events, expected {count}")


def test_stream_sends_backlog_then_live_and_resumes_exactly(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        bell = EventBell()
        backlog = await _append(db, *[("message.received", "A")] * 25)
        client = FakeClient()
        task = asyncio.create_task(
            stream_events(db, bell, ALL, 0, client.send, page_size=10, poll_s=5)
        )
        await client.wait_for(25)
        live_ids = await _append(db, *[("message.sent", "A")] * 5)
        bell.ring(live_ids[-1])
        await client.wait_for(30, timeout_s=2)  # woken by the bell, not the 5 s poll
        task.cancel()  # the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.event_ids() == backlog + live_ids

        # A second client that read part, then resumes after its last id.
        first = FakeClient(hang_after=12)
        task = asyncio.create_task(stream_events(db, bell, ALL, 0, first.send, page_size=10))
        await first.wait_for(12)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        more = await _append(db, *[("message.received", "B")] * 3)
        second = FakeClient()
        after = first.event_ids()[-1]
        task = asyncio.create_task(
            stream_events(db, bell, ALL, after, second.send, page_size=10, poll_s=0.05)
        )
        await second.wait_for(len(backlog + live_ids + more) - 12)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        union = first.event_ids() + second.event_ids()
        assert union == backlog + live_ids + more  # in order, nothing missed or repeated

    _run(open_db, db_path, body)


def test_stuck_client_gets_resume_position_of_last_completed_send(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        ids = await _append(db, *[("message.received", "A")] * 20)
        client = FakeClient(hang_after=7)
        end = await stream_events(
            db, EventBell(), ALL, 0, client.send, page_size=5, send_timeout_s=0.2
        )
        assert end.code == live.CLOSE_TRY_AGAIN
        assert end.after == ids[6] == client.event_ids()[-1] and end.sent == 7

    _run(open_db, db_path, body)


def test_client_lagging_behind_live_traffic_is_told_to_resume(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        bell = EventBell()
        client = FakeClient()
        task = asyncio.create_task(
            stream_events(db, bell, ALL, 0, client.send, page_size=5, max_lag=20, poll_s=0.05)
        )
        await asyncio.sleep(0.1)  # caught up (empty log): live from now on
        ids = await _append(db, *[("message.received", "A")] * 40)  # a burst
        bell.ring(ids[-1])
        end = await asyncio.wait_for(task, 5)
        assert end.code == live.CLOSE_TRY_AGAIN
        assert end.after == (client.event_ids() or [0])[-1]
        # The backlog at connect time is not lag: a new stream reads it all.
        again = FakeClient()
        task = asyncio.create_task(
            stream_events(db, bell, ALL, end.after, again.send, page_size=5, max_lag=20)
        )
        await again.wait_for(40 - len(client.event_ids()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.event_ids() + again.event_ids() == ids

    _run(open_db, db_path, body)


def test_stream_ends_on_shutdown_and_on_withdrawn_access(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        ids = await _append(db, *[("message.received", "A")] * 3)
        stopping = False
        client = FakeClient()
        task = asyncio.create_task(
            stream_events(db, EventBell(), ALL, 0, client.send, stopping=lambda: stopping)
        )
        await client.wait_for(3)
        stopping = True
        end = await asyncio.wait_for(task, 3)  # within the 1 s poll
        assert end.code == live.CLOSE_RESTART and end.after == ids[-1]

        scopes: list[Scope | None] = [Scope(accounts=frozenset({"B"}), unassigned=False), None]

        async def reauth() -> Scope | None:
            return scopes.pop(0)

        client = FakeClient()
        end = await asyncio.wait_for(
            stream_events(
                db, EventBell(), ALL, 0, client.send, reauth=reauth, reauth_s=0, poll_s=0.05
            ),
            3,
        )
        # Re-checked before the first read: the narrowed scope applies at once.
        assert end.code == live.CLOSE_POLICY and client.event_ids() == []

    _run(open_db, db_path, body)


def test_stream_ends_with_resume_position_when_reading_fails(
    open_db: OpenDb, db_path: Path
) -> None:
    async def body(db: Database) -> None:
        ids = await _append(db, *[("message.received", "A")] * 3)
        reads = 0
        original = db.fetchall

        async def flaky(sql: str, params: Any = ()) -> Any:
            nonlocal reads
            reads += 1
            if reads > 1:
                raise RuntimeError("database is closing")
            return await original(sql, params)

        db.fetchall = flaky  # type: ignore[method-assign]
        client = FakeClient()
        end = await asyncio.wait_for(
            stream_events(db, EventBell(), ALL, 0, client.send, poll_s=0.01), 5
        )
        assert end.code == live.CLOSE_ERROR and end.after == ids[-1] and end.sent == 3

    _run(open_db, db_path, body)


def test_idle_stream_sends_heartbeats_with_its_position(open_db: OpenDb, db_path: Path) -> None:
    async def body(db: Database) -> None:
        (_, b) = await _append(db, ("message.received", "A"), ("message.received", "B"))
        client = FakeClient()
        only_a = Scope(accounts=frozenset({"A"}), unassigned=False)
        task = asyncio.create_task(
            stream_events(db, EventBell(), only_a, 0, client.send, heartbeat_s=0.1, poll_s=0.05)
        )
        for _ in range(300):
            if any(f.get("type") == "heartbeat" for f in client.frames):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        beat = next(f for f in client.frames if f.get("type") == "heartbeat")
        assert beat == {"type": "heartbeat", "after": b}
        assert json.loads(live.control_frame("resume", 5)) == {"type": "resume", "after": 5}

    _run(open_db, db_path, body)


# -- the routes, in-process (never served; no worker, no rate limiter) -------------------


def _app(tmp_path: Path, db: Database) -> Quart:
    paths = Paths(tmp_path / "root")
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    secrets = Secrets(
        session_key=b"s" * 32, metrics_token="m" * 32, data_key=b"d" * 32, admin_password="pw"
    )
    app = create_app(load_settings(paths, environ={}), secrets)
    state_of(app).db = db
    return app


async def _key(db: Database, role: Role, *accounts: str) -> dict[str, str]:
    async with db.write() as conn:
        _, key, _ = await auth_store.create_api_key(
            conn,
            name=f"test-{role.value}-{'-'.join(accounts)}",
            role=role,
            all_accounts=False,
            accounts=list(accounts),
            created_by="test",
            owner_user_id=await key_owner(conn),
            now=time.time(),
        )
    return {"Authorization": f"Bearer {key}"}


async def _session(db: Database, role: Role, *accounts: str) -> str:
    """A session cookie value for a new user."""
    token = f"cookie-{role.value}-{time.monotonic_ns()}"
    async with db.write() as conn:
        user_id = await auth_store.create_user(
            conn,
            username=f"u{time.monotonic_ns()}",
            password_hash="x",
            role=role,
            all_accounts=False,
            accounts=list(accounts),
            now=time.time(),
        )
        await auth_store.create_session(
            conn,
            user_id=user_id,
            token_hash=auth_store.session_hash(b"s" * 32, token),
            now=time.time(),
            absolute_s=3600,
            client_addr=None,
        )
    return token


async def _accounts_and_events(db: Database) -> dict[str, list[int]]:
    async with db.write() as conn:
        for account in ("A", "B"):
            await store.create_account(
                conn,
                account_id=account,
                name=account,
                engine="sandbox",
                engine_settings={},
                settings={},
                now=1.0,
            )
    ids = await _append(
        db,
        ("message.received", "A"),
        ("message.received", "B"),
        ("account.status", None),
        ("account.status", "A"),
    )
    return {"A": [ids[0], ids[3]], "B": [ids[1]], "none": [ids[2]], "all": ids}


def test_http_list_filters_by_grants_and_validates(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        ids = await _accounts_and_events(db)
        client = _app(tmp_path, db).test_client()
        agent_a = await _key(db, Role.AGENT, "A")
        admin = await _key(db, Role.ADMIN)

        async def get(headers: dict[str, str], **params: Any) -> tuple[int, Any]:
            response = await client.get("/api/events", headers=headers, query_string=params)
            return response.status_code, await response.get_json()

        status, data = await get({})
        assert status == 401 and set(data) == {"error", "requestId"}
        status, data = await get(agent_a)
        assert status == 200
        assert [e["id"] for e in data["items"]] == ids["A"]
        assert data["next"] == str(ids["all"][-1])  # B's and unassigned ones skipped
        status, data = await get(admin, limit=2)
        assert [e["id"] for e in data["items"]] == ids["all"][:2]
        assert data["next"] == str(ids["all"][1])
        status, data = await get(admin, after=data["next"], types="account.status")
        assert [e["id"] for e in data["items"]] == [ids["none"][0], ids["A"][1]]
        status, data = await get(admin, account="B")
        assert [e["id"] for e in data["items"]] == ids["B"]
        status, data = await get(agent_a, account="B")
        assert status == 404 and data["error"] == "no such account"
        status, data = await get(admin, account="nope")
        assert status == 404
        status, data = await get(agent_a, types="message.received,bogus")
        assert status == 400 and data["issues"][0]["path"] == "types"
        assert "bogus" in data["issues"][0]["message"]
        for bad in ({"after": "-1"}, {"limit": "0"}, {"wait": "31"}, {"unknown": "1"}):
            status, data = await get(agent_a, **bad)
            assert status == 400, bad

    _run(open_db, db_path, body)


def test_http_long_poll_wakes_on_the_bell(open_db: OpenDb, db_path: Path, tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        ids = await _accounts_and_events(db)
        app = _app(tmp_path, db)
        client = app.test_client()
        agent_a = await _key(db, Role.AGENT, "A")
        bell = state_of(app).bell
        assert isinstance(bell, EventBell)

        async def later() -> int:
            await asyncio.sleep(0.2)
            await _append(db, ("message.received", "B"))  # not visible: keeps waiting
            bell.ring()
            await asyncio.sleep(0.2)
            (new,) = await _append(db, ("message.sent", "A"))
            bell.ring(new)
            return new

        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.create_task(later())
        response = await client.get(
            "/api/events",
            headers=agent_a,
            query_string={"after": ids["all"][-1], "wait": 10},
        )
        new = await task
        data = await response.get_json()
        assert [e["id"] for e in data["items"]] == [new]
        assert loop.time() - started < 1.0  # the bell woke it, not a re-read (at 1.2 s)

    _run(open_db, db_path, body)


async def _ws_frames(
    client: Any, headers: dict[str, str], count: int, **params: Any
) -> list[dict[str, Any]]:
    frames = []
    async with client.websocket("/api/events/ws", headers=headers, query_string=params) as ws:
        for _ in range(count):
            frames.append(json.loads(await asyncio.wait_for(ws.receive(), 5)))
    return frames


async def _ws_refused(client: Any, headers: dict[str, str], **params: Any) -> tuple[int, Any]:
    async with client.websocket("/api/events/ws", headers=headers, query_string=params) as ws:
        with pytest.raises(WebsocketResponseError) as caught:
            await asyncio.wait_for(ws.receive(), 5)
    response = caught.value.response
    data = await response.get_json()
    # A refused handshake echoes its request id like every other answer.
    assert data["requestId"] and response.headers.get("X-Request-ID") == data["requestId"]
    return response.status_code, data


def test_websocket_authenticates_and_filters_by_grants(
    open_db: OpenDb, db_path: Path, tmp_path: Path
) -> None:
    async def body(db: Database) -> None:
        ids = await _accounts_and_events(db)
        app = _app(tmp_path, db)
        client = app.test_client()
        agent_a = await _key(db, Role.AGENT, "A")
        admin = await _key(db, Role.ADMIN)

        status, data = await _ws_refused(client, {})
        assert status == 401 and "requestId" in data
        status, data = await _ws_refused(client, {"Authorization": "Bearer apk_nope"})
        assert status == 401
        status, data = await _ws_refused(client, agent_a, account="B")
        assert status == 404
        status, data = await _ws_refused(client, agent_a, types="bogus")
        assert status == 400 and data["issues"][0]["path"] == "types"

        frames = await _ws_frames(client, agent_a, 2)
        assert [f["id"] for f in frames] == ids["A"]
        frames = await _ws_frames(client, admin, 4)
        assert [f["id"] for f in frames] == ids["all"]
        frames = await _ws_frames(client, admin, 1, after=ids["all"][0], account="B")
        assert [f["id"] for f in frames] == ids["B"]

        # A session cookie works from our own origin or none, not from another site.
        cookie = await _session(db, Role.AGENT, "A")
        base = {"Cookie": f"appliance_session={cookie}", "Host": "gw.example"}
        frames = await _ws_frames(client, base, 2)
        assert [f["id"] for f in frames] == ids["A"]
        frames = await _ws_frames(client, {**base, "Origin": "https://gw.example"}, 1)
        assert frames[0]["id"] == ids["A"][0]
        status, data = await _ws_refused(client, {**base, "Origin": "https://evil.example"})
        assert status == 403
        status, _ = await _ws_refused(client, {"Cookie": "appliance_session=stale"})
        assert status == 401

    _run(open_db, db_path, body)
