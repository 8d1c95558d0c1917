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

The names below are the ones the rest of the appliance and the tests import.
"""

from appliance.engines.cloud.engine import CloudEngine
from appliance.engines.cloud.graph import (
    ERROR_CLASSES,
    GraphClient,
    GraphRefused,
    MediaDownloadError,
    send_error_for,
)
from appliance.engines.cloud.inbox import StatusUpdate, inbound_from_cloud, parse_webhook
from appliance.engines.cloud.settings import (
    MASK,
    CloudConfig,
    CloudSettings,
    app_secret_of,
    base_url_change,
    store_settings,
)
from appliance.engines.cloud.signature import SIGNATURE_HEADER, check_signature, signature_for

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
