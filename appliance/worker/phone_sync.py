"""The worker's side of what an engine learns from the phone (issue 12, items 1-3):
messages sent elsewhere, history sync batches, chat and contact updates, profile
pictures. ``AccountRuntime`` (the engine's host) delegates here; every write goes
through group commit (``Database.write_batched``) with its events, and API processes
are told after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from appliance.config import Settings
from appliance.db.database import Database
from appliance.errors import Conflict, NotFound, Unprocessable
from appliance.messaging import history_store, phone_chat_settings, store
from appliance.messaging import media as media_store
from appliance.messaging.history_store import (
    ChatInfo,
    ContactNames,
    HistoryBatch,
    HistoryLimit,
    PhoneMessage,
)

if TYPE_CHECKING:
    from appliance.ipc.protocol import PictureParams, PictureResult
    from appliance.worker.messaging import MessagingService

log = logging.getLogger(__name__)

PICTURE_REFRESH_S = 7 * 86400  # a stored picture (or "none"/"hidden") is asked again after


def history_limit(settings: dict[str, Any]) -> HistoryLimit:
    return HistoryLimit(
        per_chat=int(settings.get("history_limit") or 0),
        days=int(settings.get("history_days") or 0),
    )


class PhoneSyncHost:
    """One account's writes of what its engine learns from the phone."""

    def __init__(
        self,
        db: Database,
        account_id: str,
        events_written: Callable[[], Awaitable[None]],
        settings: Callable[[], dict[str, Any]],
        *,
        batch_pause_s: float = 0.0,
    ) -> None:
        self.db = db
        self.account_id = account_id
        # After each history batch (HISTORY_BATCH_PAUSE_MS): room for the API and the
        # other writers while a large history imports.
        self.batch_pause_s = batch_pause_s
        self.events_written = events_written
        self.settings = settings  # the account's settings, as of now

    async def phone_message(self, message: PhoneMessage) -> bool:
        now = time.time()
        new = await self.db.write_batched(
            lambda conn: history_store.insert_phone_sent(conn, self.account_id, message, now=now)
        )
        if new:
            await self.events_written()
        return new

    async def history(self, batch: HistoryBatch) -> history_store.BatchResult:
        now = time.time()
        limit = history_limit(self.settings())
        # In the writer's thread: a batch is a few hundred statements, one thread round
        # trip for all of them instead of one each (less of the worker's CPU, which the
        # API processes share while a large history imports).
        result = await self.db.write_batched(
            lambda conn: history_store.import_history_batch(
                conn, self.account_id, batch, limit, now=now
            ),
            in_thread=True,
        )
        await self.events_written()
        if self.batch_pause_s > 0:
            await asyncio.sleep(self.batch_pause_s)
        return result

    async def chat_info(self, info: ChatInfo) -> bool:
        now = time.time()
        changed = await self.db.write_batched(
            lambda conn: history_store.apply_chat_info(conn, self.account_id, info, now=now)
        )
        if changed:
            await self.events_written()
        return changed

    async def contact_names(self, names: list[ContactNames]) -> int:
        now = time.time()

        async def work(conn: Any) -> int:
            n = 0
            for item in names:
                n += await history_store.upsert_contact_names(conn, self.account_id, item, now=now)
            return n

        changed = await self.db.write_batched(work)
        if changed:
            await self.events_written()
        return changed

    async def chat_settings(
        self, settings: list[phone_chat_settings.PhoneChatSettings]
    ) -> list[str]:
        """Archive, pin and mute as the phone has them (``chat.updated``, by phone);
        returns the jids looked at (messaging/phone_chat_settings.py)."""
        now = time.time()
        looked, changed = await self.db.write_batched(
            lambda conn: phone_chat_settings.apply(conn, self.account_id, settings, now=now)
        )
        if changed:
            await self.events_written()
        return looked

    async def watched_chats(self, limit: int) -> list[str]:
        return await phone_chat_settings.watched_chats(self.db, self.account_id, limit)

    async def picture_changed(self, jid: str) -> None:
        await self.db.write_batched(
            lambda conn: history_store.picture_changed(conn, self.account_id, jid)
        )


async def profile_picture(
    db: Database,
    settings: Settings,
    account_id: str,
    jid: str,
    engine: Any,
    *,
    refresh: bool = False,
    refresh_age_s: float = PICTURE_REFRESH_S,
) -> history_store.PictureRow:
    """The stored answer for ``jid``'s picture, asked from WhatsApp (through the engine)
    when there is none, it is older than ``refresh_age_s``, WhatsApp said it changed,
    or ``refresh``. A picture is written to the media store; "none" and "hidden" are
    remembered the same way, so WhatsApp is not asked on every request."""
    row = await history_store.picture_row(db, account_id, jid)
    now = time.time()
    fresh = row is not None and not row.stale and now - row.checked_at < refresh_age_s
    if fresh and not refresh:
        assert row is not None
        return row
    ask = getattr(engine, "profile_picture", None)
    if ask is None:
        if row is not None:
            return row  # the engine cannot ask: what we have is the best answer
        raise Conflict(
            f"the {getattr(engine, 'name', 'account')} engine cannot fetch profile pictures"
        )
    try:
        picture = await ask(jid)
    except (Unprocessable, Conflict):
        if row is not None:
            return row
        raise
    except Exception as exc:
        if row is not None:
            log.warning(
                "refreshing a profile picture failed; serving the stored one",
                extra={"account_id": account_id, "error": repr(exc)},
            )
            return row
        raise Conflict(f"WhatsApp did not answer for the profile picture: {exc}") from None
    media_id: str | None = None
    record = path = None
    if picture.state == "ok" and picture.data:
        media_store.check_size(settings, picture.data)
        record, path = await media_store.write_media_file(
            settings,
            account_id,
            picture.data,
            content_type=media_store.received_content_type(picture.data),
            filename=None,
        )
        media_id = record.id

    async def work(conn: Any) -> None:
        if record is not None:
            await media_store.insert_media_row(conn, record)
        await history_store.save_picture(
            conn,
            account_id,
            jid,
            state=picture.state,
            media_id=media_id,
            picture_id=picture.picture_id,
            now=now,
        )

    try:
        await db.write_batched(work)
    except Exception:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    saved = await history_store.picture_row(db, account_id, jid)
    if saved is None:
        raise NotFound("no such account")
    return saved


async def picture_for(service: MessagingService, params: PictureParams) -> PictureResult:
    """RPC ``pictures.get``: the stored answer, or the account's engine asked."""
    from appliance.ipc.protocol import PictureResult

    row = await store.account_row(service.db, params.account_id)
    if row is None:
        raise NotFound("no such account")
    runtime = service.runtimes.get(params.account_id)
    engine: Any = runtime.engine if runtime is not None and runtime.connected else None
    if engine is None or not hasattr(engine, "profile_picture"):
        engine = _Disconnected(row.engine)
    picture = await profile_picture(
        service.db, service.settings, params.account_id, params.jid, engine, refresh=params.refresh
    )
    return PictureResult(
        state=picture.state, media_id=picture.media_id, checked_at=picture.checked_at
    )


class _Disconnected:
    """The engine of an account that is not connected: it cannot ask WhatsApp."""

    def __init__(self, engine: str) -> None:
        self.engine = engine

    async def profile_picture(self, jid: str) -> Any:
        if self.engine != "web":
            raise Conflict(f"the {self.engine} engine cannot fetch profile pictures")
        raise Conflict("the account is not connected to WhatsApp; connect it and try again")
