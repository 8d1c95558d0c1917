"""The ``stored_secrets_undecryptable`` built-in alert: stored values the data key
cannot open, named, instead of failing silently.

After a restore onto an installation with other secrets (or a replaced ``data-key``),
webhook signing secrets and header values, a cloud account's token and app secret and
stored idempotency answers were encrypted with a key this installation does not have.
``appliancectl check`` lists them; the worker checks the same at its start and every
``CHECK_INTERVAL_S`` and raises this alert (a ``system_alerts`` row and a
``system.alert`` event, so webhooks that still work and the event stream carry it),
with what is affected and what to re-enter in ``details`` (names only, never a value).
When nothing is left unreadable it resolves. runbook/restore.md says what to re-enter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.config import Settings
from appliance.crypto import DataCipher
from appliance.db.database import Database
from appliance.observability.metrics import BUILTIN_ALERTS
from appliance.ops import alerts_store, offline_store
from appliance.ops.stored_secrets import Undecryptable, undecryptable
from appliance.runtime import repeat

log = logging.getLogger(__name__)

RULE = "stored_secrets_undecryptable"
SEVERITY = "critical"
SUMMARY = "stored secrets cannot be decrypted with this data key: re-enter them"
CHECK_INTERVAL_S = 600.0
ALERT = alerts_store.BuiltinAlert(RULE, SEVERITY, SUMMARY, f"runbook/alerts.md#{RULE}")


class SecretsWatch:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        cipher: DataCipher,
        *,
        events_written: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.settings = settings
        self.cipher = cipher
        self.events_written = events_written
        self.clock = clock
        BUILTIN_ALERTS.labels(rule=RULE).set(0)

    async def run_forever(self) -> None:
        await repeat(self.check_once, CHECK_INTERVAL_S, log, "stored secrets check")

    def _scan(self) -> list[Undecryptable]:
        path = self.settings.database_path
        conn = offline_store.open_read_only(path, timeout_s=30)
        try:
            return undecryptable(conn, self.cipher)
        finally:
            conn.close()

    async def check_once(self) -> list[Undecryptable]:
        found = await asyncio.to_thread(self._scan)
        now = self.clock()
        details: dict[str, Any] = {
            "affected": [item.what for item in found],
            "fix": [item.fix for item in found],
        }
        async with self.db.write() as conn:
            changed = await alerts_store.set_builtin(conn, ALERT, bool(found), details, now)
        BUILTIN_ALERTS.labels(rule=RULE).set(1 if found else 0)
        if found:
            log.error(
                "stored secrets cannot be decrypted with this data key",
                extra={"rule": RULE, "affected": details["affected"]},
            )
        if changed is not None and self.events_written is not None:
            await self.events_written()
        return found
