"""What the API and the worker's dispatcher agree on about webhooks, importable by
either side without the other: the queue the deliveries wait in, the job key of one
delivery in it, and the headers the appliance sets itself (custom headers may not
override them).

A delivery's job key is ``<endpoint id>:<event id>``: the queue's producer-side
dedupe makes a second fan-out of the same event to the same endpoint a no-op, and the
API finds an endpoint's jobs by the ``<endpoint id>:`` prefix.
"""

from __future__ import annotations

# Claimed only by the webhooks process (appliance/webhooks/process.py).
WEBHOOK_QUEUE = "webhook"

RESERVED_HEADERS = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "connection",
    }
)


def delivery_job_key(endpoint_id: str, event_id: int) -> str:
    """The job key of the delivery of one event to one endpoint."""
    return f"{endpoint_id}:{event_id}"


def endpoint_job_prefix(endpoint_id: str) -> str:
    """The prefix every job key of an endpoint's deliveries starts with."""
    return f"{endpoint_id}:"


def delivery_job_key_sql(table: str) -> str:
    """``delivery_job_key`` as an SQL expression over a ``webhook_deliveries`` row
    (``table`` is its name or alias), to join deliveries with their jobs."""
    return f"{table}.endpoint_id || ':' || {table}.event_id"
