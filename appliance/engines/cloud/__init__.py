"""The cloud engine: the official WhatsApp Business Cloud API (Graph API).

Modules, each owning one concern:

- ``settings``  account settings: validation, encrypted storage, masked display
- ``signature`` ``X-Hub-Signature-256`` of Meta's webhook posts
- ``store``     all SQL of the engine's own tables (``cloud_inbox``, ``cloud_wamids``)
- ``graph``     the Graph API HTTP client (through the SSRF guard) and its error classes
- ``inbox``     webhook posts from ``cloud_inbox`` mapped and committed through the host
- ``engine``    ``CloudEngine``, the ``Engine`` composing them

``settings``, ``signature`` and ``store`` import nothing of the engine: the API process
uses them (account routes, the public webhook). Messages, events and account state
change only through the engine's host (``EngineHost``).

The names below are the ones the rest of the appliance and the tests import; each is
imported on first use, so the API process reading ``settings`` or ``signature`` does
not load the engine, its Graph client or httpx code paths (see ``engines/registry.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.engines.lazy import lazy_getattr

# name -> submodule that defines it
_EXPORTS = {
    "CloudEngine": "engine",
    "ERROR_CLASSES": "graph",
    "GraphClient": "graph",
    "GraphRefused": "graph",
    "MediaDownloadError": "graph",
    "send_error_for": "graph",
    "StatusUpdate": "inbox",
    "inbound_from_cloud": "inbox",
    "parse_webhook": "inbox",
    "MASK": "settings",
    "CloudConfig": "settings",
    "CloudSettings": "settings",
    "app_secret_of": "settings",
    "base_url_change": "settings",
    "store_settings": "settings",
    "SIGNATURE_HEADER": "signature",
    "check_signature": "signature",
    "signature_for": "signature",
}

if TYPE_CHECKING:
    from appliance.engines.cloud.engine import CloudEngine
    from appliance.engines.cloud.graph import (
        ERROR_CLASSES,
        GraphClient,
        GraphRefused,
        MediaDownloadError,
        send_error_for,
    )
    from appliance.engines.cloud.inbox import (
        StatusUpdate,
        inbound_from_cloud,
        parse_webhook,
    )
    from appliance.engines.cloud.settings import (
        MASK,
        CloudConfig,
        CloudSettings,
        app_secret_of,
        base_url_change,
        store_settings,
    )
    from appliance.engines.cloud.signature import (
        SIGNATURE_HEADER,
        check_signature,
        signature_for,
    )


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


__all__ = [
    "ERROR_CLASSES",
    "MASK",
    "SIGNATURE_HEADER",
    "CloudConfig",
    "CloudEngine",
    "CloudSettings",
    "GraphClient",
    "GraphRefused",
    "MediaDownloadError",
    "StatusUpdate",
    "app_secret_of",
    "base_url_change",
    "check_signature",
    "inbound_from_cloud",
    "parse_webhook",
    "send_error_for",
    "signature_for",
    "store_settings",
]
