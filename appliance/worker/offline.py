"""Queued work (sends, actions) of an account that is not connected.

Such a job is given back for ``OFFLINE_RECHECK_S`` with the note ``NOT_CONNECTED``
rather than a few seconds: an account offline for hours with a backlog would otherwise
have it claimed and given back over and over. When the account connects, its runtime
tells the worker (``AccountServices.account_connected``) and those jobs are due at once
(``DurableQueue.due_now`` over the account's order keys, ``<account>:<chat>``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.db.queue import DurableQueue, Job
from appliance.messaging.contracts import send_order_key
from appliance.worker.accounts import Accounts

log = logging.getLogger(__name__)

OFFLINE_RECHECK_S = 60.0  # a job whose account is not connected waits this long, at most
NOT_CONNECTED = "account not connected"


async def give_back(
    queue: DurableQueue, job: Job, accounts: Accounts, wake: Callable[[], None]
) -> None:
    """Give ``job`` back until its account (``payload["account_id"]``) connects; if it
    connected meanwhile (its jobs made due before this one was back), this one is due
    at once too and ``wake`` is called."""
    account_id = job.payload["account_id"]
    await queue.release(
        job.id, job.lease_token or "", delay_s=OFFLINE_RECHECK_S, note=NOT_CONNECTED
    )
    runtime = accounts.get(account_id)
    if runtime is not None and runtime.connected:
        await due_again(queue, account_id, wake)


async def due_again(queue: DurableQueue, account_id: str, wake: Callable[[], None]) -> None:
    """The account connected: its jobs given back meanwhile are due now; ``wake`` the
    loop that claims them."""
    try:
        # The start of every order key of the account's chats: a chat's key with no chat
        # (actions.action_order_key has the same form as send_order_key).
        await queue.due_now(send_order_key(account_id, ""), NOT_CONNECTED)
    except Exception:  # they still come due by themselves, OFFLINE_RECHECK_S at most
        log.exception(
            "could not make the %s jobs of a connected account due",
            queue.name,
            extra={"account": account_id},
        )
    wake()
