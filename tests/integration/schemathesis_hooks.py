"""Schemathesis hooks for test_openapi_tools.py (loaded with SCHEMATHESIS_HOOKS).

Generated requests must never make the appliance reach beyond loopback, so before
each call:
- accounts are created with the `sandbox` engine only: a `web` account would connect
  to WhatsApp's servers, a `cloud` one to graph.facebook.com;
- every URL in a body (webhook `url`, media `link`, engine settings) that names a host
  other than a loopback address is replaced with a loopback URL nobody listens on,
  so the SSRF guard never even resolves a made-up host name.

The sandbox's load mode is slowed to a trickle (at most 5 messages a second for 2
seconds): at the up to 20,000 a second for 10 minutes the schema allows, it would
turn the rest of the run into a load test of a 2-core machine.

One more rewrite, for what no schema can say: the lists' `cursor` is opaque
(only a `next` the server issued is valid), so a well-formed made-up cursor is dropped
instead of sent; malformed ones still go through and must answer 400.

And one check of our own: no answer ever carries a Python traceback.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

import schemathesis

LOOPBACK_URL = "http://127.0.0.1:9/fuzz"
OUTBOUND_ENGINES = ("web", "cloud")
OPAQUE_CURSOR_PATHS = re.compile(
    r"^/api/(search|chats|accounts/\{account\}/(chats|contacts|messages|search|chats/\{chat_id\}/messages))$"
    # the team inbox's lists (tags, notes, quick replies, notifications)
    r"|^/api/(me/notifications|accounts/\{account\}/(tags|quick-replies|chats/\{chat_id\}/notes))$"
    # notes search, per account and across them
    r"|^/api/(search/notes|accounts/\{account\}/search/notes)$"
)
WELL_FORMED_CURSOR = re.compile(r"^[A-Za-z0-9_-]+$")


def _is_loopback_url(value: str) -> bool:
    try:
        host = urlsplit(value).hostname
    except ValueError:
        return False
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _looks_like_url(value: str) -> bool:
    return "://" in value or value.lower().startswith(("//", "www."))


def tame(value: Any) -> Any:
    """``value`` with outbound engines and non-loopback URLs replaced (recursively)."""
    if isinstance(value, dict):
        tamed = {k: tame(v) for k, v in value.items()}
        if tamed.get("engine") in OUTBOUND_ENGINES:
            tamed["engine"] = "sandbox"
            tamed.pop("engine_settings", None)  # those of the engine it was
        return tamed
    if isinstance(value, list):
        return [tame(v) for v in value]
    if isinstance(value, str) and _looks_like_url(value) and not _is_loopback_url(value):
        return LOOPBACK_URL
    return value


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if isinstance(case.body, dict | list):
        tamed = tame(case.body)
        if tamed != case.body:
            case.body = tamed
    body = case.body
    if case.operation.path.endswith("/sandbox/load") and isinstance(body, dict):
        for name, most in (("rate_per_s", 5), ("duration_s", 2)):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > most:
                body = {**body, name: most}
        if body != case.body:
            case.body = body
    if isinstance(case.query, dict):
        query = {k: tame(v) for k, v in case.query.items()}
        cursor = query.get("cursor")
        opaque = OPAQUE_CURSOR_PATHS.match(case.operation.path)
        if opaque and isinstance(cursor, str) and WELL_FORMED_CURSOR.match(cursor):
            del query["cursor"]
        if query != case.query:
            case.query = query


@schemathesis.check
def no_traceback(ctx: Any, response: Any, case: Any) -> None:
    """Internals never reach the client."""
    text = response.content[:200_000].decode("utf-8", "replace")
    if "Traceback (most recent call last)" in text or 'File "/' in text:
        raise AssertionError(f"the answer carries a traceback: {text[:300]}")
