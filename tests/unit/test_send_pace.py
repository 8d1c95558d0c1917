"""The account's send rate (SEND_ACCOUNT_RATE_PER_S) in the worker's send loop
(appliance/worker/send_loop.py) against a real migrated SQLite file: the rate holds,
with its burst, and a backlog waiting for it is given back to the queue once per send
rather than claimed and given back at every token (each a write transaction)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from appliance.config import Paths, Settings, load_settings
from appliance.db.database import Database
from appliance.engines.base import Engine, OutboundMessage
from appliance.messaging import sends, store
from appliance.messaging.models import SendMessageIn
from appliance.worker.send_loop import SendLoop, SendSlots
from tests.unit.conftest import OpenDb, count_releases

ACCOUNT = "acc_pace"


def test_slots_keep_the_rate_and_its_burst() -> None:
    now = [100.0]
    slots = SendSlots(4.0, clock=lambda: now[0])
    assert [slots.book() for _ in range(4)] == [0.0] * 4  # a burst of one second's worth
    assert [round(slots.book(), 3) for _ in range(3)] == [0.25, 0.5, 0.75]  # then in line
    now[0] += 10.0  # idle long enough: the burst is back, and no more
    assert [slots.book() for _ in range(4)] == [0.0] * 4
    assert round(slots.book(), 3) == 0.25


class _Engine(Engine):
    def __init__(self) -> None:
        super().__init__(ACCOUNT, {}, {}, host=None)  # type: ignore[arg-type]
        self.sent: list[tuple[float, str]] = []

    async def connect(self) -> str | None:
        return None

    async def run_until_closed(self) -> str:
        return "closed"

    async def send(self, message: OutboundMessage) -> None:
        self.sent.append((time.monotonic(), message.id))

    async def logout(self) -> None:
        pass

    async def close(self) -> None:
        pass


class _Runtime:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connected = True


class _Accounts:
    def __init__(self, engine: Engine) -> None:
        self.runtime = _Runtime(engine)

    def get(self, account_id: str) -> Any:
        return self.runtime if account_id == ACCOUNT else None


def _settings(tmp_path: Path, **env: str) -> Settings:
    paths = Paths(tmp_path / "root")
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.env_file.write_text("", encoding="utf-8")
    return load_settings(paths, environ={f"APPLIANCE_{k}": v for k, v in env.items()})


async def _queue_sends(db: Database, count: int) -> None:
    async with db.write() as conn:
        await store.create_account(
            conn,
            account_id=ACCOUNT,
            name="pace",
            engine="sandbox",
            engine_settings={},
            settings={},
            now=time.time(),
        )
        for n in range(count):  # each to its own chat: all claimable at once
            message = SendMessageIn.model_validate(
                {"to": f"+1555{n:07d}", "type": "text", "text": {"body": f"send {n}"}}
            )
            await sends.accept_send(
                conn, account_id=ACCOUNT, to=message.to, message=message, client_key=None,
                now=time.time(),
            )  # fmt: skip


def _loop_counting_releases(
    db: Database, settings: Settings, accounts: Any
) -> tuple[SendLoop, list[str]]:
    """A send loop whose queue notes every job it gives back (the note: why)."""

    async def events_written() -> None:
        pass

    loop = SendLoop(db, settings, accounts, events_written=events_written)
    return loop, count_releases(loop.queue)


def test_a_backlog_waits_for_the_account_rate_given_back_once_per_send(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    rate, count = 40, 200
    settings = _settings(tmp_path, SEND_ACCOUNT_RATE_PER_S=str(rate), SEND_CHAT_INTERVAL_MS="0")
    engine = _Engine()

    async def main() -> None:
        async with open_db(db_path) as db:
            await _queue_sends(db, count)

            accounts: Any = _Accounts(engine)
            loop, released = _loop_counting_releases(db, settings, accounts)
            started = time.monotonic()
            loop.claims.start()
            try:
                async with asyncio.timeout(30):  # 200 sends at 40/s: ~4 s
                    while len(engine.sent) < count:
                        await asyncio.sleep(0.05)
            finally:
                await loop.claims.stop(2)
            elapsed = engine.sent[-1][0] - started
            # The burst (a second's worth) at once, the other 160 at 40/s: about 4 s.
            assert elapsed >= (count - rate) / rate * 0.9
            in_first_second = sum(1 for at, _ in engine.sent if at - started < 0.95)
            assert in_first_second <= rate + rate  # the burst, then at most a second's worth
            assert len({message_id for _, message_id in engine.sent}) == count  # once each
            # Each send beyond the burst waited in the queue once, for its own slot.
            assert released.count("account rate") <= count - rate + 5

    asyncio.run(main())


def test_sends_of_an_account_offline_wait_for_it_and_go_when_it_connects(
    tmp_path: Path, open_db: OpenDb, db_path: Path
) -> None:
    """While the account is not connected its sends are given back once each for a
    minute (not every two seconds, a write each), and go as soon as it connects."""
    count = 30
    settings = _settings(tmp_path, SEND_ACCOUNT_RATE_PER_S="1000", SEND_CHAT_INTERVAL_MS="0")
    engine = _Engine()

    async def main() -> None:
        async with open_db(db_path) as db:
            await _queue_sends(db, count)

            accounts: Any = _Accounts(engine)
            accounts.runtime.connected = False
            loop, released = _loop_counting_releases(db, settings, accounts)
            loop.claims.start()
            try:
                async with asyncio.timeout(20):
                    while len(released) < count:
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(2.5)  # the old recheck came every 2 s
                    assert released == ["account not connected"] * count and not engine.sent
                    rows = await db.fetchall(
                        "SELECT run_at FROM queue_jobs WHERE queue = 'send' AND state = 'queued'"
                    )
                    assert len(rows) == count and min(r[0] for r in rows) > time.time() + 50
                    accounts.runtime.connected = True
                    connected = time.monotonic()
                    await loop.account_connected(ACCOUNT)
                    while len(engine.sent) < count:
                        await asyncio.sleep(0.05)
            finally:
                await loop.claims.stop(2)
            assert engine.sent[-1][0] - connected < 10  # not the minute's recheck
            assert len(released) == count

    asyncio.run(main())
