"""Meta's webhook signature: ``X-Hub-Signature-256``, HMAC-SHA256 of the raw body with
the account's app secret. Checked by the API process's public webhook route before a
post is stored, so it imports nothing of the engine."""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

SIGNATURE_HEADER = "X-Hub-Signature-256"


def signature_for(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def check_signature(
    app_secret: str, body: bytes, header: str | None
) -> Literal["ok", "missing", "mismatch"]:
    """Check ``X-Hub-Signature-256`` over the raw body, in constant time."""
    if not header:
        return "missing"
    expected = signature_for(app_secret, body)
    if hmac.compare_digest(expected.encode(), header.strip().lower().encode()):
        return "ok"
    return "mismatch"
