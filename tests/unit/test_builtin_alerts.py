"""Built-in alerts: the pure evaluator's hysteresis, and the worker's monitor on a real
database (rows, events, metrics)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from appliance.config import Settings
from appliance.observability import builtin_alerts as ba
from appliance.worker.monitor import Monitor
from tests.unit.conftest import OpenDb

RULES = ba.default_rules(disconnected_after_s=600, clear_after_s=120)


def _acct(state: str, desired: str = "connected", key: str = "a1") -> list[ba.Observation]:
    return ba.account_observations(key, state, desired)


def test_disconnected_raises_only_after_the_hold_and_resolves_only_after_the_clear_hold() -> None:
    ev = ba.Evaluator(RULES)
    assert ev.evaluate(0, _acct("disconnected")) == []
    assert ev.evaluate(599, _acct("connecting")) == []
    [raised] = ev.evaluate(600, _acct("disconnected"))
    assert (raised.state, raised.rule.name, raised.key) == ("raised", ba.ACCOUNT_DISCONNECTED, "a1")
    assert ev.evaluate(700, _acct("disconnected")) == []  # raised once, not again
    # Connected briefly, then down again: the clear hold restarts, nothing resolves.
    assert ev.evaluate(710, _acct("connected")) == []
    assert ev.evaluate(800, _acct("disconnected")) == []
    assert ev.evaluate(900, _acct("connected")) == []
    assert ev.evaluate(1019, _acct("connected")) == []
    [resolved] = ev.evaluate(1020, _acct("connected"))
    assert (resolved.state, resolved.raised_at, resolved.at) == ("resolved", 600, 1020)
    assert ev.active == {}


def test_a_flapping_connection_never_raises_disconnected() -> None:
    ev = ba.Evaluator(RULES)
    for minute in range(60):
        state = "connected" if minute % 2 else "disconnected"
        assert ev.evaluate(minute * 60.0, _acct(state)) == []


def test_logged_out_raises_at_once_but_not_when_asked_for() -> None:
    ev = ba.Evaluator(RULES)
    assert ev.evaluate(0, _acct("logged_out", desired="logged_out")) == []
    assert ev.evaluate(1, _acct("disconnected", desired="disconnected")) == []
    [raised] = ev.evaluate(2, _acct("logged_out"))
    assert raised.rule.name == ba.ACCOUNT_LOGGED_OUT and raised.rule.severity == "critical"
    # An account deleted while raised counts as good: resolves after the clear hold.
    assert ev.evaluate(3, []) == []
    [resolved] = ev.evaluate(200, [])
    assert resolved.state == "resolved" and resolved.key == "a1"


def test_disk_band_keeps_the_state() -> None:
    ev = ba.Evaluator(RULES)
    low, band, ok = (
        ba.disk_observation(5, 100),
        ba.disk_observation(11, 100),
        ba.disk_observation(50, 100),
    )
    assert (low.firing, band.firing, ok.firing) == (True, None, False)
    assert ev.evaluate(0, [low]) == []
    assert ev.evaluate(60, [band]) == []  # inside the band: the raise hold keeps running
    [raised] = ev.evaluate(120, [low])
    assert raised.rule.name == ba.DISK_SPACE_LOW
    # 11 % free is not enough to resolve, however long it lasts.
    for t in range(130, 2000, 60):
        assert ev.evaluate(t, [band]) == []
    assert ev.evaluate(2000, [ok]) == []
    [resolved] = ev.evaluate(2120, [ok])
    assert resolved.state == "resolved"


def test_dead_letters_and_restored_state() -> None:
    active = [ba.Active(ba.WEBHOOK_DEAD_LETTERS, "", 10.0, {"dead_last_hour": 3}, alert_id=7)]
    ev = ba.Evaluator(RULES, active)
    assert ev.evaluate(20, [ba.dead_letter_observation(2)]) == []  # already raised: no repeat
    assert ev.evaluate(30, [ba.dead_letter_observation(0)]) == []
    [resolved] = ev.evaluate(150, [ba.dead_letter_observation(0)])
    assert (resolved.alert_id, resolved.raised_at) == (7, 10.0)


def _sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_monitor_records_events_rows_and_metrics(tmp_path: Path, open_db: OpenDb) -> None:
    settings = Settings(
        data_dir=tmp_path,
        log_dir=tmp_path,
        run_dir=tmp_path,
        alert_account_disconnected_s=0,
        alert_clear_s=0,
    )
    clock = [1000.0]
    woken: list[int] = []

    async def events_written() -> None:
        woken.append(1)

    async def main() -> None:
        async with open_db(tmp_path / "appliance.db") as db:
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO accounts (id, name, engine, desired, state, created_at,"
                    " updated_at) VALUES ('mon1', 'm', 'sandbox', 'connected', 'pairing', 0, 0)"
                )
                await conn.execute(
                    "INSERT INTO queue_jobs (queue, payload, max_attempts, run_at, created_at,"
                    " updated_at) VALUES ('send', ?, 5, 0, 990, 990)",
                    (json.dumps({"account_id": "mon1", "message_id": "x"}),),
                )
            monitor = Monitor(db, settings, events_written=events_written, clock=lambda: clock[0])
            await monitor.load()
            await monitor.tick()
            assert _sample("appliance_send_queue_depth", {"account": "mon1"}) == 1
            assert _sample("appliance_send_queue_oldest_age_seconds", {"account": "mon1"}) == 10
            state = {"account": "mon1", "state": "pairing"}
            assert _sample("appliance_account_state", state) == 1
            assert _sample("appliance_account_state", {**state, "state": "connected"}) == 0
            assert _sample("appliance_account_desired_connected", {"account": "mon1"}) == 1
            assert (_sample("appliance_disk_size_bytes", {}) or 0) > 0
            assert _sample("appliance_builtin_alerts_firing", {"rule": "account_disconnected"}) == 1
            rows = await db.fetchall("SELECT * FROM system_alerts")
            assert [(r["rule"], r["subject"], r["resolved_at"]) for r in rows] == [
                ("account_disconnected", "mon1", None)
            ]
            # A restarted worker carries on: no second "raised".
            monitor = Monitor(db, settings, events_written=events_written, clock=lambda: clock[0])
            await monitor.load()
            await monitor.tick()
            async with db.write() as conn:
                await conn.execute("UPDATE accounts SET state = 'connected'")
            clock[0] = 1010.0
            await monitor.tick()
            events = await db.fetchall(
                "SELECT type, account_id, data FROM events WHERE type = 'system.alert' ORDER BY id"
            )
            data: list[dict[str, Any]] = [json.loads(e["data"]) for e in events]
            assert [(d["rule"], d["state"]) for d in data] == [
                ("account_disconnected", "raised"),
                ("account_disconnected", "resolved"),
            ]
            assert {e["account_id"] for e in events} == {"mon1"}
            assert data[1]["alert_id"] == data[0]["alert_id"] and data[1]["resolved_at"] == 1010
            row = await db.fetchone("SELECT resolved_at FROM system_alerts")
            assert row is not None and row["resolved_at"] == 1010
            assert _sample("appliance_builtin_alerts_firing", {"rule": "account_disconnected"}) == 0
            assert len(woken) == 2

    asyncio.run(main())


def test_every_builtin_rule_has_a_runbook_section() -> None:
    text = (Path(__file__).resolve().parents[2] / "runbook" / "alerts.md").read_text()
    for name in RULES:
        assert f"\n### {name}\n" in text, name


def test_transitions_not_recorded_are_made_again(
    tmp_path: Path, open_db: OpenDb, monkeypatch: Any
) -> None:
    settings = Settings(
        data_dir=tmp_path, log_dir=tmp_path, run_dir=tmp_path, alert_account_disconnected_s=0
    )

    async def events_written() -> None:
        pass

    async def main() -> None:
        async with open_db(tmp_path / "appliance.db") as db:
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO accounts (id, name, engine, desired, state, created_at,"
                    " updated_at) VALUES ('f1', 'f', 'sandbox', 'connected', 'failed', 0, 0)"
                )
            monitor = Monitor(db, settings, events_written=events_written)
            await monitor.load()

            async def broken(*args: Any, **kwargs: Any) -> int:
                raise OSError("disk full")

            with monkeypatch.context() as m:
                m.setattr("appliance.messaging.store.append_event", broken)
                try:
                    await monitor.tick()
                except OSError:
                    pass
                else:
                    raise AssertionError("the failed write must surface")
            assert await db.fetchall("SELECT * FROM system_alerts") == []
            assert monitor.evaluator.active == {}
            await monitor.tick()  # the write works again: raised now
            rows = await db.fetchall("SELECT rule, subject FROM system_alerts")
            assert [(r["rule"], r["subject"]) for r in rows] == [("account_disconnected", "f1")]

    asyncio.run(main())
