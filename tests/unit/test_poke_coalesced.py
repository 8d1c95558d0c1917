"""Pokes asked for together go to the worker once (appliance/api/worker_rpc.py)."""

from __future__ import annotations

import asyncio

from appliance.api.worker_rpc import notify_coalesced
from appliance.ipc import protocol


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None]] = []

    def notify(self, params: protocol.PokeParams) -> bool:
        self.sent.append((params.topic, params.account_id))
        return True


def test_the_same_poke_from_many_requests_goes_out_once_per_turn() -> None:
    async def main() -> None:
        worker = Recorder()

        async def request(account: str | None) -> None:
            notify_coalesced(worker, "send")
            notify_coalesced(worker, "sandbox_inbox", account)

        await asyncio.gather(*(request("a" if i % 2 else "b") for i in range(50)))
        await asyncio.sleep(0)  # the loop's next turn
        await asyncio.sleep(0)
        assert sorted(worker.sent, key=str) == sorted(
            [("send", None), ("sandbox_inbox", "a"), ("sandbox_inbox", "b")], key=str
        )
        # Later pokes are not lost: a new turn, a new notification.
        notify_coalesced(worker, "send")
        for _ in range(3):
            await asyncio.sleep(0)
        assert worker.sent[-1] == ("send", None) and len(worker.sent) == 4

    asyncio.run(main())
