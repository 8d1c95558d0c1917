"""How a request handler talks to the worker: typed calls, and pokes.

``call`` answers the result model of the request's method (``ipc.protocol.METHODS``);
a refusal the worker explains arrives as the ClientError of its status (a 4xx in the
standard shape), no connection or no answer in time as WorkerUnavailable (503).
"""

from __future__ import annotations

from appliance.api.state import state_of
from appliance.ipc import protocol


async def call(params: protocol.Request[protocol.ResultT]) -> protocol.ResultT:
    """Ask the worker of this API process."""
    return await state_of().worker.call(params)


async def poke(topic: protocol.PokeTopic, account_id: str | None = None) -> None:
    """Wake the worker without waiting for it; if it is down it finds the work when it
    starts (and it polls anyway), so a lost poke only costs latency."""
    state_of().worker.notify(protocol.PokeParams(topic=topic, account_id=account_id))
