"""Encrypt the values of webhook endpoints' custom headers with the data key.

Before this version ``webhook_endpoints.headers`` held the values in plain text;
from now on each value is stored as base64 ciphertext bound to its endpoint and
header name (``appliance.webhooks.store.encrypt_headers``). A Python data migration
(see ``appliance.db.migrate``): it needs the data key when any endpoint has headers.

Named for what it does, not for its number: renumber freely when merging.
"""

from __future__ import annotations

from typing import Any

import aiosqlite
import orjson


async def upgrade(conn: aiosqlite.Connection, cipher: Any) -> None:
    from appliance.webhooks.store import encrypt_headers

    async with conn.execute(
        "SELECT id, headers FROM webhook_endpoints WHERE headers NOT IN ('', '{}')"
    ) as cur:
        rows = [(str(r[0]), str(r[1])) for r in await cur.fetchall()]
    if rows and cipher is None:
        raise RuntimeError(
            "migration 'webhook_header_values_encrypted' needs the data key to encrypt the "
            f"custom header values of {len(rows)} webhook endpoint(s); the worker runs it"
        )
    for endpoint_id, headers in rows:
        plain = orjson.loads(headers)
        stored = encrypt_headers(cipher, endpoint_id, {str(k): str(v) for k, v in plain.items()})
        await conn.execute(
            "UPDATE webhook_endpoints SET headers = ? WHERE id = ?",
            (orjson.dumps(stored).decode(), endpoint_id),
        )
