"""The audit row of the request being served (who, from where, which request)."""

from __future__ import annotations

import time
from typing import Any

from quart import g

from appliance.api.access import client_addr
from appliance.auth import store
from appliance.observability.context import request_id_var


async def audit(conn: Any, action: str, *, target: str | None = None, **details: Any) -> None:
    """An audit row for this request, with its actor, address and request id."""
    who = g.get("principal")
    await store.audit(
        conn,
        action=action,
        now=time.time(),
        actor=who.key if who else None,
        actor_name=who.name if who else None,
        target=target,
        details=details,
        client_addr=client_addr(),
        request_id=request_id_var.get(),
    )
