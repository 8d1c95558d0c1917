"""A lease-based durable queue in one SQLite table (``queue_jobs``).

Life of a job::

    enqueue ──> queued ──claim──> leased ──ack──> done
                  ^                  │
                  └──nack / lease────┤
                     expiry          └──nack(permanent) or attempts used up──> dead
    dead ──replay──> queued

- ``enqueue`` takes an optional unique key: a second enqueue with the same key in the
  same queue returns the existing job instead of adding one (producer-side dedupe).
- ``claim`` leases due jobs inside one ``BEGIN IMMEDIATE`` transaction, so two
  processes never lease the same row. Each lease has a fresh random token.
- ``ack``, ``nack`` and ``extend`` only act when the token still matches (fencing):
  a claimer whose lease expired and was re-claimed gets ``LeaseLost``.
- Expired leases go back to ``queued`` (or ``dead`` when attempts are used up).
- Retries wait ``backoff_delay``: exponential with full jitter.
- Per-key order: jobs enqueued with the same ``order_key`` (sends: one key per
  (account, chat)) are claimed one at a time, in id (= enqueue) order. Of a key's
  unfinished (``queued`` or ``leased``) jobs only the head is not ``held``, and only
  heads are claimed: a head waiting for its retry, paced (``release``) or in flight
  (also one whose claimer died, until its lease is expired or released) holds back
  the later jobs of its key until it is ``done`` or ``dead``; then triggers (migration
  0008) release the next. Keys are independent of each other; ``NULL`` is unordered.

Times are Unix seconds from an injectable clock so tests never sleep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from appliance.db.database import Database
from appliance.db.where import Where
from appliance.errors import LeaseLost

STATES = ("queued", "leased", "done", "dead")
_COLUMNS = (
    "id, queue, unique_key, payload, state, attempts, max_attempts, run_at, "
    "lease_token, lease_expires_at, last_error, created_at, updated_at, order_key"
)

# Due heads, oldest first, from the index of not-held queued jobs (held jobs, a long
# backlog in one chat, are not even looked at). The NOT EXISTS is a safety net for the
# held bookkeeping: one seek in queue_jobs_order per candidate.
CLAIM_SQL = (
    "SELECT id FROM queue_jobs AS j INDEXED BY queue_jobs_ready "
    "WHERE j.queue = ? AND j.state = 'queued' AND j.held = 0 AND j.run_at <= ? "
    "AND (j.order_key IS NULL OR NOT EXISTS ("
    "SELECT 1 FROM queue_jobs AS e INDEXED BY queue_jobs_order "
    "WHERE e.queue = j.queue AND e.order_key = j.order_key AND e.id < j.id "
    "AND e.order_key IS NOT NULL AND e.state IN ('queued', 'leased'))) "
    "ORDER BY j.run_at, j.id LIMIT ?"
)
# Lease those heads: a fresh random token per row (32 hex digits, as secrets.token_hex(16)).
CLAIM_UPDATE_SQL = (
    "UPDATE queue_jobs SET state = 'leased', lease_token = lower(hex(randomblob(16))), "
    "lease_expires_at = ?, attempts = attempts + 1, updated_at = ? "
    f"WHERE id IN ({CLAIM_SQL}) AND state = 'queued' RETURNING " + _COLUMNS
)


@dataclass(frozen=True)
class Job:
    id: int
    queue: str
    unique_key: str | None
    payload: Any
    state: str
    attempts: int
    max_attempts: int
    run_at: float
    lease_token: str | None
    lease_expires_at: float | None
    last_error: str | None
    created_at: float
    updated_at: float
    order_key: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        values = dict(zip(_COLUMNS.split(", "), tuple(row), strict=True))
        values["payload"] = orjson.loads(values["payload"])
        return cls(**values)


@dataclass(frozen=True)
class Enqueued:
    id: int
    created: bool  # False when the unique key already named a job


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))] for attempt >= 1."""
    # The exponent is clamped: 2**1024 overflows a float long after the cap applies.
    ceiling = min(cap_s, base_s * float(2 ** min(max(0, attempt - 1), 60)))
    return rand() * ceiling


async def enqueue_in(
    conn: aiosqlite.Connection,
    queue: str,
    payload: Any,
    *,
    now: float,
    unique_key: str | None = None,
    run_at: float | None = None,
    max_attempts: int = 10,
    order_key: str | None = None,
) -> Enqueued:
    """Enqueue inside a transaction the caller holds (for outbox writes).

    Jobs with the same ``order_key`` are claimed one at a time in the order of their
    ids, which follows commit order: enqueue them in the order they were accepted.
    """
    rows = await conn.execute_fetchall(  # one step of aiosqlite's thread
        "INSERT INTO queue_jobs (queue, unique_key, order_key, payload, max_attempts, run_at, "
        "created_at, updated_at, held) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
        # Held behind any unfinished job of its key (all of them have smaller ids).
        "?9 IS NOT NULL AND EXISTS (SELECT 1 FROM queue_jobs WHERE queue = ?1 "
        "AND order_key = ?9 AND order_key IS NOT NULL AND state IN ('queued', 'leased'))) "
        "ON CONFLICT (queue, unique_key) DO NOTHING RETURNING id",
        (
            queue,
            unique_key,
            order_key,
            orjson.dumps(payload).decode(),
            max_attempts,
            now if run_at is None else run_at,
            now,
            now,
            order_key,
        ),
    )
    for row in rows:
        return Enqueued(int(row[0]), True)
    existing = list(
        await conn.execute_fetchall(
            "SELECT id FROM queue_jobs WHERE queue = ? AND unique_key = ?", (queue, unique_key)
        )
    )
    assert existing  # the conflict proves the row exists
    return Enqueued(int(existing[0][0]), False)


async def enqueue_many_in(
    conn: aiosqlite.Connection,
    queue: str,
    jobs: list[tuple[Any, str]],
    *,
    now: float,
    max_attempts: int = 10,
) -> None:
    """Enqueue (payload, unique_key) pairs in one statement inside the caller's
    transaction; keys already queued are skipped."""
    await conn.executemany(
        "INSERT INTO queue_jobs (queue, unique_key, payload, max_attempts, run_at, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (queue, unique_key) DO NOTHING",
        [
            (queue, key, orjson.dumps(payload).decode(), max_attempts, now, now, now)
            for payload, key in jobs
        ],
    )


async def expire_leases(conn: aiosqlite.Connection, now: float, *, queue: str | None = None) -> int:
    """Return expired leases to ``queued`` (or ``dead`` when attempts are used up).

    Runs inside the caller's write transaction; ``queue=None`` covers every queue.
    """
    cur = await conn.execute(
        "UPDATE queue_jobs SET "
        "state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, "
        "last_error = CASE WHEN attempts >= max_attempts "
        "  THEN 'lease expired after the last attempt' ELSE 'lease expired' END, "
        "lease_token = NULL, lease_expires_at = NULL, updated_at = ? "
        "WHERE state = 'leased' AND lease_expires_at <= ? AND (? IS NULL OR queue = ?)",
        (now, now, queue, queue),
    )
    return cur.rowcount


async def restore_order(conn: aiosqlite.Connection, queue: str) -> int:
    """Recompute ``held`` for a queue's unfinished keyed jobs, inside the caller's
    transaction: the head of a key is its leased job if it has one, else its earliest
    unfinished job. Run after a replay (which brings old jobs back) and at the start of
    the worker (self-repair); the triggers keep it right in between. O(unfinished jobs)."""
    cur = await conn.execute(
        "UPDATE queue_jobs AS j SET held = (j.id IS NOT COALESCE("
        "(SELECT MIN(e.id) FROM queue_jobs AS e WHERE e.queue = j.queue "
        "AND e.order_key = j.order_key AND e.order_key IS NOT NULL "
        "AND e.state IN ('queued', 'leased') AND e.state = 'leased'), "
        "(SELECT MIN(e.id) FROM queue_jobs AS e WHERE e.queue = j.queue "
        "AND e.order_key = j.order_key AND e.order_key IS NOT NULL "
        "AND e.state IN ('queued', 'leased')))) "
        "WHERE j.queue = ? AND j.order_key IS NOT NULL AND j.state IN ('queued', 'leased')",
        (queue,),
    )
    return cur.rowcount


async def release_all_leases(
    conn: aiosqlite.Connection,
    now: float,
    *,
    queue: str | None = None,
    except_queues: Sequence[str] = (),
) -> int:
    """At the start of a queue's only claimer: leases held now belong to a process that
    died, so their jobs are due again at once (the attempt counts). ``queue`` limits it
    to one queue; ``except_queues`` leaves out queues another process claims (the
    worker leaves the webhook queue to the webhooks process, which releases its own)."""
    skip = list(except_queues)
    not_in = f" AND queue NOT IN ({', '.join('?' * len(skip))})" if skip else ""
    cur = await conn.execute(
        "UPDATE queue_jobs SET state = 'queued', run_at = ?, lease_token = NULL, "
        "lease_expires_at = NULL, last_error = 'claimer restarted', updated_at = ? "
        "WHERE state = 'leased' AND (? IS NULL OR queue = ?)" + not_in,
        (now, now, queue, queue, *skip),
    )
    return cur.rowcount


async def ack_in(
    conn: aiosqlite.Connection, queue: str, job_id: int, token: str, now: float
) -> None:
    """Ack inside the caller's transaction, so a job's effect and its ack commit together."""
    cur = await conn.execute(
        "UPDATE queue_jobs SET state = 'done', last_error = NULL, lease_token = NULL, "
        "lease_expires_at = NULL, updated_at = ? "
        "WHERE id = ? AND queue = ? AND state = 'leased' AND lease_token = ?",
        (now, job_id, queue, token),
    )
    if cur.rowcount != 1:
        raise LeaseLost(f"job {job_id} in queue {queue!r} is not leased with that token")


async def has_unfinished_in(conn: aiosqlite.Connection, queue: str, order_key: str) -> bool:
    """``DurableQueue.has_unfinished`` inside the caller's transaction (it sees its acks)."""
    rows = await conn.execute_fetchall(
        "SELECT 1 FROM queue_jobs WHERE queue = ? AND order_key = ? "
        "AND order_key IS NOT NULL AND state IN ('queued', 'leased') LIMIT 1",
        (queue, order_key),
    )
    return bool(list(rows))


async def ack_many_in(
    conn: aiosqlite.Connection, queue: str, leases: Sequence[tuple[int, str, float]]
) -> int:
    """``ack_in`` for many (job id, token, now) in one statement of the caller's
    transaction; a job whose lease is lost is left alone. Returns how many were acked."""
    cur = await conn.executemany(
        "UPDATE queue_jobs SET state = 'done', last_error = NULL, lease_token = NULL, "
        "lease_expires_at = NULL, updated_at = ?3 "
        "WHERE id = ?1 AND queue = ?4 AND state = 'leased' AND lease_token = ?2",
        [(job_id, token, now, queue) for job_id, token, now in leases],
    )
    return max(0, cur.rowcount)


async def retry_many_in(
    conn: aiosqlite.Connection,
    queue: str,
    retries: Sequence[tuple[int, str, float, float, str]],
) -> int:
    """Give leased jobs back for a later attempt in one statement of the caller's
    transaction: (job id, token, now, run_at, error) each, like ``nack`` with
    ``retry_after_s`` for a job that has attempts left (the caller checked). A job whose
    lease is lost is left alone. Returns how many were given back."""
    cur = await conn.executemany(
        "UPDATE queue_jobs SET state = 'queued', run_at = ?4, lease_token = NULL, "
        "lease_expires_at = NULL, last_error = ?5, updated_at = ?3 "
        "WHERE id = ?1 AND queue = ?6 AND state = 'leased' AND lease_token = ?2",
        [
            (job_id, token, now, run_at, error[:2000], queue)
            for job_id, token, now, run_at, error in retries
        ],
    )
    return max(0, cur.rowcount)


class DurableQueue:
    """One named queue. Every method is one short write or read transaction."""

    def __init__(
        self,
        db: Database,
        name: str,
        *,
        lease_s: float = 30.0,
        max_attempts: int = 10,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.db = db
        self.name = name
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.clock = clock
        self.rand = rand

    async def enqueue(
        self,
        payload: Any,
        *,
        unique_key: str | None = None,
        delay_s: float = 0.0,
        max_attempts: int | None = None,
        order_key: str | None = None,
    ) -> Enqueued:
        now = self.clock()
        async with self.db.write() as conn:
            return await enqueue_in(
                conn,
                self.name,
                payload,
                now=now,
                unique_key=unique_key,
                run_at=now + delay_s,
                max_attempts=max_attempts or self.max_attempts,
                order_key=order_key,
            )

    async def claim(self, limit: int = 1, *, lease_s: float | None = None) -> list[Job]:
        """Lease up to ``limit`` due jobs, oldest first; expired leases count as due.

        Of the jobs sharing an order key, only the earliest unfinished one can be
        leased, and only when it is due and not leased already (see the module doc)."""
        now = self.clock()
        lease = self.lease_s if lease_s is None else lease_s

        async def lease_due(conn: aiosqlite.Connection) -> list[Any]:
            await expire_leases(conn, now, queue=self.name)
            # One statement for the whole claim; each row gets its own random token.
            return list(
                await conn.execute_fetchall(
                    CLAIM_UPDATE_SQL, (now + lease, now, self.name, now, limit)
                )
            )

        # Group-committed with the process's other writes (the send loop's status
        # changes, say): no transaction, fsync and turn at the cross-process write lock
        # of its own. A claim cancelled meanwhile (shutdown) may still commit: its jobs
        # stay leased until the lease expires or the next start releases them.
        rows = await self.db.write_batched(lease_due, in_thread=True)
        jobs = [Job.from_row(row) for row in rows]
        jobs.sort(key=lambda job: (job.run_at, job.id))
        return jobs

    async def ack(self, job_id: int, token: str) -> None:
        """Mark done. Raises LeaseLost if ``token`` no longer holds the lease."""
        await self._finish(job_id, token, "state = 'done', last_error = NULL", ())

    async def nack(
        self,
        job_id: int,
        token: str,
        *,
        error: str,
        permanent: bool = False,
        retry_after_s: float | None = None,
    ) -> str:
        """Give the job back after a failure. Returns the new state: queued or dead.

        ``retry_after_s`` overrides the backoff (a receiver's Retry-After, say).
        """
        now = self.clock()
        async with self.db.write() as conn:
            row = await self._leased_row(conn, job_id, token)
            attempts, max_attempts = int(row["attempts"]), int(row["max_attempts"])
            if permanent or attempts >= max_attempts:
                state, run_at = "dead", float(row["run_at"])
            else:
                delay = (
                    retry_after_s
                    if retry_after_s is not None
                    else backoff_delay(
                        attempts,
                        base_s=self.backoff_base_s,
                        cap_s=self.backoff_cap_s,
                        rand=self.rand,
                    )
                )
                state, run_at = "queued", now + delay
            await conn.execute(
                "UPDATE queue_jobs SET state = ?, run_at = ?, lease_token = NULL, "
                "lease_expires_at = NULL, last_error = ?, updated_at = ? WHERE id = ?",
                (state, run_at, error[:2000], now, job_id),
            )
            return state

    async def release(self, job_id: int, token: str, *, delay_s: float, note: str) -> None:
        """Give the job back untried (not ready yet: pacing, account offline): the
        attempt it was claimed with does not count."""
        now = self.clock()

        async def give_back(conn: aiosqlite.Connection) -> None:
            await self._leased_row(conn, job_id, token)
            await conn.execute(
                "UPDATE queue_jobs SET state = 'queued', attempts = MAX(0, attempts - 1), "
                "run_at = ?, lease_token = NULL, lease_expires_at = NULL, last_error = ?, "
                "updated_at = ? WHERE id = ?",
                (now + delay_s, note, now, job_id),
            )

        # Group-committed: a claimed batch given back (pacing) shares its commits.
        await self.db.write_batched(give_back, in_thread=True)

    async def due_now(self, order_prefix: str, note: str) -> int:
        """Jobs given back with ``note`` whose order key starts with ``order_prefix``
        (an account's chats: ``<account>:``) are due now; how many."""
        now = self.clock()

        async def due(conn: aiosqlite.Connection) -> int:
            return await due_now_in(conn, self.name, order_prefix, note, now)

        return await self.db.write_batched(due, in_thread=True)

    async def extend(self, job_id: int, token: str, lease_s: float | None = None) -> float:
        """Heartbeat a long job: push its lease expiry out. Returns the new expiry."""
        now = self.clock()
        expires = now + (self.lease_s if lease_s is None else lease_s)
        async with self.db.write() as conn:
            await self._leased_row(conn, job_id, token)
            await conn.execute(
                "UPDATE queue_jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ?",
                (expires, now, job_id),
            )
        return expires

    async def requeue_expired(self) -> int:
        """Return expired leases to the queue (or to dead). Returns how many moved."""
        async with self.db.write() as conn:
            return await expire_leases(conn, self.clock(), queue=self.name)

    async def replay(
        self,
        ids: Sequence[int] | None = None,
        *,
        states: Sequence[str] = ("dead",),
        since: float | None = None,
        until: float | None = None,
    ) -> int:
        """Queue again, with fresh attempts, the given jobs or those matching the filter."""
        now = self.clock()
        if ids is not None and not ids:
            return 0
        bad = [s for s in states if s not in ("dead", "done")]
        if bad:
            raise ValueError(f"only dead or done jobs can be replayed, not {bad}")
        where = Where("queue = ?", self.name)
        if ids is not None:
            where.is_in("id", ids)
        where.is_in("state", states)
        where.add_if("updated_at >= ?", since).add_if("updated_at < ?", until)
        async with self.db.write() as conn:
            cur = await conn.execute(
                "UPDATE queue_jobs SET state = 'queued', attempts = 0, run_at = ?, "
                "lease_token = NULL, lease_expires_at = NULL, updated_at = ? "
                f"WHERE {where.sql}",
                (now, now, *where.params),
            )
            replayed = cur.rowcount
            if replayed:
                await restore_order(conn, self.name)  # replayed jobs rejoin their keys
            return replayed

    async def get(self, job_id: int) -> Job | None:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM queue_jobs WHERE id = ? AND queue = ?", (job_id, self.name)
        )
        return None if row is None else Job.from_row(row)

    async def counts(self) -> dict[str, int]:
        rows = await self.db.fetchall(
            "SELECT state, COUNT(*) FROM queue_jobs WHERE queue = ? GROUP BY state", (self.name,)
        )
        counts = dict.fromkeys(STATES, 0)
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    async def has_unfinished(self, order_key: str) -> bool:
        """Whether a job of ``order_key`` is still queued or leased (after one of the
        key finished: whether it released a next one to claim)."""
        row = await self.db.fetchone(
            "SELECT 1 FROM queue_jobs WHERE queue = ? AND order_key = ? "
            "AND order_key IS NOT NULL AND state IN ('queued', 'leased') LIMIT 1",
            (self.name, order_key),
        )
        return row is not None

    async def oldest_pending_age_s(self) -> float:
        oldest = await self.db.scalar(
            "SELECT MIN(created_at) FROM queue_jobs WHERE queue = ? AND state IN "
            "('queued', 'leased')",
            (self.name,),
        )
        return 0.0 if oldest is None else max(0.0, self.clock() - float(oldest))

    async def purge(self, *, older_than_s: float, states: Sequence[str] = ("done",)) -> int:
        """Delete finished jobs last touched before now - older_than_s."""
        cutoff = self.clock() - older_than_s
        async with self.db.write() as conn:
            cur = await conn.execute(
                f"DELETE FROM queue_jobs WHERE queue = ? AND state IN "
                f"({','.join('?' * len(states))}) AND updated_at < ?",
                (self.name, *states, cutoff),
            )
            return cur.rowcount

    async def _leased_row(self, conn: aiosqlite.Connection, job_id: int, token: str) -> Any:
        async with conn.execute(
            "SELECT attempts, max_attempts, run_at FROM queue_jobs "
            "WHERE id = ? AND queue = ? AND state = 'leased' AND lease_token = ?",
            (job_id, self.name, token),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise LeaseLost(f"job {job_id} in queue {self.name!r} is not leased with that token")
        return row

    async def _finish(
        self, job_id: int, token: str, assignment: str, params: tuple[object, ...]
    ) -> None:
        now = self.clock()
        async with self.db.write() as conn:
            cur = await conn.execute(
                f"UPDATE queue_jobs SET {assignment}, lease_token = NULL, "
                "lease_expires_at = NULL, updated_at = ? "
                "WHERE id = ? AND queue = ? AND state = 'leased' AND lease_token = ?",
                (*params, now, job_id, self.name, token),
            )
            if cur.rowcount != 1:
                raise LeaseLost(
                    f"job {job_id} in queue {self.name!r} is not leased with that token"
                )

    async def replay_keys(self, keys: Sequence[str], *, states: Sequence[str] = ("dead",)) -> int:
        """``replay`` for the jobs with these unique keys (the producer's names for them)."""
        ids: list[int] = []
        for start in range(0, len(keys), _KEYS_PER_STATEMENT):
            chunk = keys[start : start + _KEYS_PER_STATEMENT]
            rows = await self.db.fetchall(
                f"SELECT id FROM queue_jobs WHERE queue = ? AND unique_key IN "
                f"({','.join('?' * len(chunk))})",
                (self.name, *chunk),
            )
            ids.extend(int(r[0]) for r in rows)
        replayed = 0
        for start in range(0, len(ids), _KEYS_PER_STATEMENT):
            replayed += await self.replay(ids[start : start + _KEYS_PER_STATEMENT], states=states)
        return replayed


# Keys or ids bound in one IN (...): well under SQLite's variable limit (32766).
_KEYS_PER_STATEMENT = 500


async def due_now_in(
    conn: aiosqlite.Connection, queue: str, order_prefix: str, note: str, now: float
) -> int:
    """``DurableQueue.due_now`` in the caller's transaction. A range on the order key
    (its index), not LIKE: ``order_prefix`` up to the same text with its last
    character's successor."""
    upper = order_prefix[:-1] + chr(ord(order_prefix[-1]) + 1)
    cur = await conn.execute(
        "UPDATE queue_jobs SET run_at = ?, updated_at = ? WHERE queue = ? "
        "AND order_key >= ? AND order_key < ? AND order_key IS NOT NULL "
        "AND state = 'queued' AND run_at > ? AND last_error = ?",
        (now, now, queue, order_prefix, upper, now, note),
    )
    return max(0, cur.rowcount)


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


async def delete_prefix_in(conn: aiosqlite.Connection, queue: str, prefix: str) -> int:
    """Delete, inside the caller's transaction, every job of ``queue`` (in any state)
    whose unique key starts with ``prefix``; returns how many."""
    cur = await conn.execute(
        "DELETE FROM queue_jobs WHERE queue = ? AND unique_key LIKE ? ESCAPE '\\'",
        (queue, _like_prefix(prefix)),
    )
    return cur.rowcount


async def purge_in(
    conn: aiosqlite.Connection, queue: str, *, before: float, states: Sequence[str] = ("done",)
) -> int:
    """``DurableQueue.purge`` inside the caller's transaction: delete finished jobs
    last touched before ``before``."""
    cur = await conn.execute(
        f"DELETE FROM queue_jobs WHERE queue = ? AND state IN "
        f"({','.join('?' * len(states))}) AND updated_at < ?",
        (queue, *states, before),
    )
    return cur.rowcount


# -- every queue at once (the worker's status and maintenance) ---------------------------


async def counts_by_queue(db: Database) -> dict[str, dict[str, int]]:
    """Jobs per state of every queue that has any: queue -> {state: count}, each with
    every state of ``STATES``."""
    rows = await db.fetchall(
        "SELECT queue, state, COUNT(*) AS n FROM queue_jobs GROUP BY queue, state"
    )
    queues: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = queues.setdefault(row["queue"], dict.fromkeys(STATES, 0))
        counts[row["state"]] = int(row["n"])
    return queues


async def open_jobs_by_account(db: Database, queue: str) -> dict[str, tuple[int, float]]:
    """Jobs of ``queue`` queued or leased, per the ``account_id`` of their payload:
    account -> (how many, the oldest one's creation time). For the worker's monitor."""
    rows = await db.fetchall(
        "SELECT json_extract(payload, '$.account_id') AS account, COUNT(*) AS n,"
        " MIN(created_at) AS oldest FROM queue_jobs"
        " WHERE queue = ? AND state IN ('queued', 'leased') GROUP BY account",
        (queue,),
    )
    return {r["account"]: (int(r["n"]), float(r["oldest"])) for r in rows}


async def expired_lease_count(db: Database, now: float) -> int:
    """Leases of every queue expired at ``now`` (a read: ``expire_leases`` writes)."""
    return int(
        await db.scalar(
            "SELECT COUNT(*) FROM queue_jobs WHERE state = 'leased' AND lease_expires_at <= ?",
            (now,),
        )
        or 0
    )
