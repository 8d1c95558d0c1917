"""The worker's monitor: samples what only the database knows into metrics, and raises
and resolves the built-in alerts (``system.alert`` events).

Every ``MONITOR_INTERVAL_S`` (reads only; it writes only when an alert changes):
- per account: sends queued or being sent and the oldest one's age (from the send
  queue's jobs), the engine connection state and whether it should be connected;
- the data directory's free space, the database's size with its WAL, dead letters;
- the built-in alerts (appliance/observability/builtin_alerts.py): each transition is
  one ``system_alerts`` row change plus one ``system.alert`` event in the same
  transaction, so webhooks and the event stream carry it.

Metrics of accounts that were deleted stay at 0 until the next restart (multiprocess
gauges cannot drop a label); runbook/alerts.md says so.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

from appliance.config import Settings
from appliance.db import queue
from appliance.db.database import Database
from appliance.messaging import store
from appliance.messaging.contracts import SEND_QUEUE
from appliance.messaging.models import ACCOUNT_STATES
from appliance.observability import builtin_alerts as rules
from appliance.observability.metrics import (
    ACCOUNT_DESIRED_CONNECTED,
    ACCOUNT_STATE,
    BUILTIN_ALERTS,
    DATABASE_SIZE,
    DISK_FREE,
    DISK_SIZE,
    SEND_QUEUE_DEPTH,
    SEND_QUEUE_OLDEST,
    SENDS,
    WEBHOOK_DEAD,
    forget_account,
)
from appliance.ops import alerts_store
from appliance.runtime import repeat
from appliance.webhooks import store as webhooks_store
from appliance.webhooks.metrics import DELIVERIES

log = logging.getLogger(__name__)

DELIVERY_OUTCOMES = ("delivered", "retry", "dead", "disabled", "refused")


class Monitor:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        events_written: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.settings = settings
        self.events_written = events_written
        self.clock = clock
        self.rules = rules.default_rules(
            disconnected_after_s=settings.alert_account_disconnected_s,
            clear_after_s=settings.alert_clear_s,
        )
        self.evaluator = rules.Evaluator(self.rules)
        self._accounts_seen: set[str] = set()
        # Counters exported as 0 from the start, so rate() sees their first increase.
        for outcome in ("sent", "failed"):
            SENDS.labels(outcome=outcome)
        for outcome in DELIVERY_OUTCOMES:
            DELIVERIES.labels(outcome=outcome)
        for name in self.rules:
            BUILTIN_ALERTS.labels(rule=name).set(0)

    async def load(self) -> None:
        """Carry on with the alerts raised before a restart."""
        active = [
            rules.Active(a.rule, a.subject, a.raised_at, a.details, a.id)
            for a in await alerts_store.open_alerts(self.db)
            if a.rule in self.rules
        ]
        self.evaluator = rules.Evaluator(self.rules, active)
        self._export_alert_counts()

    async def run_forever(self) -> None:
        await self.load()
        await repeat(self.tick, self.settings.monitor_interval_s, log, "monitor pass")

    async def tick(self) -> None:
        now = self.clock()
        observations: list[rules.Observation] = []
        observations += await self._accounts(now)
        observations.append(await self._dead_letters(now))
        observations.append(self._disk())
        before = self.evaluator.snapshot()
        transitions = self.evaluator.evaluate(now, observations)
        if transitions:
            try:
                await self._record(transitions)
            except BaseException:
                # Not recorded: forget the transitions, so the next pass makes them again.
                self.evaluator.restore(before)
                raise
        self._export_alert_counts()

    # -- sampling --------------------------------------------------------------------

    async def _accounts(self, now: float) -> list[rules.Observation]:
        accounts = await store.account_states(self.db)
        depth = await queue.open_jobs_by_account(self.db, SEND_QUEUE)
        observations: list[rules.Observation] = []
        seen: set[str] = set()
        for account, state_now, desired in accounts:
            seen.add(account)
            n, oldest = depth.get(account, (0, now))
            SEND_QUEUE_DEPTH.labels(account=account).set(n)
            SEND_QUEUE_OLDEST.labels(account=account).set(max(0.0, now - oldest) if n else 0.0)
            for state in ACCOUNT_STATES:
                ACCOUNT_STATE.labels(account=account, state=state).set(
                    1 if state_now == state else 0
                )
            ACCOUNT_DESIRED_CONNECTED.labels(account=account).set(
                1 if desired == "connected" else 0
            )
            observations += rules.account_observations(account, state_now, desired)
        for gone in self._accounts_seen - seen:  # deleted: its label sets go
            forget_account(gone)
        self._accounts_seen = seen
        return observations

    async def _dead_letters(self, now: float) -> rules.Observation:
        WEBHOOK_DEAD.set(await webhooks_store.count_dead(self.db))
        recent = await webhooks_store.count_dead(self.db, since=now - 3600)
        return rules.dead_letter_observation(recent)

    def _disk(self) -> rules.Observation:
        path = self.settings.database_path
        size = sum(
            p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        )
        DATABASE_SIZE.set(size)
        st = os.statvfs(self.settings.data_dir)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        DISK_FREE.set(free)
        DISK_SIZE.set(total)
        return rules.disk_observation(free, total)

    # -- alerts ----------------------------------------------------------------------

    def _export_alert_counts(self) -> None:
        counts = dict.fromkeys(self.rules, 0)
        for rule, _ in self.evaluator.active:
            counts[rule] += 1
        for rule, n in counts.items():
            BUILTIN_ALERTS.labels(rule=rule).set(n)

    async def _record(self, transitions: list[rules.Transition]) -> None:
        async with self.db.write() as conn:
            for t in transitions:
                alert = alerts_store.BuiltinAlert(
                    t.rule.name, t.rule.severity, t.rule.summary, f"runbook/alerts.md#{t.rule.name}"
                )
                account = (t.key or None) if _per_account(t) else None
                if t.state == "raised":
                    alert_id = await alerts_store.raise_builtin(
                        conn, alert, dict(t.details), t.at, subject=t.key, account=account
                    )
                    self.evaluator.active[(t.rule.name, t.key)].alert_id = alert_id
                else:
                    await alerts_store.resolve_builtin(
                        conn,
                        alert,
                        t.alert_id or 0,
                        t.raised_at,
                        t.at,
                        dict(t.details),
                        subject=t.key,
                        account=account,
                    )
        for t in transitions:
            level = logging.WARNING if t.state == "raised" else logging.INFO
            log.log(
                level,
                f"alert {t.state}: {t.rule.name}",
                extra={"rule": t.rule.name, "subject": t.key, "severity": t.rule.severity},
            )
        await self.events_written()


def _per_account(t: rules.Transition) -> bool:
    return t.rule.name in (rules.ACCOUNT_LOGGED_OUT, rules.ACCOUNT_DISCONNECTED)
