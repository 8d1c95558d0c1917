"""The history mapping's own thread (engines/web/history.map_executor): its CPU
priority is lowered by HISTORY_MAP_NICE, so a large import leaves the CPU to the API
processes first; it still maps chunks into the same batches."""

from __future__ import annotations

import os
import threading

from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as hs
from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as web

from appliance.config import Settings
from appliance.engines.web.history import batches, map_executor


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_mapping_thread_runs_at_a_lower_priority() -> None:
    own = _nice()
    assert map_executor(3).submit(_nice).result(timeout=30) == min(19, own + 3)
    assert map_executor(0).submit(_nice).result(timeout=30) == own
    # One thread per value, reused: the priority is set once, when it starts.
    assert map_executor(3) is map_executor(3)
    assert _nice() == own  # the calling thread keeps its own
    assert Settings.model_fields["history_map_nice"].default == 10


def test_a_chunk_maps_the_same_on_the_mapping_thread() -> None:
    data = hs.HistorySync(syncType=hs.HistorySync.FULL, chunkOrder=1, progress=100)
    conv = data.conversations.add(ID="15550001111@s.whatsapp.net", name="Ann")
    for n in range(3):
        info = web.WebMessageInfo(
            key={"remoteJID": conv.ID, "fromMe": n == 0, "ID": f"H{n}"},
            message=e2e.Message(conversation=f"text {n}"),
            messageTimestamp=1_700_000_000 + n,
            status=web.WebMessageInfo.READ,
        )
        conv.messages.add(message=info)
    here = batches(data, "15559999999@s.whatsapp.net")
    there = map_executor(10).submit(batches, data, "15559999999@s.whatsapp.net").result(30)
    assert there == here
    assert [m.id for m in there[0].messages] == ["H2", "H1", "H0"]
    assert there[0].messages[2].direction == "out"
