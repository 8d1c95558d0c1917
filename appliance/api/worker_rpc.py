"""How a request handler talks to the worker: typed calls, and pokes.

``call`` answers the result model of the request's method (``ipc.protocol.METHODS``);
a refusal the worker explains arrives as the ClientError of its status (a 4xx in the
standard shape), no connection or no answer in time as WorkerUnavailable (503).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from appliance.api.state import state_of
from appliance.ipc import protocol


async def call(params: protocol.Request[protocol.ResultT]) -> protocol.ResultT:
    """Ask the worker of this API process."""
    return await state_of().worker.call(params)


async def poke(topic: protocol.PokeTopic, account_id: str | None = None) -> None:
    """Wake the worker without waiting for it; if it is down it finds the work when it
    starts (and it polls anyway), so a lost poke only costs latency.

    Pokes are coalesced: the same poke from many requests finishing together (a group
    commit answers a whole batch of sends at once) goes out once, on the event loop's
    next turn."""
    notify_coalesced(state_of().worker, topic, account_id)


class Notifier(Protocol):
    def notify(self, params: protocol.PokeParams) -> bool: ...


_pending: dict[Notifier, set[tuple[protocol.PokeTopic, str | None]]] = {}


def notify_coalesced(
    worker: Notifier, topic: protocol.PokeTopic, account_id: str | None = None
) -> None:
    """Send ``poke(topic, account_id)`` once on the loop's next turn, however many
    times it is asked for until then."""
    waiting = _pending.get(worker)
    if waiting is None:
        waiting = _pending[worker] = set()
        asyncio.get_running_loop().call_soon(_flush, worker)
    waiting.add((topic, account_id))


def _flush(worker: Notifier) -> None:
    for topic, account_id in _pending.pop(worker, ()):
        worker.notify(protocol.PokeParams(topic=topic, account_id=account_id))
