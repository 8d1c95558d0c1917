"""Outcomes of webhook deliveries, committed together (group commit).

An endpoint's slot is free again as soon as its POST is answered; the outcome (the
attempt's row, the delivery's state, the endpoint's failing mark, the queue job's ack
or its retry) waits here with the other outcomes of the same few milliseconds and
they are committed in one transaction, in a few statements: one turn at the
cross-process write lock and one fsync for many deliveries, instead of one each while
the slot waited.

The cost is the repeat bound: a delivery whose outcome is not yet committed is sent
again after a kill -9 (its job stays leased; the next start releases it). The caller
bounds how many of an endpoint's outcomes may wait here (``delivery.repeats_at_a_kill``).

A batch that fails for another reason than a full disk is retried one outcome at a
time, each in its own savepoint, so one bad outcome fails alone; its caller hears the
error and its job stays leased (delivered again when the lease expires or at the next
start: at least once, never lost).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from appliance.db.batching import Batcher, Outcome
from appliance.db.database import Database
from appliance.db.queue import ack_many_in, retry_many_in
from appliance.errors import StorageFull
from appliance.webhooks import store
from appliance.webhooks.contracts import WEBHOOK_QUEUE

log = logging.getLogger(__name__)

OUTCOME_BATCH = 256  # outcomes committed in one transaction at most
OUTCOME_LINGER_S = 0.005  # the first outcome after a quiet moment waits this long for others


@dataclass(frozen=True)
class Pending:
    """One outcome and the lease of its job."""

    outcome: store.Outcome
    job_id: int
    token: str


class OutcomeLog:
    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = OUTCOME_BATCH,
        linger_s: float = OUTCOME_LINGER_S,
    ) -> None:
        self.db = db
        self._batcher: Batcher[Pending, None] = Batcher(
            self._commit,
            max_size=max_batch,
            closing_error="the webhooks process is stopping; outcome not recorded",
            linger_s=linger_s,
        )

    async def flush(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the outcomes handed in to be written."""
        task = self._batcher.task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout_s)

    async def record(self, outcome: store.Outcome, job_id: int, token: str) -> None:
        """Returns once the outcome is committed (raises if it was not)."""
        await self._batcher.submit(Pending(outcome, job_id, token))

    async def _commit(self, batch: list[Pending]) -> list[Outcome[None]]:
        try:
            await self.db.write_batched(functools.partial(write, batch), in_thread=True)
        except StorageFull:
            raise  # the whole transaction is gone: every caller hears it
        except Exception as exc:
            if len(batch) == 1:
                return [(None, exc)]
            log.warning(
                "recording %d webhook outcomes together failed (%s); one at a time",
                len(batch),
                exc,
            )
            results = await asyncio.gather(
                *(
                    self.db.write_batched(functools.partial(write, [one]), in_thread=True)
                    for one in batch
                ),
                return_exceptions=True,
            )
            return [
                (None, _as_exception(r) if isinstance(r, BaseException) else None) for r in results
            ]
        return [(None, None)] * len(batch)


async def write(batch: Sequence[Pending], conn: aiosqlite.Connection) -> None:
    """The batch's changes, in the caller's transaction."""
    await store.record_outcomes(conn, [p.outcome for p in batch])
    acks = [(p.job_id, p.token, p.outcome.at) for p in batch if p.outcome.state != "retry"]
    if acks:
        await ack_many_in(conn, WEBHOOK_QUEUE, acks)
    retries = [
        (p.job_id, p.token, o.at, o.next_attempt_at or o.at, o.error or "")
        for p in batch
        if (o := p.outcome).state == "retry"
    ]
    if retries:
        await retry_many_in(conn, WEBHOOK_QUEUE, retries)


def _as_exception(exc: BaseException) -> Exception:
    return exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
