"""One loop that claims jobs of a durable queue with back-pressure and hands each to a
handler task; the worker's send loop and the webhook delivery loop are both one.

- A claim leases up to ``batch`` due jobs (one write transaction, appliance/db/
  queue.py) and starts one handler task per job.
- A claim that came back short means nothing more is claimable now: the loop waits for
  ``wake`` (set by whoever makes a job claimable: a producer's poke, a finished job
  that released the next one of its order key) or ``poll_s`` (retries falling due,
  expired leases) instead of claiming again at once, since each claim is a write.
- Back-pressure: after a full batch, no further claim while more than
  ``max_inflight`` handlers run, so the loop stays only a few batches ahead of them.
- ``stop(timeout_s)`` ends claiming, lets the handlers in flight finish within the
  timeout and cancels the rest; their jobs stay leased until the lease expires or the
  next start releases it.

What a job needs besides (pacing, per-endpoint slots, per-chat order) is the handler's
business: it acks, nacks or releases its own job and logs its own failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from appliance.db.queue import DurableQueue, Job
from appliance.observability import tracing

log = logging.getLogger(__name__)


class ClaimLoop:
    def __init__(
        self,
        queue: DurableQueue,
        handle: Callable[[Job], Coroutine[Any, Any, None]],
        *,
        batch: int,
        max_inflight: int,
        poll_s: float = 1.0,
        what: str,
    ) -> None:
        self.queue = queue
        self.handle = handle
        self.batch = batch
        self.max_inflight = max_inflight
        self.poll_s = poll_s
        self.what = what  # for log lines: "sends", "webhook deliveries"
        self.wake = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"claim-{self.queue.name}")

    async def run(self) -> None:
        while not self._stopping:
            self.wake.clear()
            claim_started = time.time_ns()
            try:
                jobs = await self.queue.claim(limit=self.batch)
            except Exception:
                log.exception("claiming %s failed", self.what)
                jobs = []
            if jobs and tracing.enabled():  # a claim span in the trace of each job that has one
                tracing.record_claims(self.queue.name, [j.payload for j in jobs], claim_started)
            self._start(jobs)
            if len(jobs) < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.poll_s)
                continue
            # Back-pressure: do not claim more than a few batches ahead of the handlers.
            while len(self.inflight) > self.max_inflight and not self._stopping:
                await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)

    def _start(self, jobs: list[Job]) -> None:
        for job in jobs:
            task = asyncio.create_task(self.handle(job))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

    async def stop(self, timeout_s: float) -> None:
        """Stop claiming; handlers in flight finish within the timeout, the rest are
        cancelled."""
        self._stopping = True
        self.wake.set()
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=timeout_s)
        tasks = [*self.inflight, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
