"""Group commit's waiting room: callers that arrive while one batch is being written
wait together and are served by the next batch (Database.write_batched, the rate
limiter). No timer by default: under light load a batch is one caller and nobody
waits longer. ``linger_s`` (the webhook outcomes) holds the first batch after an idle
moment open that long, or until ``max_size`` callers wait, so that callers arriving
a few milliseconds apart share one transaction too.

``take_more`` lets the batch being run take in, from another thread, callers who
arrived after it was cut (Database: those who came while its transaction waited for
the cross-process write lock), so that they share its commit instead of waiting for
the next one."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item handed in
R = TypeVar("R")

# One outcome per item: (result, None) or (None, the exception for that caller).
Outcome = tuple[R | None, Exception | None]


class Batcher(Generic[I, R]):
    def __init__(
        self,
        run: Callable[[list[I]], Awaitable[list[Outcome[R]]]],
        *,
        max_size: int,
        closing_error: str,
        linger_s: float = 0.0,
    ) -> None:
        self._run = run
        self._max_size = max_size
        self._closing_error = closing_error
        self._linger_s = linger_s
        self._full = asyncio.Event()  # max_size callers wait (ends a linger early)
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        # Held while items leave _pending: by the drain (its event loop) or take_more.
        self._taking = threading.Lock()
        self.task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        """``item``'s outcome once its batch ran; a cancelled caller's item still runs."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self._max_size:
            self._full.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            if self._linger_s > 0 and len(self._pending) < self._max_size:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._linger_s)
            while self._pending:
                with self._taking:
                    batch = self._pending[: self._max_size]
                    del self._pending[: len(batch)]
                try:
                    outcomes = await self._run([item for item, _ in batch])
                    if len(outcomes) != len(batch):
                        raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} items")
                except BaseException as exc:  # the whole batch failed: every caller hears it
                    failure = (
                        exc if isinstance(exc, Exception) else RuntimeError(self._closing_error)
                    )
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(failure)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self.settle(batch, outcomes)
        except BaseException:
            # Cancelled (shutdown): callers still queued must not wait forever.
            with self._taking:
                pending, self._pending = self._pending, []
            for _, future in pending:
                if not future.done():
                    future.set_exception(RuntimeError(self._closing_error))
            raise

    def take_more(self, limit: int, fits: Callable[[I], bool]) -> list[tuple[I, asyncio.Future[R]]]:
        """For the batch now running (called from within ``run``, in any thread): up to
        ``limit`` of the items queued since it was cut, from the front while ``fits``
        accepts them (so the arrival order is kept). The caller runs them with its batch
        and, back on the event loop, hands their outcomes to ``settle``."""
        taken: list[tuple[I, asyncio.Future[R]]] = []
        with self._taking:
            # Only the event loop appends meanwhile (at the end); nothing else removes.
            for entry in self._pending[:limit]:
                if not fits(entry[0]):
                    break
                taken.append(entry)
            del self._pending[: len(taken)]
        return taken

    @staticmethod
    def settle(taken: list[tuple[I, asyncio.Future[R]]], outcomes: list[Outcome[R]]) -> None:
        """On the event loop: the outcomes of items ``take_more`` gave out, to their callers."""
        for (_, future), (result, error) in zip(taken, outcomes, strict=True):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]
