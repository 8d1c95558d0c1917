"""The dispatcher's Prometheus metrics (worker process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "appliance_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, dead, disabled, refused).",
    ["outcome"],
)
ATTEMPT_LATENCY = Histogram(
    "appliance_webhook_attempt_duration_seconds",
    "Duration of one webhook POST.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0),
)
EVENT_TO_DELIVERY = Histogram(
    "appliance_webhook_event_to_delivery_seconds",
    "From the event's creation to its successful delivery.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0, 86400.0),
)
PENDING = Gauge(
    "appliance_webhook_pending_deliveries",
    "Deliveries not yet delivered nor dead.",
    multiprocess_mode="mostrecent",
)
OLDEST_PENDING = Gauge(
    "appliance_webhook_oldest_pending_age_seconds",
    "Age of the oldest pending delivery (queue lag).",
    multiprocess_mode="mostrecent",
)
DISABLED = Gauge(
    "appliance_webhook_disabled_endpoints",
    "Webhook endpoints currently disabled.",
    multiprocess_mode="mostrecent",
)
