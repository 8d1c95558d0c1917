"""The cloud engine's actions that reach WhatsApp (``Engine.perform``), where the Cloud
API has them: mark read (the chat's recent inbound messages, ``status: read``) and the
typing indicator (``typing_indicator`` on the newest inbound message, which also marks
it read: the Cloud API has no indicator without it). Archive, pin, mute, revoke and
edit do not exist in the Cloud API; the registry does not claim them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from appliance.engines.base import ActionError, EngineAction
from appliance.engines.cloud.graph import _json_or_none, send_error_for
from appliance.net import ssrf

if TYPE_CHECKING:
    from appliance.engines.cloud.graph import GraphClient


def status_body(message_id: str, *, typing: bool) -> dict[str, Any]:
    """The Graph body of a read receipt, with the typing indicator when ``typing``."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": message_id,
    }
    if typing:
        body["typing_indicator"] = {"type": "text"}
    return body


async def _post(graph: GraphClient, body: dict[str, Any]) -> None:
    try:
        response = await graph._http().post(
            graph.config.url(graph.config.phone_number_id, "messages"),
            json=body,
            headers=graph._auth(),
        )
    except (httpx.HTTPError, ssrf.RefusedUrl) as exc:
        raise ActionError(f"Graph API: {type(exc).__name__}", permanent=False) from None
    if response.status_code != 200:
        refused = send_error_for(response.status_code, _json_or_none(response))
        raise ActionError(f"Graph API refused: {refused.reason}", permanent=refused.permanent)


async def perform(graph: GraphClient, action: EngineAction) -> None:
    ids = [str(i) for i in action.params.get("message_ids", [])]
    if action.type == "read":
        for message_id in ids:
            await _post(graph, status_body(message_id, typing=False))
    elif action.type == "presence":
        if action.params.get("state") == "paused":
            return  # the Cloud API's indicator ends by itself (25 s) or with the reply
        if not ids:
            raise ActionError(
                "the Cloud API shows typing only in reply to a received message", permanent=True
            )
        await _post(graph, status_body(ids[-1], typing=True))
    else:
        raise ActionError(f"the cloud engine cannot {action.type}", permanent=True)
