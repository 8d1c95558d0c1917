"""The worker's side of contacts: blocking and unblocking at WhatsApp.

The API checks the account and the engine's ``block_contacts`` capability, then asks
here (RPC ``contacts.block``); the engine is called first, and only once WhatsApp
accepted is the contact's ``blocked`` flag written, with its ``contact.updated`` event.
"""

from __future__ import annotations

import time

from appliance.engines import registry as engines
from appliance.errors import Conflict, EngineError, NotFound
from appliance.inbox import contacts_store
from appliance.ipc import protocol
from appliance.messaging import store
from appliance.worker.messaging import MessagingService


def cannot_block(engine: str) -> Conflict:
    return Conflict(f"the {engine} engine cannot block or unblock contacts")


async def block_contact(
    service: MessagingService, params: protocol.ContactBlockParams
) -> protocol.ContactBlockResult:
    row = await store.account_row(service.db, params.account_id)
    if row is None:
        raise NotFound("no such account")
    if not engines.capabilities(row["engine"]).block_contacts:
        raise cannot_block(row["engine"])
    runtime = service.runtimes.get(params.account_id)
    engine = runtime.engine if runtime is not None and runtime.connected else None
    set_blocked = getattr(engine, "set_blocked", None)
    if set_blocked is None:
        raise Conflict("the account is not connected to WhatsApp; connect it and try again")
    try:
        await set_blocked(params.jid, params.blocked)
    except EngineError as exc:
        raise Conflict(f"WhatsApp did not accept it: {exc}") from None
    async with service.db.write() as conn:
        await contacts_store.set_blocked(
            conn,
            params.account_id,
            params.jid,
            params.blocked,
            by=contacts_store.actor(params.actor, params.actor_name),
            now=time.time(),
        )
    await service.events_written()
    return protocol.ContactBlockResult(blocked=params.blocked)
