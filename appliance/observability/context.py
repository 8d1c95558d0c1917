"""Request id and W3C trace context carried through logs and IPC frames."""

from __future__ import annotations

import os
import re
import secrets
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
traceparent_var: ContextVar[str | None] = ContextVar("traceparent", default=None)

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32


def new_request_id() -> str:
    return secrets.token_hex(16)


def safe_request_id(candidate: str | None) -> str:
    """Accept a client's X-Request-ID only when it is a short, plain token."""
    if candidate and _SAFE_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()


def child_traceparent(parent: str | None) -> str:
    """A traceparent for a new span: same trace as ``parent`` if valid, else a new trace."""
    match = _TRACEPARENT.match(parent or "")
    trace_id = match.group(1) if match and match.group(1) != _ZERO_TRACE else secrets.token_hex(16)
    flags = match.group(3) if match else "01"
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def request_ids(sent_id: str | None, sent_parent: str | None) -> tuple[str, str]:
    """A new HTTP request's id and traceparent: ``safe_request_id(sent_id)`` and
    ``child_traceparent(sent_parent)``, with one read of the random source for both."""
    fresh = os.urandom(40).hex()  # a request id, a trace id, a span id: what is not sent
    request_id = sent_id if sent_id and _SAFE_REQUEST_ID.match(sent_id) else fresh[:32]
    match = _TRACEPARENT.match(sent_parent) if sent_parent else None
    if match is not None and match.group(1) != _ZERO_TRACE:
        return request_id, f"00-{match.group(1)}-{fresh[64:]}-{match.group(3)}"
    flags = match.group(3) if match is not None else "01"
    return request_id, f"00-{fresh[32:64]}-{fresh[64:]}-{flags}"


def trace_id_of(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None
