"""Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header) for any route.

    @bp.post("/api/users")
    @requires(Permission.USERS_MANAGE)
    @idempotent
    async def create_user(): ...

- The key is scoped to the caller (user or API key) and kept 24 hours.
- Same key, same method, path and body: the stored status and body are replayed
  byte for byte, with ``Idempotent-Replayed: true``.
- Same key, different request: 422. Same key while the first is still running: 409.
- A 5xx, or an error raised by the handler, forgets the key so the client can retry.
Stored bodies are encrypted with the data key (they may hold a secret shown once).

``@idempotent_in_transaction`` (the send route): the same contract, in one write
transaction instead of three. The route looks the key up and stores its answer
inside the transaction that does the work (``IdempotentWrite``), so the work and its
record commit together or not at all: no in-flight state, and a concurrent retry
waits for the first at SQLite's write lock and gets its answer replayed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import aiosqlite
from pydantic import BaseModel, Field
from quart import Response, g, make_response, request
from quart_schema import document_headers, document_response

from appliance.api.access import principal
from appliance.api.body import body_bytes
from appliance.api.schemas import ErrorBody
from appliance.api.state import state_of
from appliance.auth import store
from appliance.crypto import DataCipher
from appliance.errors import ClientError, Conflict, InvalidInput, Unprocessable

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
TTL_S = 24 * 3600
# An in-flight record older than this belongs to a process that died mid-request.
ABANDONED_AFTER_S = 300
# A bare token or an RFC 8941 sf-string; quotes must be balanced.
_KEY = re.compile(r'^(?:"([\x21\x23-\x7e]{1,255})"|([\x21\x23-\x7e]{1,255}))$')


class IdempotencyHeaders(BaseModel):
    idempotency_key: str | None = Field(
        default=None,
        alias="Idempotency-Key",
        description="Optional. Retrying with the same key and body replays the first "
        "answer instead of acting twice; kept 24 hours per caller.",
        json_schema_extra={"pattern": _KEY.pattern},
    )


def parse_key(raw: str) -> str:
    match = _KEY.match(raw.strip())
    if match is None:
        raise InvalidInput(
            f"{HEADER} must be 1 to 255 visible ASCII characters, e.g. a UUID",
            issues=[{"path": HEADER, "message": "invalid key", "code": "invalid_header"}],
        )
    return match.group(1) or match.group(2)


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def idempotent(func: F) -> F:
    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        raw = request.headers.get(HEADER)
        if raw is None:
            return await func(*args, **kwargs)
        key = parse_key(raw)
        state = state_of()
        assert state.db is not None
        scope = principal().key
        body = await body_bytes()
        print_ = fingerprint(request.method, request.path, body)
        now = time.time()

        async def claim(conn: aiosqlite.Connection) -> store.IdempotencyRecord | None:
            row = await store.idempotency_record(conn, scope, key, now=now)
            abandoned = (
                row is not None
                and row.state == "in_flight"
                and row.created_at < now - ABANDONED_AFTER_S
            )
            if row is None or abandoned:
                await store.claim_idempotency_key(
                    conn, scope, key, fingerprint=print_, now=now, ttl_s=TTL_S
                )
                return None
            return row

        # Group-committed with concurrent requests, in the database thread. A client
        # hanging up while its claim waits does not stop the claim from committing:
        # the key is then forgotten once it has, so a retry is not refused with 409.
        claiming = asyncio.ensure_future(state.db.write_batched(claim, in_thread=True))
        try:
            row = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            claiming.add_done_callback(lambda done: _forget_if_claimed(done, scope, key))
            raise
        if row is not None:
            if row.fingerprint != print_:
                raise Unprocessable(f"this {HEADER} was used with a different request")
            if row.state == "in_flight":
                raise Conflict(f"a request with this {HEADER} is still being processed")
            assert row.body is not None  # a done record holds its answer
            stored = state.cipher.decrypt(row.body, context=f"{scope}|{key}".encode())
            replay = Response(stored, status=row.status, content_type=row.content_type)
            replay.headers[REPLAYED_HEADER] = "true"
            return replay
        try:
            response = await make_response(await func(*args, **kwargs))
        except BaseException:
            await _forget(scope, key)
            raise
        if response.status_code >= 500:
            await _forget(scope, key)
            return response
        # make_response gives Quart's Response here (its get_data is a coroutine); the
        # union in its annotation also allows werkzeug's, whose get_data is not.
        assert isinstance(response, Response)
        data = await response.get_data(as_text=False)
        sealed = state.cipher.encrypt(data, context=f"{scope}|{key}".encode())
        # Group-committed with concurrent requests, in the database thread.
        await state.db.write_batched(
            lambda conn: store.finish_idempotency_key(
                conn,
                scope,
                key,
                status=response.status_code,
                content_type=response.content_type,
                body=sealed,
            ),
            in_thread=True,
        )
        return response

    return _documented(wrapper)  # type: ignore[no-any-return]


def _documented(wrapper: Any) -> Any:
    wrapper = document_headers(IdempotencyHeaders)(wrapper)
    wrapper = document_response(ErrorBody, 409)(wrapper)
    wrapper = document_response(ErrorBody, 422)(wrapper)
    return wrapper


@dataclass(frozen=True)
class Replay:
    """A stored answer, still encrypted (decrypted outside the transaction)."""

    status: int
    content_type: str | None
    sealed: bytes


@dataclass(frozen=True)
class IdempotentWrite:
    """This request's Idempotency-Key, for a route that stores it in its own
    transaction (``@idempotent_in_transaction``)."""

    scope: str
    key: str
    fingerprint: str
    now: float
    cipher: DataCipher  # the answer is stored encrypted, as @idempotent stores it

    @property
    def _context(self) -> bytes:
        return f"{self.scope}|{self.key}".encode()

    async def replay_in(self, conn: aiosqlite.Connection) -> Replay | None:
        """Inside the route's transaction, before its work: the stored answer to replay,
        or None (do the work, then ``record_in``). 422 for another request under this
        key, 409 while a request of the per-request decorator (an older process during
        a rolling restart) still holds it in flight."""
        row = await store.idempotency_record(conn, self.scope, self.key, now=self.now)
        if row is None:
            return None
        if row.fingerprint != self.fingerprint:
            raise Unprocessable(f"this {HEADER} was used with a different request")
        if row.state == "in_flight":
            if row.created_at < self.now - ABANDONED_AFTER_S:
                return None  # its process died mid-request; record_in replaces it
            raise Conflict(f"a request with this {HEADER} is still being processed")
        assert row.body is not None and row.status is not None  # a done record
        return Replay(row.status, row.content_type, row.body)

    async def record_in(
        self, conn: aiosqlite.Connection, *, status: int, content_type: str, body: bytes
    ) -> None:
        """Inside the route's transaction, with its work: the answer to replay."""
        await store.record_idempotency_answer(
            conn,
            self.scope,
            self.key,
            fingerprint=self.fingerprint,
            status=status,
            content_type=content_type,
            body=self.cipher.encrypt(body, context=self._context),
            now=self.now,
            expires_at=self.now + TTL_S,
        )

    def response(self, replay: Replay) -> Response:
        stored = self.cipher.decrypt(replay.sealed, context=self._context)
        answer = Response(stored, status=replay.status, content_type=replay.content_type)
        answer.headers[REPLAYED_HEADER] = "true"
        return answer


def idempotent_write() -> IdempotentWrite | None:
    """The request's key for ``@idempotent_in_transaction`` routes; None without one."""
    return g.get("idempotent_write")  # type: ignore[no-any-return]


def idempotent_in_transaction(func: F) -> F:
    """``@idempotent``'s contract for a route that calls ``idempotent_write()`` and
    stores the key in the transaction of its work (one transaction, not three).

    A request refused before that transaction (400, 404, 409 ...) stores nothing; if
    its key already holds an answer to the same request, that answer is replayed
    instead, as ``@idempotent`` would have done before running the route."""

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        raw = request.headers.get(HEADER)
        if raw is None:
            return await func(*args, **kwargs)
        body = await body_bytes()
        write = IdempotentWrite(
            principal().key,
            parse_key(raw),
            fingerprint(request.method, request.path, body),
            time.time(),
            state_of().cipher,
        )
        g.idempotent_write = write
        try:
            return await func(*args, **kwargs)
        except ClientError:
            state = state_of()
            assert state.db is not None
            # Rare (a refused retry): a read of its own, in a transaction for its snapshot.
            replay = await state.db.write_batched(write.replay_in, in_thread=True)
            if replay is None:
                raise
            return write.response(replay)

    return _documented(wrapper)  # type: ignore[no-any-return]


_forgetting: set[asyncio.Task[None]] = set()


def _forget_if_claimed(
    claiming: asyncio.Future[store.IdempotencyRecord | None], scope: str, key: str
) -> None:
    """The claim of a request that was cancelled while it waited: forget the key if
    the claim went through (a None outcome)."""
    if claiming.cancelled() or claiming.exception() is not None or claiming.result() is not None:
        return
    task = asyncio.ensure_future(_forget(scope, key))
    _forgetting.add(task)
    task.add_done_callback(_forgetting.discard)


async def _forget(scope: str, key: str) -> None:
    state = state_of()
    assert state.db is not None
    try:
        async with state.db.write() as conn:
            await store.forget_idempotency_key(conn, scope, key)
    except sqlite3.Error:
        pass  # it expires in 24 h anyway
