"""The inbox's Prometheus metrics (the retention job runs in the worker)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RETENTION_DELETED = Counter(
    "appliance_retention_deleted_total",
    "Records the retention job deleted, by kind (messages, media, events, audit, "
    "orphan_media, engine_actions).",
    ["kind"],
)
RETENTION_BATCHES = Counter(
    "appliance_retention_batches_total",
    "Write transactions of the retention job (each deletes at most RETENTION_BATCH_SIZE rows).",
)
RETENTION_BATCH_DURATION = Histogram(
    "appliance_retention_batch_duration_seconds",
    "How long one retention batch held the write lock (what a writer may wait for).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RETENTION_RUNS = Counter(
    "appliance_retention_runs_total",
    "Passes of the retention job, by outcome (ok, failed).",
    ["outcome"],
)
RETENTION_LAST_RUN = Gauge(
    "appliance_retention_last_run_timestamp_seconds",
    "When the last retention pass finished (Unix time).",
    multiprocess_mode="mostrecent",
)
