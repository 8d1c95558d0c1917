"""The ``web`` engine: WhatsApp Web multi-device through neonize's asyncio client.

Modules, each owning one concern (the dependencies point down this list):

- ``settings``: ``WebSettings`` (an account's ``engine_settings``) and ``WebEngineError``.
- ``protobuf``: pure mapping of neonize's protobufs to our models and back.
- ``connection``: the neonize client's lifecycle, connection events, watchdog, and the
  process-wide ``GO_GATE`` / ``GO_THREADS`` guards.
- ``idmap``: our message id <-> WhatsApp's id, a table of the main database.
- ``linking``: QR code and pairing code.
- ``media``: inbound downloads, outbound uploads.
- ``engine``: ``WebEngine``, the Engine implementation composing them.

The names other code imports are re-exported here, imported on first use: the API
process reads ``settings`` without loading the engine (see ``engines/registry.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.engines.lazy import lazy_getattr

# name -> submodule that defines it
_EXPORTS = {
    "GO_GATE": "connection",
    "GO_THREADS": "connection",
    "ClientFactory": "connection",
    "default_client_factory": "connection",
    "install_ack_after_commit": "connection",
    "WebEngine": "engine",
    "jid_str": "protobuf",
    "map_inbound": "protobuf",
    "WebEngineError": "settings",
    "WebSettings": "settings",
}

if TYPE_CHECKING:
    from appliance.engines.web.connection import (
        GO_GATE,
        GO_THREADS,
        ClientFactory,
        default_client_factory,
        install_ack_after_commit,
    )
    from appliance.engines.web.engine import WebEngine
    from appliance.engines.web.protobuf import jid_str, map_inbound
    from appliance.engines.web.settings import (
        WebEngineError,
        WebSettings,
    )


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


__all__ = [
    "GO_GATE",
    "GO_THREADS",
    "ClientFactory",
    "WebEngine",
    "WebEngineError",
    "WebSettings",
    "default_client_factory",
    "install_ack_after_commit",
    "jid_str",
    "map_inbound",
]
